"""Runs in-process: launch validation, execution to an artifact with lineage, claims, cancel,
reaping a lost worker, resume, the train command, the admin form, pages and permissions."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from runs_testutils import FAST, base_artifact, checkpoint_write, messages_of

from core import jobs as core_jobs
from core.jobs import jobs_reap_stale
from training import execution, generation, runs, workers
from training.engine import ConfigError
from training.models import (
    GenerationJob,
    MetricPoint,
    ModelArtifact,
    TrainingRun,
    WorkerHeartbeat,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("data_dir")]


def test_it_trains_a_launched_run_into_an_artifact_with_lineage(sft_inputs, users, data_dir):
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent,
                              user=users["owner"], name="sft-tiny")  # fmt: skip
    assert run.status == "queued"
    assert Path(run.output_dir) == data_dir / "runs" / str(run.pk)
    assert run.config["dataset"] == snapshot.path and run.config["model"] == parent.path
    assert run.project == users["project"]

    assert execution.run_execute(run_id=run.pk, worker="here") == "succeeded"
    run.refresh_from_db()
    assert run.status == "succeeded" and run.step == 3 and run.total_steps == 3
    assert run.checkpoint_step >= 2 and run.device.startswith(("cpu", "cuda"))
    assert "step 3/3" in run.log_tail and run.finished_at
    assert run.points.filter(values__has_key="loss").count() == 3
    assert "eval_loss" in run.metrics["final"]
    artifact = ModelArtifact.objects.get(run=run)
    assert artifact.path == run.output_dir and artifact.parent == parent
    assert list(artifact.snapshots.all()) == [snapshot]
    assert [a.pk for a in artifact.lineage()] == [parent.pk, artifact.pk]
    assert "Supervised fine-tuning" in artifact.model_card and "eval_loss" in artifact.metrics
    # The card is titled with the model's name, not the run folder's number ("# 11").
    title = next(line for line in artifact.model_card.splitlines() if line.startswith("# "))
    assert title == "# sft-tiny" and artifact.name == "sft-tiny"
    assert (Path(run.output_dir) / "README.md").read_text(encoding="utf-8") == artifact.model_card


def test_it_refuses_an_invalid_config_with_the_engine_message_and_writes_nothing(sft_inputs):
    snapshot, parent = sft_inputs
    with pytest.raises(ConfigError, match=r"sft.learning_rate: must be positive"):
        runs.run_launch(stage="sft", config={**FAST, "learning_rate": -1},
                            snapshots=[snapshot], parent=parent)  # fmt: skip
    with pytest.raises(ConfigError, match=r"unknown key 'lr' \(did you mean 'learning_rate'\?\)"):
        runs.run_launch(stage="sft", config={"lr": 1}, snapshots=[snapshot], parent=parent)
    with pytest.raises(ConfigError, match=r"snapshot kind 'sft' does not fit stage 'reward'"):
        runs.run_launch(stage="reward", config=FAST, snapshots=[snapshot], parent=parent)
    assert not TrainingRun.objects.exists()


def test_it_refuses_a_snapshot_that_is_not_ready(sft_inputs):
    snapshot, parent = sft_inputs
    snapshot.status = "building"
    snapshot.save()
    with pytest.raises(ConfigError, match="is building, not ready"):
        runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent)


def test_it_claims_a_run_once(sft_inputs):
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent)
    TrainingRun.objects.filter(pk=run.pk).update(status="running", worker="elsewhere")
    assert execution.run_execute(run_id=run.pk, worker="here") == "skipped"
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded")
    assert execution.run_execute(run_id=run.pk, worker="here") == "skipped"
    assert not MetricPoint.objects.filter(run=run).exists()


def test_it_cancels_a_queued_run_before_any_worker_takes_it(sft_inputs):
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent)
    run = runs.run_cancel(run=run)
    assert run.status == "cancelled" and run.cancel_requested
    assert execution.run_execute(run_id=run.pk, worker="here") == "skipped"


def test_it_stops_a_run_whose_cancel_was_stored_before_it_reached_a_step(sft_inputs):
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config={**FAST, "max_steps": 50},
                              snapshots=[snapshot], parent=parent)  # fmt: skip
    # As after a worker restart: the flag is in the database, the worker reads it every step.
    TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    assert execution.run_execute(run_id=run.pk, worker="here") == "cancelled"
    run.refresh_from_db()
    assert run.status == "cancelled" and run.step <= 1
    assert not ModelArtifact.objects.filter(run=run).exists()


def test_it_marks_a_run_with_a_stale_heartbeat_failed_with_advice(sft_inputs):
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent)
    old = timezone.now() - timedelta(seconds=120)
    TrainingRun.objects.filter(pk=run.pk).update(
        status="running", worker="gpu-1 pid 7", heartbeat_at=old, checkpoint_step=2
    )
    fresh = runs.run_launch(stage="sft", config={**FAST, "seed": 1}, snapshots=[snapshot],
                            parent=parent)  # fmt: skip
    TrainingRun.objects.filter(pk=fresh.pk).update(status="running", heartbeat_at=timezone.now())
    # Its worker was lost while it stopped on request: cancelled, as asked, not failed.
    stopping = runs.run_launch(stage="sft", config={**FAST, "seed": 2}, snapshots=[snapshot],
                               parent=parent)  # fmt: skip
    TrainingRun.objects.filter(pk=stopping.pk).update(
        status="running", heartbeat_at=old, cancel_requested=True
    )

    assert jobs_reap_stale(models=[TrainingRun], stale_after=60) == 2
    run.refresh_from_db()
    assert run.status == "failed" and "Worker lost" in run.error and "gpu-1 pid 7" in run.error
    assert "Resume" in run.advice and "step 2" in run.advice
    assert TrainingRun.objects.get(pk=fresh.pk).status == "running"
    stopping.refresh_from_db()
    assert stopping.status == "cancelled" and stopping.error == stopping.advice == ""
    assert stopping.finished_at is not None


def test_it_resumes_into_a_new_run_in_a_new_output_directory(sft_inputs):
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent)
    TrainingRun.objects.filter(pk=run.pk).update(status="failed", checkpoint_step=2, step=3)
    checkpoint_write(run, 2)
    for step in (1, 2, 3):
        MetricPoint.objects.create(run=run, step=step, values={"loss": 5.0 - step})
    run.refresh_from_db()

    new = runs.run_resume(run=run)
    assert new.resume_of == run and new.output_dir != run.output_dir
    assert new.config["output_dir"] == new.output_dir == str(runs.run_output_dir(new.pk))
    assert new.config["resume"] is True and new.status == "queued"
    assert list(new.points.values_list("step", flat=True)) == [1, 2]
    with pytest.raises(ValidationError, match=f"already resumed as run #{new.pk}"):
        runs.run_resume(run=run)


def test_it_reruns_with_the_same_config_in_a_new_directory(sft_inputs):
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config={**FAST, "seed": 7}, snapshots=[snapshot],
                              parent=parent, name="again")  # fmt: skip
    assert runs.run_rerun(run=run).reused  # still queued: that run is the re-run
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded")
    again = runs.run_rerun(run=run)
    assert again.pk != run.pk and again.output_dir != run.output_dir and not again.reused
    assert again.config["seed"] == 7 and again.name == "again"
    assert list(again.snapshots.all()) == [snapshot]


def test_it_launches_from_the_shell_and_trains_here(sft_inputs, tmp_path, capsys):
    snapshot, parent = sft_inputs
    config = tmp_path / "sft.yaml"
    config.write_text("max_steps: 2\nper_device_train_batch_size: 4\nmax_length: 64\n")
    call_command("train", "sft", "--config", str(config), "--snapshot", str(snapshot.pk),
                 "--parent", str(parent.pk), "--here")  # fmt: skip
    out = capsys.readouterr().out
    run = TrainingRun.objects.get()
    assert run.status == "succeeded" and f"run #{run.pk}" in out and "artifact #" in out
    config.write_text("max_steps: 0\n")
    with pytest.raises(CommandError, match="sft.max_steps: must be -1"):
        call_command("train", "sft", "--config", str(config), "--snapshot", str(snapshot.pk),
                     "--parent", str(parent.pk))  # fmt: skip


# --- Admin launch form and pages -------------------------------------------------------------


def test_it_shows_the_engine_message_in_the_launch_form(client, sft_inputs, users):
    snapshot, parent = sft_inputs
    client.force_login(users["owner"])
    url = reverse("admin:training_trainingrun_launch")
    response = client.post(url, {"stage": "sft", "snapshot": snapshot.pk, "parent": parent.pk,
                                 "config": "learning_rate: -1\n", "launch": "1"})  # fmt: skip
    assert response.status_code == 200
    assert "sft.learning_rate: must be positive, got -1.0" in response.content.decode()
    response = client.post(url, {"stage": "sft", "config": "max_steps: [1\n", "launch": "1"})
    assert "config: line 1" in response.content.decode()
    assert not TrainingRun.objects.exists()


def test_it_launches_from_the_form_with_a_preset_prefilled_by_the_snapshot_action(
    client, sft_inputs, users
):
    snapshot, parent = sft_inputs
    client.force_login(users["owner"])
    response = client.post(reverse("admin:annotation_snapshot_changelist"),
                           {"action": "train_on_snapshot", "_selected_action": [snapshot.pk]})  # fmt: skip
    assert response.status_code == 302 and f"snapshot={snapshot.pk}" in response["Location"]
    assert "preset=sft-lora" in response["Location"]
    form = client.get(response["Location"]).content.decode()
    assert "use_lora: true" in form and f'value="{snapshot.pk}" selected' in form

    response = client.post(reverse("admin:training_trainingrun_launch"),
                           {"stage": "sft", "preset": "sft-lora", "snapshot": snapshot.pk,
                            "parent": parent.pk, "config": "use_lora: true\nmax_steps: 2\n",
                            "launch": "1"})  # fmt: skip
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "training:run", args=[run.pk]
    )
    assert (
        run.config["use_lora"] is True
        and run.preset == "sft-lora"
        and run.created_by == users["owner"]
    )


def test_a_launch_submitted_twice_queues_one_run(
    client, sft_inputs, users, django_capture_on_commit_callbacks
):
    """The same stage, config and inputs while the first run is unfinished: that run, and the
    form says so; once it has finished, the same launch queues a new run. Kills mutations:
    job_get_or_create always creating, or returning a finished job."""
    snapshot, parent = sft_inputs
    client.force_login(users["owner"])
    data = {"stage": "sft", "snapshot": snapshot.pk, "parent": parent.pk,
            "config": "max_steps: 2\nper_device_train_batch_size: 4\n", "launch": "1"}  # fmt: skip
    url = reverse("admin:training_trainingrun_launch")

    with django_capture_on_commit_callbacks() as callbacks:
        first = client.post(url, data)
        again = client.post(url, {**data, "name": "a second click"})
    run = TrainingRun.objects.get()
    assert first["Location"] == again["Location"] == reverse("training:run", args=[run.pk])
    assert len(callbacks) == 1
    assert messages_of(again)[-1] == (
        f"Reused {run}: it has the same stage, config and inputs and is still queued, so nothing "
        "new was queued."
    )

    TrainingRun.objects.filter(pk=run.pk).update(status="failed")
    with django_capture_on_commit_callbacks() as callbacks:
        later = client.post(url, data)
    assert TrainingRun.objects.count() == 2 and len(callbacks) == 1
    assert later["Location"] != first["Location"]


def test_it_refuses_a_run_that_cannot_fit_the_device_with_advice(
    client, sft_inputs, users, monkeypatch
):
    snapshot, _ = sft_inputs
    client.force_login(users["owner"])
    small = {"gpus": [{"index": 0, "name": "Test GPU 4GB", "memory_total": 4 * 2**30,
                       "memory_free": 4 * 2**30}], "cpu": {"cores": 2, "memory_total": 0,
                       "memory_available": 0}}  # fmt: skip
    monkeypatch.setattr("training.engine.resources.device_inventory", lambda: small)
    data = {"stage": "pretrain", "snapshot": "", "launch": "1",
            "config": "architecture: llama-1b\nmax_length: 2048\nper_device_train_batch_size: 16\n"
                      f"dataset: {snapshot.path}\n"}  # fmt: skip
    response = client.post(reverse("admin:training_trainingrun_launch"), data)
    page = response.content.decode()
    assert "Memory estimate" in page and "Test GPU 4GB" in page
    assert "gradient_checkpointing: true" in page and "smaller per_device_train_batch_size" in page
    assert not TrainingRun.objects.exists()


def test_it_estimates_memory_against_the_device_of_the_training_workers(client, sft_inputs, users):
    from training.models import WorkerHeartbeat

    snapshot, _ = sft_inputs
    now, long_ago = timezone.now(), timezone.now() - timedelta(hours=1)
    big = [{"index": 0, "name": "Big GPU 80GB", "memory_total": 80 * 2**30,
            "memory_free": 80 * 2**30}]  # fmt: skip
    small = [
        {**big[0], "name": "Test GPU 4GB", "memory_total": 4 * 2**30, "memory_free": 4 * 2**30}
    ]
    cpu = {"cores": 2, "memory_total": 2**30, "memory_available": 2**30}
    for hostname, queues, devices, seen in [
        ("celery@gpu-box", ["default", "training"], small, now),
        ("celery@gone", ["training"], big, long_ago),  # offline
        ("celery@web-side", ["default"], big, now),  # takes no training runs
    ]:
        WorkerHeartbeat.objects.create(hostname=hostname, queues=queues, devices=devices,
                                       cpu=cpu, started_at=seen, seen_at=seen)  # fmt: skip
    client.force_login(users["owner"])
    data = {"stage": "pretrain", "snapshot": "", "launch": "1",
            "config": "architecture: llama-1b\nmax_length: 2048\nper_device_train_batch_size: 16\n"
                      f"dataset: {snapshot.path}\n"}  # fmt: skip

    page = client.post(reverse("admin:training_trainingrun_launch"), data).content.decode()

    assert "Test GPU 4GB on celery@gpu-box" in page and "Big GPU" not in page
    # 4 GiB less the reserve for the CUDA context
    assert "but Test GPU 4GB on celery@gpu-box has 3.00 GiB" in page
    assert "no training worker is online" not in page
    assert not TrainingRun.objects.exists()

    WorkerHeartbeat.objects.filter(hostname="celery@gpu-box").update(seen_at=long_ago)
    data.pop("launch")
    page = client.post(reverse("admin:training_trainingrun_launch"), data).content.decode()
    assert "no training worker is online" in page and "celery@" not in page


def test_it_estimates_lora_far_smaller_than_full_training(tiny):
    from training.engine.resources import estimate_memory

    device = {"name": "GPU", "memory_total": 80 * 2**30, "memory_free": 80 * 2**30}
    full = estimate_memory({"stage": "sft", "model": tiny["policy"], "max_length": 64}, device)
    lora = estimate_memory({"stage": "sft", "model": tiny["policy"], "max_length": 64,
                            "use_lora": True, "lora_r": 4}, device)  # fmt: skip
    assert full.fits and full.optimizer_states > 10 * lora.optimizer_states
    assert lora.trainable_parameters < full.trainable_parameters


def test_it_gives_no_estimate_for_a_hub_name_rather_than_downloading(monkeypatch):
    from training.engine.resources import estimate_memory

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    device = {"name": "GPU", "memory_total": 80 * 2**30, "memory_free": 80 * 2**30}
    estimate = estimate_memory({"stage": "sft", "model": "Qwen/Qwen2.5-0.5B"}, device)
    assert estimate.known is False and estimate.fits is None and estimate.device == "GPU"
    assert (
        "Qwen/Qwen2.5-0.5B" in estimate.advice[0] and "local model directory" in estimate.advice[0]
    )


def test_it_shows_the_run_page_with_charts_only_to_its_project_staff(client, sft_inputs, users):
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent)
    for step in range(1, 6):
        MetricPoint.objects.create(
            run=run, step=step, values={"loss": 3.0 / step, "learning_rate": 1e-3}
        )
    TrainingRun.objects.filter(pk=run.pk).update(status="running", step=5, total_steps=10,
                                                 log_tail="<script>alert(1)</script>")  # fmt: skip
    client.force_login(users["owner"])
    page = client.get(reverse("training:run", args=[run.pk])).content.decode()
    assert 'data-series="loss" data-count="5"' in page and 'hx-trigger="every 1s"' in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    live = client.get(reverse("training:run_live", args=[run.pk])).content.decode()
    assert 'value="50.0"' in live

    client.force_login(users["outsider"])
    assert client.get(reverse("training:run", args=[run.pk])).status_code == 404
    client.force_login(users["member"])  # a labeler: the role sync took the staff flag
    assert client.get(reverse("training:run", args=[run.pk])).status_code == 302
    client.logout()
    assert client.get(reverse("training:run", args=[run.pk])).status_code == 302


def test_it_cancels_and_resumes_from_the_run_page(client, sft_inputs, users):
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent)
    TrainingRun.objects.filter(pk=run.pk).update(status="running")
    client.force_login(users["owner"])
    client.post(reverse("training:run_cancel", args=[run.pk]))
    assert TrainingRun.objects.get(pk=run.pk).cancel_requested
    TrainingRun.objects.filter(pk=run.pk).update(status="cancelled")
    checkpoint_write(run, 2)
    response = client.post(reverse("training:run_resume", args=[run.pk]))
    new = TrainingRun.objects.get(resume_of=run)
    assert response["Location"] == reverse("training:run", args=[new.pk])


def test_it_lists_workers_with_their_devices(client, users):
    workers.worker_heartbeat_record(hostname="celery@gpu-box", pid=42, queues=["training"])
    client.force_login(users["owner"])
    page = client.get(reverse("training:workers")).content.decode()
    assert "celery@gpu-box" in page and "online" in page and "cores" in page


def _says_no_worker(page: str, queue: str) -> bool:
    return f"Queued, but no live worker takes the &#x27;{queue}&#x27; queue" in page


def test_a_queued_run_says_on_its_page_while_no_live_worker_takes_the_training_queue(
    client, sft_inputs, users
):
    """Kills mutations: the liveness rule ignores `stopped_at`, the heartbeat's age or the
    worker's queues; the run page drops the note."""
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent)
    client.force_login(users["owner"])

    def pages() -> list[str]:
        return [client.get(reverse(name, args=[run.pk])).content.decode()
                for name in ("training:run", "training:run_live")]  # fmt: skip

    assert all(_says_no_worker(page, "training") for page in pages())
    # None of these would ever start it: a worker of the other queue, one whose heartbeat went
    # stale, and one that shut down a moment ago (its last heartbeat is fresh).
    workers.worker_heartbeat_record(hostname="celery@web-side", pid=1, queues=["default"])
    workers.worker_heartbeat_record(hostname="celery@gone", pid=2, queues=["training"])
    long_ago = timezone.now() - timedelta(hours=1)
    WorkerHeartbeat.objects.filter(hostname="celery@gone").update(seen_at=long_ago)
    workers.worker_heartbeat_record(hostname="celery@stopped", pid=3, queues=["training"])
    assert workers.worker_stopped_record(hostname="celery@stopped", pid=3)
    assert all(_says_no_worker(page, "training") for page in pages())

    workers.worker_heartbeat_record(hostname="celery@gpu-box", pid=4, queues=["training"])

    assert not any("no live worker" in page for page in pages())
    # A run that a worker took says nothing of the kind, live worker or not.
    WorkerHeartbeat.objects.filter(hostname="celery@gpu-box").delete()
    TrainingRun.objects.filter(pk=run.pk).update(status="running", worker="celery@gpu-box")
    assert not any("no live worker" in page for page in pages())


