"""Runs executed by a real Celery worker process (`manage.py worker`, solo pool) on the test
database and a real broker: the embedded filesystem broker (isolated in a temporary folder), or
Redis when CELERY_BROKER_URL points at it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from engine_testutils import load_weights
from runs_testutils import (
    ROOT,
    Worker,
    base_artifact,
    snapshot_row,
    wait_for,
    worker_started,
)
from torch.testing import assert_close

from annotation.models import Role
from core.databases import database_url
from training import runs, selectors, tasks
from training.engine import read_events
from training.models import ModelArtifact, TrainingRun, WorkerHeartbeat

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STALE_S = 6  # the workers below run with TRAINING_STALE_AFTER_SECONDS=6, heartbeats every 1 s
# The module's worker is started with `--torch-threads 1` (torch's default here is one thread per
# core), so its runs show whether the option reached them.
TORCH_THREADS = 1


@pytest.fixture(scope="module")
def worker(broker_dir, django_db_setup, django_db_blocker, tmp_path_factory):
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = worker_started(
        broker_dir,
        log,
        django_db_blocker,
        env={"TRAINING_TORCH_THREADS": "0"},
        args=("--torch-threads", str(TORCH_THREADS)),
    )
    holder = {"worker": proc}
    yield holder
    for w in holder.get("all", [proc]):
        w.stop()


@pytest.fixture
def setup(settings, tmp_path, tiny, make_user, project_factory):
    settings.DATA_DIR = tmp_path / "data"
    engineer = make_user("engineer", is_staff=True)
    project = project_factory("alpha", prompts=1, members=[(engineer, Role.ENGINEER)])
    snapshot = snapshot_row(project, "sft", tiny["snap_sft"])
    parent = base_artifact(tiny["policy"], project=project)
    return {"engineer": engineer, "project": project, "snapshot": snapshot, "parent": parent}


def _config(**extra) -> dict:
    return {"per_device_train_batch_size": 4, "max_length": 64, "learning_rate": 1e-3, **extra}


def _status(run_id: int, *wanted: str):
    def check():
        run = TrainingRun.objects.get(pk=run_id)
        return run if run.status in wanted else None

    return check


def _starts(run: TrainingRun) -> list[dict]:
    return [
        e for e in read_events(Path(run.output_dir) / "progress.jsonl") if e["event"] == "start"
    ]


def test_it_trains_a_run_launched_from_the_admin_form_into_an_artifact(client, worker, setup):
    client.force_login(setup["engineer"])
    response = client.post(
        reverse("admin:training_trainingrun_launch"),
        {"stage": "sft", "snapshot": setup["snapshot"].pk, "parent": setup["parent"].pk,
         "config": "max_steps: 4\nper_device_train_batch_size: 4\nmax_length: 64\n",
         "name": "from-the-form", "launch": "1"},
    )  # fmt: skip
    assert response.status_code == 302, response.content.decode()[-2000:]
    run = TrainingRun.objects.get()
    run = wait_for(_status(run.pk, "succeeded", "failed"), 120, what="the run to finish")
    assert run.status == "succeeded", (run.error, worker["worker"].tail())
    assert worker["worker"].name in run.worker and run.device and run.step == 4
    artifact = ModelArtifact.objects.get(run=run)
    assert artifact.parent == setup["parent"] and list(artifact.snapshots.all()) == [
        setup["snapshot"]
    ]
    assert [a.name for a in artifact.lineage()] == ["tiny-base", "from-the-form"]
    assert run.points.filter(values__has_key="loss").count() == 4
    page = client.get(reverse("training:run", args=[run.pk])).content.decode()
    assert "Succeeded" in page and "eval_loss" in page and 'data-series="loss"' in page


def test_a_worker_started_with_torch_threads_holds_its_runs_to_them(worker, setup):
    """`manage.py worker --torch-threads N` (README, TRAINING_TORCH_THREADS): the option reaches
    torch in the worker's runs, whatever the environment says (0 here: torch's default).

    Kills mutation: platform/core/management/commands/worker.py handle
    `settings.TRAINING_TORCH_THREADS = options["torch_threads"]` -> `pass`."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the device label names the GPU, not the CPU threads")
    assert torch.get_num_threads() != TORCH_THREADS  # else the check below proves nothing
    run = runs.run_launch(stage="sft", config=_config(max_steps=1),
                              snapshots=[setup["snapshot"]], parent=setup["parent"])  # fmt: skip
    run = wait_for(_status(run.pk, "succeeded", "failed"), 90, what="the run to finish")
    assert run.status == "succeeded", (run.error, worker["worker"].tail())
    assert run.device == f"cpu ({TORCH_THREADS} threads)"