def _worker_row(page: str, hostname: str) -> str:
    rows = [row for row in page.split("<tr>") if hostname in row]
    assert len(rows) == 1, page
    return rows[0]


def test_a_stopped_worker_is_listed_as_stopped_until_it_starts_again(client, users):
    """Kills mutations: the workers page counts a stopped worker online; a heartbeat leaves
    `stopped_at` set (a restarted worker would stay stopped); the stop of a worker's previous
    process (another pid) marks the restarted one."""
    workers.worker_heartbeat_record(hostname="celery@gpu-box", pid=42, queues=["training"])
    workers.worker_heartbeat_record(hostname="celery@cpu-box", pid=43, queues=["training"])
    assert workers.worker_stopped_record(hostname="celery@gpu-box", pid=42)
    client.force_login(users["owner"])

    page = client.get(reverse("training:workers")).content.decode()

    assert "stopped" in _worker_row(page, "celery@gpu-box")
    assert "online" not in _worker_row(page, "celery@gpu-box")
    assert "online" in _worker_row(page, "celery@cpu-box")

    # Started again under the same name: online, and the old process's stop changes nothing.
    workers.worker_heartbeat_record(hostname="celery@gpu-box", pid=50, queues=["training"])
    assert not workers.worker_stopped_record(hostname="celery@gpu-box", pid=42)
    page = client.get(reverse("training:workers")).content.decode()
    assert "online" in _worker_row(page, "celery@gpu-box")
    assert "stopped" not in _worker_row(page, "celery@gpu-box")