def _manage_train(settings, broker_dir, tmp_path, config: str, *args: str):
    """`manage.py train ... --wait` as a user runs it, on the test database and broker."""
    path = tmp_path / "train.yaml"
    path.write_text(config)
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_DEBUG": "1",
           "PLATFORM_DATA_DIR": str(settings.DATA_DIR)}  # fmt: skip
    if broker_dir is not None:
        env["CELERY_BROKER_DIR"] = str(broker_dir)
    return subprocess.run(
        [sys.executable, "manage.py", "train", "sft", "--config", str(path), *args, "--wait"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def test_the_train_command_waits_for_the_worker_and_exits_with_the_outcome(
    worker, setup, settings, broker_dir, tmp_path
):
    """`manage.py train STAGE --config FILE --wait` (README): queued for the worker, followed
    until it ends; exit 0 with the artifact on success, non-zero with the error on failure.

    Kills mutations: training/management/commands/train.py handle
    `if opts["wait"] or opts["here"]:` -> `if opts["here"]:`;
    `if run.status != TrainingRun.Status.SUCCEEDED:` -> `if False:`."""
    inputs = ("--snapshot", str(setup["snapshot"].pk), "--parent", str(setup["parent"].pk))
    done = _manage_train(settings, broker_dir, tmp_path,
                         "max_steps: 3\nper_device_train_batch_size: 4\nmax_length: 64\n",
                         *inputs)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    run = TrainingRun.objects.get()
    # It returned once the worker had finished, not when the run was queued.
    assert run.status == "succeeded" and run.worker.startswith(worker["worker"].name)
    assert f"run #{run.pk} queued" in done.stdout and "succeeded step 3/3" in done.stdout
    assert f"artifact #{ModelArtifact.objects.get(run=run).pk}: " in done.stdout

    failed = _manage_train(settings, broker_dir, tmp_path,
                           "max_steps: 30\nlearning_rate: 1.0e+12\nmax_length: 64\n",
                           *inputs)  # fmt: skip
    run = TrainingRun.objects.exclude(pk=run.pk).get()
    assert run.status == "failed", (run.error, worker["worker"].tail())
    assert failed.returncode == 1, (failed.stdout + failed.stderr)[-3000:]
    assert f"run #{run.pk} failed" in failed.stderr and "loss became" in failed.stderr


def test_it_ignores_a_duplicated_message_for_the_same_run(worker, setup):
    run = runs.run_launch(stage="sft", config=_config(max_steps=3),
                              snapshots=[setup["snapshot"]], parent=setup["parent"])  # fmt: skip
    tasks.run_train.apply_async(args=[run.pk])  # as a broker redelivery would
    run = wait_for(_status(run.pk, "succeeded", "failed"), 90, what="the run to finish")
    assert run.status == "succeeded", (run.error, worker["worker"].tail())
    wait_for(lambda: worker["worker"].tail(20000).count("'skipped'") >= 1, 30,
             what="the duplicate message to be processed")  # fmt: skip
    assert len(_starts(run)) == 1
    assert run.points.filter(values__has_key="loss").count() == 3
    assert ModelArtifact.objects.filter(run=run).count() == 1


def test_it_cancels_a_running_run_within_a_step(worker, setup):
    run = runs.run_launch(stage="sft", config=_config(max_steps=3000, save_steps=1000),
                              snapshots=[setup["snapshot"]], parent=setup["parent"])  # fmt: skip
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).step >= 3, 90, what="3 training steps")
    at_request = TrainingRun.objects.get(pk=run.pk).step
    runs.run_cancel(run=run)
    run = wait_for(_status(run.pk, "cancelled", "failed", "succeeded"), 30, what="the cancel")
    assert run.status == "cancelled", (run.error, worker["worker"].tail())
    # The step that was running finishes, the next check stops the loop.
    assert run.step <= at_request + 2, (at_request, run.step)
    assert not ModelArtifact.objects.filter(run=run).exists()
    assert "resume" in run.advice.lower()


def test_a_run_launched_with_two_processes_trains_under_accelerate_and_cancels(
    client, worker, setup
):
    """ "Processes: 2" on the launch form: the worker trains the run under `accelerate launch`
    with two CPU ranks (gloo), a child process it follows into the run's rows; one such run
    ends in an artifact both ranks agree on, another is cancelled mid-run and stops with a
    checkpoint at the step it reached."""
    client.force_login(setup["engineer"])

    def launch(config: str) -> TrainingRun:
        response = client.post(
            reverse("admin:training_trainingrun_launch"),
            {"stage": "sft", "snapshot": setup["snapshot"].pk, "parent": setup["parent"].pk,
             "config": config, "num_processes": "2", "launch": "1"},
        )  # fmt: skip
        assert response.status_code == 302, response.content.decode()[-2000:]
        return TrainingRun.objects.order_by("-pk").first()

    run = launch("max_steps: 3\nper_device_train_batch_size: 4\nmax_length: 64\n")
    assert run.num_processes == 2
    run = wait_for(_status(run.pk, "succeeded", "failed"), 240, what="the 2-process run")
    assert run.status == "succeeded", (run.error, worker["worker"].tail())
    assert run.device.startswith("2 processes on ") and run.step == 3
    final = run.metrics["final"]
    assert final["num_processes"] == 2 and final["weights_identical_across_processes"] is True
    assert run.points.filter(values__has_key="loss").count() == 3  # rank 0's steps, once
    assert ModelArtifact.objects.get(run=run).metrics["num_processes"] == 2
    assert len(_starts(run)) == 1

    run = launch("max_steps: 3000\nsave_steps: 1000\nper_device_train_batch_size: 4\n"
                 "max_length: 64\n")  # fmt: skip
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).step >= 2, 240, what="2 training steps")
    runs.run_cancel(run=run)
    run = wait_for(_status(run.pk, "cancelled", "failed", "succeeded"), 90, what="the cancel")
    assert run.status == "cancelled", (run.error, worker["worker"].tail())
    assert not ModelArtifact.objects.filter(run=run).exists()
    # Both ranks stopped after the same step and saved it: a resume continues from there.
    assert runs.resume_point(run).step == run.step and f"step {run.step}" in run.advice
    assert (Path(run.output_dir) / "cancel.request").is_file()