def test_it_generates_candidates_and_ranking_tasks_for_labelers(tiny, users, settings):
    from annotation.models import Response, Task

    settings.TRAINING_GENERATION_BATCH_SIZE = 1  # one prompt per generate: per-prompt seeds
    artifact = base_artifact(tiny["policy"], name="policy", project=users["project"])
    project = users["project"]
    prompts = list(project.prompts.all())
    job = generation.generation_job_create(project=project, artifact=artifact, prompts=prompts,
                                         k=3, temperature=0.9, top_p=0.9, max_new_tokens=8,
                                         seed=5)  # fmt: skip
    assert generation.generation_execute(job_id=job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.responses_created == 3 * len(prompts) and job.tasks_created == len(prompts)
    responses = Response.objects.filter(model_artifact=artifact)
    assert responses.count() == 3 * len(prompts)
    assert all(r.origin == "model" and r.generation["temperature"] == 0.9
               and r.generation["top_p"] == 0.9 and r.generation["max_new_tokens"] == 8
               and r.generation["job"] == job.pk and r.generation["model"] == tiny["policy"]
               for r in responses)  # fmt: skip
    # Prompt i is sampled with seed job.seed + i: each response records its own prompt's seed.
    by_prompt = {p.pk: 5 + i for i, p in enumerate(sorted(prompts, key=lambda p: p.pk))}
    assert all(r.generation["seed"] == by_prompt[r.prompt_id] for r in responses)
    assert all(sorted(r.generation["index"] for r in responses.filter(prompt=p)) == [0, 1, 2]
               for p in prompts)  # fmt: skip
    tasks = Task.objects.filter(project=project, kind="rank", round=job.round)
    assert tasks.count() == len(prompts) and all(t.candidates.count() == 3 for t in tasks)


def test_a_generation_job_named_no_round_opens_the_projects_next_one(tiny, users):
    # It used to write its tasks into round 2 whatever the project had done: mixed with round
    # 2's own tasks in a project past it, and reported as round 2 in the rounds panel.
    from annotation.models import Task

    project = users["project"]
    prompts = list(project.prompts.all())
    Task.objects.create(project=project, prompt=prompts[0], kind="rank", round=5)
    artifact = base_artifact(tiny["policy"], name="policy", project=project)
    job = generation.generation_job_create(project=project, artifact=artifact, prompts=prompts,
                                           k=2, max_new_tokens=4, seed=1)  # fmt: skip
    assert job.round == 6
    assert generation.generation_execute(job_id=job.pk) == "succeeded"
    assert Task.objects.filter(project=project, round=6, kind="rank").count() == len(prompts)
    named = generation.generation_job_create(project=project, artifact=artifact, prompts=prompts,
                                             k=2, max_new_tokens=4, seed=1, round=3)  # fmt: skip
    assert named.round == 3


def _generation(tiny, users, **settings) -> GenerationJob:
    artifact = base_artifact(tiny["policy"], name="policy", project=users["project"])
    project = users["project"]
    return generation.generation_job_create(project=project, artifact=artifact,
                                          prompts=list(project.prompts.all()), k=2,
                                          max_new_tokens=4, **settings)  # fmt: skip


def test_it_fails_generation_jobs_whose_worker_stopped_beating(tiny, users):
    lost, alive, legacy = (_generation(tiny, users, seed=i) for i in range(3))
    old = timezone.now() - timedelta(seconds=120)
    GenerationJob.objects.filter(pk=lost.pk).update(
        status="running", worker="cpu-2 pid 9", started_at=old, heartbeat_at=old
    )
    GenerationJob.objects.filter(pk=alive.pk).update(
        status="running", worker="cpu-3 pid 4", heartbeat_at=timezone.now()
    )
    # Claimed before jobs had heartbeats, by a worker long gone.
    GenerationJob.objects.filter(pk=legacy.pk).update(status="running", created_at=old)

    assert jobs_reap_stale(models=[GenerationJob], stale_after=60) == 2

    lost.refresh_from_db()
    assert lost.status == "failed" and lost.finished_at is not None
    assert "Worker lost" in lost.error and "cpu-2 pid 9" in lost.error
    assert "Nothing was written" in lost.error and "generate again" in lost.error
    assert GenerationJob.objects.get(pk=legacy.pk).status == "failed"
    assert GenerationJob.objects.get(pk=alive.pk).status == "running"
    assert jobs_reap_stale(models=[GenerationJob], stale_after=60) == 0


def test_the_same_generation_request_while_unfinished_is_one_job(tiny, users):
    artifact, project = (
        base_artifact(tiny["policy"], name="policy", project=users["project"]),
        users["project"],
    )

    def request(prompts, **settings):
        return generation.generation_job_create(project=project, artifact=artifact,
                                                prompts=prompts, k=2, **settings)  # fmt: skip

    prompts = list(project.prompts.all())
    first = request(prompts)
    again = request(list(reversed(prompts)), temperature=1)  # the same request, spelled otherwise
    assert again.pk == first.pk and again.reused and GenerationJob.objects.count() == 1
    assert request(prompts, seed=1).pk != first.pk  # another request
    assert request(prompts[:1]).pk != first.pk

    GenerationJob.objects.filter(pk=first.pk).update(status="succeeded")
    assert request(prompts).pk != first.pk
    assert GenerationJob.objects.count() == 4


def test_a_generation_job_failed_while_it_sampled_writes_nothing(tiny, users, monkeypatch):
    from annotation.models import Response, Task
    from training.engine import generation as engine_generation

    job = _generation(tiny, users)
    real = engine_generation.sample_responses

    def sampled_then_reaped(*args, **kwargs):
        samples = real(*args, **kwargs)
        # What another worker's reaper does when this worker's heartbeats stop reaching the
        # database (the sweep of this process, which knows the job is at work, spares it).
        with monkeypatch.context() as other_process:
            other_process.setattr(core_jobs, "_working", set())
            jobs_reap_stale(models=[GenerationJob], now=timezone.now() + timedelta(hours=1))
        return samples

    monkeypatch.setattr(engine_generation, "sample_responses", sampled_then_reaped)
    assert generation.generation_execute(job_id=job.pk, worker="cpu-1 pid 3") == "failed"

    job.refresh_from_db()
    assert job.status == "failed" and "Worker lost" in job.error and "cpu-1 pid 3" in job.error
    assert job.responses_created == job.tasks_created == 0
    assert not Response.objects.filter(model_artifact=job.artifact).exists()
    assert not Task.objects.filter(project=job.project, round=job.round).exists()


@pytest.mark.django_db(transaction=True)
def test_a_generation_job_keeps_its_heartbeat_fresh_while_it_samples(
    tiny, users, settings, monkeypatch
):
    """The heartbeat thread has its own connection: it needs committed rows, hence a real
    transaction here."""
    import time

    from training.engine import generation as engine_generation

    settings.TRAINING_HEARTBEAT_SECONDS = 0.05
    job = _generation(tiny, users)
    real = engine_generation.sample_responses

    def sample_until_a_beat(*args, **kwargs):
        samples = real(*args, **kwargs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = GenerationJob.objects.get(pk=job.pk)
            if row.heartbeat_at > row.started_at:
                break
            time.sleep(0.02)
        return samples

    monkeypatch.setattr(engine_generation, "sample_responses", sample_until_a_beat)
    assert generation.generation_execute(job_id=job.pk, worker="cpu-1 pid 3") == "succeeded"

    job.refresh_from_db()
    assert job.worker == "cpu-1 pid 3" and job.heartbeat_at > job.started_at
    assert job.tasks_created == len(users["project"].prompts.all())


def test_a_queued_generation_job_says_on_its_admin_page_while_no_live_worker_takes_its_queue(
    client, tiny, users
):
    """Generation goes to the default queue, not the training one. Kills mutations: the job's
    admin page drops the note; the note is looked up for the training queue."""
    job = _generation(tiny, users)
    url = reverse("admin:training_generationjob_change", args=[job.pk])
    client.force_login(users["owner"])

    assert _says_no_worker(client.get(url).content.decode(), "default")
    workers.worker_heartbeat_record(hostname="celery@gpu-box", pid=4, queues=["training"])
    assert _says_no_worker(client.get(url).content.decode(), "default")

    workers.worker_heartbeat_record(hostname="celery@web-side", pid=5, queues=["default"])

    assert "no live worker" not in client.get(url).content.decode()


def test_generating_again_a_job_whose_prompts_are_gone_says_why(client, tiny, users):
    """A job whose prompts were deleted since cannot be repeated: the admin says so on the
    changelist (it answered 500) and queues nothing."""
    job = _generation(tiny, users)
    job.prompts.clear()
    url = reverse("admin:training_generationjob_changelist")
    client.force_login(users["owner"])

    response = client.post(
        url, {"action": "generate_again", "_selected_action": [job.pk]}, follow=True
    )

    assert response.status_code == 200
    assert f"Generation #{job.pk}:" in response.content.decode()
    assert GenerationJob.objects.count() == 1


def test_it_generates_again_from_the_admin_with_the_same_settings(client, tiny, users):
    """Kills mutations: generation_job_repeat dropping top_p or the round (the new tasks would
    land in round 2)."""
    job = _generation(tiny, users, temperature=0.7, top_p=0.8, seed=11, round=3)
    GenerationJob.objects.filter(pk=job.pk).update(status="failed", error="Worker lost")
    url = reverse("admin:training_generationjob_changelist")
    action = {"action": "generate_again", "_selected_action": [job.pk]}
    # An engineer of another project does not see the job; a labeler has no generation admin.
    client.force_login(users["outsider"])
    client.post(url, action)
    client.force_login(users["member"])  # a labeler: the role sync took the staff flag
    assert client.post(url, action).status_code == 302
    assert GenerationJob.objects.count() == 1

    client.force_login(users["owner"])
    response = client.post(url, action)

    assert response.status_code == 302
    again = GenerationJob.objects.exclude(pk=job.pk).get()
    assert again.status == "queued" and again.created_by == users["owner"]
    assert (again.artifact, again.k, again.temperature, again.max_new_tokens) == (
        job.artifact,
        2,
        0.7,
        4,
    )
    assert again.seed != 11, "generating again samples with a fresh seed, not the same one"
    assert (again.project, again.top_p, again.round) == (job.project, 0.8, 3)
    assert list(again.prompts.order_by("pk")) == list(job.prompts.order_by("pk"))
    assert f"Queued generation #{again.pk}." in messages_of(response)


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_a_worker_holds_torch_to_the_threads_it_is_given(sft_inputs, settings, torch_threads):
    if torch_threads.cuda.is_available():
        pytest.skip("the device label names the GPU")
    torch_threads.set_num_threads(2)
    settings.TRAINING_TORCH_THREADS = 1
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent)

    assert execution.run_execute(run_id=run.pk, worker="here") == "succeeded"

    run.refresh_from_db()
    assert run.device == "cpu (1 threads)" and torch_threads.get_num_threads() == 1


def test_the_worker_command_refuses_a_negative_thread_count():
    with pytest.raises(CommandError, match="--torch-threads"):
        call_command("worker", "--torch-threads", "-1")