def test_it_fails_a_run_whose_worker_was_killed_and_resumes_it_from_the_checkpoint(
    client, worker, setup, broker_dir, tmp_path
):
    """A worker SIGKILLed mid-run: the run is reaped as failed, offers its last complete
    checkpoint, and its resume (a new run, a new folder) continues from that step to the same
    losses, eval loss and weights as the same run trained without a stop."""
    config = _config(max_steps=40, save_steps=5, save_total_limit=None, seed=3)
    run = runs.run_launch(stage="sft", config=config,
                          snapshots=[setup["snapshot"]], parent=setup["parent"])  # fmt: skip
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).checkpoint_step >= 5, 90,
             what="a first checkpoint")  # fmt: skip
    worker["worker"].kill()
    killed_at = time.monotonic()
    run.refresh_from_db()
    assert run.status == "running" and run.step < 40

    # A fresh worker sweeps stale runs at start and every heartbeat interval. It holds torch to
    # the killed worker's one thread, so both halves compute alike.
    fresh = Worker(broker_dir, tmp_path / "worker2.log", args=("--torch-threads", "1"))
    worker["all"] = [worker["worker"], fresh]
    run = wait_for(_status(run.pk, "failed"), STALE_S + 60, what="the lost run to be failed")
    assert "Worker lost" in run.error and "Resume" in run.advice
    # Within one sweep of the run going stale — or of a live worker existing to notice it: the
    # fresh worker's own start-up (imports on 2 busy cores) can outlast the stale bound.
    fresh_started = (
        WorkerHeartbeat.objects.filter(hostname__startswith=fresh.name)
        .values_list("started_at", flat=True)
        .first()
    )
    noticeable = max(
        run.heartbeat_at + timedelta(seconds=STALE_S), fresh_started or run.heartbeat_at
    )
    assert run.finished_at - noticeable < timedelta(seconds=5), (run.finished_at, noticeable)
    assert time.monotonic() - killed_at < STALE_S + 60
    # What is offered is the last checkpoint complete on disk (a save cut short by the kill,
    # if any, has no marker and is not it).
    checkpoint = runs.resume_point(run).step
    assert checkpoint >= 5 and checkpoint % 5 == 0 and checkpoint <= run.checkpoint_step

    client.force_login(setup["engineer"])
    page = client.get(reverse("training:run", args=[run.pk])).content.decode()
    assert f"Resume from checkpoint (step {checkpoint})" in page
    client.post(reverse("training:run_resume", args=[run.pk]))
    resumed = TrainingRun.objects.get(resume_of=run)
    resumed = wait_for(_status(resumed.pk, "succeeded", "failed"), 120, what="the resumed run")
    assert resumed.status == "succeeded", (resumed.error, fresh.tail())
    assert resumed.step == 40 and resumed.output_dir != run.output_dir
    # The second execution started at the checkpoint, not at step 0, and went on from there.
    assert [s["step"] for s in _starts(resumed)] == [checkpoint]
    assert f"started sft at step {checkpoint}/40" in resumed.log_tail
    artifact = ModelArtifact.objects.get(run=resumed)
    assert artifact.parent == setup["parent"] and artifact.path == resumed.output_dir

    straight = runs.run_launch(stage="sft", config=config,
                               snapshots=[setup["snapshot"]], parent=setup["parent"])  # fmt: skip
    straight = wait_for(_status(straight.pk, "succeeded", "failed"), 120, what="the plain run")
    assert straight.status == "succeeded", (straight.error, fresh.tail())
    losses = {
        r.pk: [(step, v) for step, v in selectors.run_series(r)["loss"]["loss"]]
        for r in (resumed, straight)
    }
    assert [step for step, _ in losses[resumed.pk]] == list(range(1, 41))
    assert [v for _, v in losses[resumed.pk]] == pytest.approx(
        [v for _, v in losses[straight.pk]], rel=1e-5
    )
    assert resumed.metrics["final"]["eval_loss"] == pytest.approx(
        straight.metrics["final"]["eval_loss"], rel=1e-5
    )
    weights = load_weights(resumed.output_dir), load_weights(straight.output_dir)
    assert weights[0].keys() == weights[1].keys()
    for key in weights[1]:
        assert_close(weights[0][key], weights[1][key], rtol=1e-5, atol=1e-6)


# A PPO run of 8 updates of 4 prompts, a checkpoint after each (the engine's own PPO).
PPO = {"max_steps": -1, "total_episodes": 32, "per_device_train_batch_size": 2,
       "gradient_accumulation_steps": 2, "num_mini_batches": 2,
       "local_rollout_forward_batch_size": 4, "num_ppo_epochs": 2, "response_length": 6,
       "learning_rate": 1e-3, "lr_scheduler_type": "constant", "save_steps": 1,
       "save_total_limit": None, "missing_eos_penalty": 1.0, "seed": 3}  # fmt: skip
PPO_COMPARED = ("objective/kl", "objective/scores", "objective/entropy", "loss/policy_avg",
                "loss/value_avg", "policy/clipfrac_avg")  # fmt: skip


def test_a_worker_killed_mid_ppo_is_reaped_and_its_run_resumed_to_the_same_metrics(
    client, worker, broker_dir, tiny, setup, tmp_path
):
    """PPO, the stage RLHF is built around: a worker SIGKILLed between two updates; a fresh
    worker reaps the run; its resume continues at the update after the last complete
    checkpoint and ends with the metrics of the same run trained without a stop."""
    project = setup["project"]
    prompts = snapshot_row(project, "prompts", tiny["snap_prompts"])
    rm = ModelArtifact.objects.create(name="rm", stage="reward", path=tiny["reward"],
                                      parent=setup["parent"], project=project)  # fmt: skip

    def launch() -> TrainingRun:
        return runs.run_launch(stage="ppo", config=dict(PPO), snapshots=[prompts],
                               parent=setup["parent"], reward=rm)  # fmt: skip

    # The run must go to the worker this test kills: the module's workers stop first.
    for other in worker.setdefault("all", [worker["worker"]]):
        other.stop()
    victim = Worker(broker_dir, tmp_path / "victim.log", args=("--torch-threads", "1"))
    worker["all"].append(victim)
    victim.wait_ready(timeout=90)
    run = launch()
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).checkpoint_step >= 2, 120,
             what="a second PPO checkpoint")  # fmt: skip
    victim.kill()
    run.refresh_from_db()
    assert run.status == "running" and run.step < 8

    fresh = Worker(broker_dir, tmp_path / "fresh.log", args=("--torch-threads", "1"))
    worker["all"].append(fresh)
    run = wait_for(_status(run.pk, "failed"), STALE_S + 60, what="the lost PPO run to be failed")
    assert "Worker lost" in run.error
    checkpoint = runs.resume_point(run).step
    assert 2 <= checkpoint < 8

    client.force_login(setup["engineer"])
    client.post(reverse("training:run_resume", args=[run.pk]))
    resumed = TrainingRun.objects.get(resume_of=run)
    resumed = wait_for(_status(resumed.pk, "succeeded", "failed"), 180, what="the resumed run")
    assert resumed.status == "succeeded", (resumed.error, fresh.tail())
    assert resumed.step == 8 and [s["step"] for s in _starts(resumed)] == [checkpoint]

    straight = wait_for(_status(launch().pk, "succeeded", "failed"), 180, what="the plain run")
    assert straight.status == "succeeded", (straight.error, fresh.tail())

    def progress(r: TrainingRun) -> dict[int, dict]:
        events = read_events(Path(r.output_dir) / "progress.jsonl")
        return {e["step"]: e["metrics"] for e in events if e["event"] == "progress"}

    after, plain = progress(resumed), progress(straight)
    assert sorted(after) == list(range(checkpoint + 1, 9))
    for step in after:
        for key in PPO_COMPARED:
            assert after[step][key] == pytest.approx(plain[step][key], abs=1e-5), (step, key)


def test_a_worker_stopped_by_sigterm_is_marked_stopped_at_once(
    client, broker_dir, tmp_path, make_user, project_factory
):
    """SIGTERM is what `make run`'s Ctrl+C ends in (and the first Ctrl+C a warm shutdown too).
    The row says so within a moment, far below the stale bound, before the process is gone.
    Kills mutations: the beat thread records no stop on its way out; the stop is recorded for
    another pid than the one the heartbeats wrote."""
    stopping = Worker(broker_dir, tmp_path / "stopping.log")
    try:
        stopping.wait_ready(timeout=90)
        row = WorkerHeartbeat.objects.get(hostname__startswith=stopping.name)
        assert row.stopped_at is None and row in selectors.workers_live(queue="training")

        stopping.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        row = wait_for(
            lambda: WorkerHeartbeat.objects.filter(pk=row.pk, stopped_at__isnull=False).first(),
            STALE_S / 2, 0.05, what="the stopped worker's row to say so",
        )  # fmt: skip
        assert time.monotonic() - signalled < STALE_S / 2
        assert stopping.proc.wait(timeout=30) == 0, stopping.tail()
    finally:
        stopping.stop()

    row.refresh_from_db()
    assert row.stopped_at >= row.seen_at  # no heartbeat after the stop undid it
    assert row not in selectors.workers_live(queue="training")
    engineer = make_user("engineer", is_staff=True)
    project_factory("alpha", prompts=1, members=[(engineer, Role.ENGINEER)])
    client.force_login(engineer)  # the workers page is for those who launch runs
    page = client.get(reverse("training:workers")).content.decode()
    (line,) = [tr for tr in page.split("<tr>") if stopping.name in tr]
    assert "stopped" in line and "online" not in line
