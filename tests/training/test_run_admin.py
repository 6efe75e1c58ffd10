"""What engineers do to runs in the admin and on the run page: cancel, resume and re-run (one run
or many), launch every preset through the form, the actions that pre-fill that form, "Generate
candidates" from a model; and who may do it."""

from __future__ import annotations

import itertools
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from django.urls import reverse
from django.utils import timezone
from runs_testutils import (
    FAST,
    admin_action,
    base_artifact,
    checkpoint_write,
    messages_of,
    snapshot_row,
)

from annotation import services as annotation_services
from annotation.models import Response, Role, Task
from training import execution, generation, presets, runs
from training.engine import read_events
from training.models import GenerationJob, ModelArtifact, TrainingRun, WorkerHeartbeat

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("data_dir")]

RUNS = "training_trainingrun"
LAUNCH = "admin:training_trainingrun_launch"


def _stopped_at_step_1(snapshot, parent) -> TrainingRun:
    """A 4-step run the engineer cancelled during its first step: the engine stops after it and
    saves a complete checkpoint there."""
    run = runs.run_launch(stage="sft", config={**FAST, "max_steps": 4, "seed": 7},
                              snapshots=[snapshot], parent=parent, name="tiny-sft")  # fmt: skip
    TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    assert execution.run_execute(run_id=run.pk, worker="here") == "cancelled"
    run.refresh_from_db()
    assert run.checkpoint_step == 1, run.log_tail
    return run


def _loss_steps(run: TrainingRun) -> list[int]:
    return sorted(run.points.filter(values__has_key="loss").values_list("step", flat=True))


def _starts(run: TrainingRun) -> list[int]:
    """The step each training attempt in the run's output directory started from."""
    events = read_events(Path(run.output_dir) / "progress.jsonl")
    return [e["step"] for e in events if e["event"] == "start"]


@pytest.mark.slow
def test_the_admin_resumes_a_stopped_run_from_its_checkpoint_and_reruns_it_from_scratch(
    client, sft_inputs, users
):
    """Kills mutations: run_resume with `resume: False` (the engine starts again at step 0);
    resume_runs calling run_rerun; rerun_runs calling run_resume; run_rerun keeping `resume`."""
    stopped = _stopped_at_step_1(*sft_inputs)
    client.force_login(users["owner"])

    response = admin_action(client, RUNS, "resume_runs", [stopped])

    assert response.status_code == 302 and "1 run(s) resumed." in messages_of(response)
    resumed = TrainingRun.objects.get(resume_of=stopped)
    assert resumed.status == "queued" and resumed.output_dir != stopped.output_dir
    assert execution.run_execute(run_id=resumed.pk, worker="here") == "succeeded"
    resumed.refresh_from_db()
    # It continued from checkpoint-1: steps 2-4 were trained once, step 1 is the first attempt's.
    assert "started sft at step 1/4" in resumed.log_tail
    assert _starts(stopped) == [0] and _starts(resumed) == [1]
    assert _loss_steps(resumed) == [1, 2, 3, 4] and resumed.step == 4
    assert ModelArtifact.objects.get(run=resumed).path == resumed.output_dir

    # Re-run the latest attempt: a new run in a new directory, same options, from step 0.
    response = admin_action(client, RUNS, "rerun_runs", [resumed])

    assert response.status_code == 302 and "1 run(s) re-queued." in messages_of(response)
    again = TrainingRun.objects.exclude(pk__in=[stopped.pk, resumed.pk]).get()
    assert again.resume_of is None and again.output_dir != stopped.output_dir
    assert again.config["resume"] is False and again.config["max_steps"] == 4
    same = {"output_dir": "", "resume": False}
    assert {**again.config, **same} == {**resumed.config, **same}
    assert execution.run_execute(run_id=again.pk, worker="here") == "succeeded"
    again.refresh_from_db()
    assert "started sft at step 0/4" in again.log_tail and _starts(again) == [0]
    assert _loss_steps(again) == [1, 2, 3, 4]


_seeds = itertools.count()


def _launched(snapshot, parent, **fields) -> TrainingRun:
    # A seed of its own: the same launch while the last one is unfinished would be that run.
    run = runs.run_launch(stage="sft", config={**FAST, "seed": next(_seeds)},
                          snapshots=[snapshot], parent=parent)  # fmt: skip
    if fields:
        TrainingRun.objects.filter(pk=run.pk).update(**fields)
        run.refresh_from_db()
    return run


def test_the_admin_cancels_the_selected_runs(client, sft_inputs, users):
    """Kills mutations: cancel_runs doing nothing; run_cancel only flagging a queued run instead
    of cancelling it at once."""
    queued = _launched(*sft_inputs)
    running = _launched(*sft_inputs, status="running", worker="gpu-1 pid 3")
    done = _launched(*sft_inputs, status="succeeded", finished_at=timezone.now())
    client.force_login(users["owner"])

    response = admin_action(client, RUNS, "cancel_runs", [queued, running, done])

    assert response.status_code == 302
    queued.refresh_from_db(), running.refresh_from_db(), done.refresh_from_db()
    assert queued.status == "cancelled" and queued.finished_at is not None
    assert running.status == "running" and running.cancel_requested  # stops after its step
    assert done.status == "succeeded" and not done.cancel_requested
    said = messages_of(response)
    assert "2 run(s) cancelled (or cancelling)." in said
    assert f"{done}: run #{done.pk} is already succeeded" in said


def test_the_admin_resumes_and_reruns_the_selected_runs(client, sft_inputs, users):
    """Kills mutations: resume_runs or rerun_runs doing nothing; rerun_runs handling only the
    first selected run."""
    failed = _launched(*sft_inputs, status="failed", checkpoint_step=2, step=3)
    cancelled = _launched(*sft_inputs, status="cancelled", checkpoint_step=2, step=2)
    done = _launched(*sft_inputs, status="succeeded")
    for run in (failed, cancelled, done):
        checkpoint_write(run, 2)
    client.force_login(users["owner"])

    response = admin_action(client, RUNS, "resume_runs", [failed, cancelled, done])

    said = messages_of(response)
    assert "2 run(s) resumed." in said
    assert any(m.startswith(f"{done}: ") and "only failed or cancelled" in m for m in said)
    for run in (failed, cancelled):
        new = TrainingRun.objects.get(resume_of=run)
        assert new.status == "queued" and new.config["resume"] is True
        assert new.output_dir != run.output_dir and new.step == new.checkpoint_step == 2
    assert not TrainingRun.objects.filter(resume_of=done).exists()

    before = set(TrainingRun.objects.values_list("pk", flat=True))
    response = admin_action(client, RUNS, "rerun_runs", [failed, done])

    assert "2 run(s) re-queued." in messages_of(response)
    fresh = TrainingRun.objects.exclude(pk__in=before)
    assert fresh.count() == 2 and all(r.status == "queued" and r.step == 0 for r in fresh)
    assert {r.config["dataset"] for r in fresh} == {failed.config["dataset"]}
    assert len({r.output_dir for r in fresh} | {failed.output_dir, done.output_dir}) == 4


def test_the_run_page_reruns_a_finished_run_as_a_new_run(client, sft_inputs, users):
    """Kills mutations: the run page's rerun branch resuming instead; run_rerun dropping the
    config or the name."""
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config={**FAST, "seed": 7, "warmup_steps": 1},
                              snapshots=[snapshot], parent=parent, name="again")  # fmt: skip
    TrainingRun.objects.filter(pk=run.pk).update(status="failed", error="boom")
    client.force_login(users["owner"])
    page = client.get(reverse("training:run", args=[run.pk])).content.decode()
    assert f'action="{reverse("training:run_rerun", args=[run.pk])}"' in page

    response = client.post(reverse("training:run_rerun", args=[run.pk]))

    new = TrainingRun.objects.exclude(pk=run.pk).get()
    assert response.status_code == 302
    assert response["Location"] == reverse("training:run", args=[new.pk])
    assert f"Re-run queued as {new}." in messages_of(response)
    assert new.status == "queued" and new.resume_of is None and new.name == "again"
    assert new.created_by == users["owner"] and new.output_dir != run.output_dir
    assert {**new.config, "output_dir": ""} == {**run.config, "output_dir": ""}
    assert list(new.snapshots.all()) == [snapshot] and new.parent_artifact == parent


# --- The launch form --------------------------------------------------------------------------

SNAPSHOT_KIND = {"pretrain": "pretrain", "sft": "sft", "instruction": "instruction",
                 "reward": "preference", "dpo": "preference", "ppo": "prompts",
                 "grpo": "prompts", "rloo": "prompts", "kto": "kto"}  # fmt: skip
# Stages that read prompts (`prompts`, not `dataset`) and are scored by a reward model.
ONLINE = ("ppo", "grpo", "rloo")


@pytest.fixture
def gpu_worker():
    """A training worker with a large GPU is online: the memory estimate is made against it
    (not this machine), so even the bigger presets fit."""
    gpu = {"index": 0, "name": "Big GPU 80GB", "memory_total": 80 * 2**30,
           "memory_free": 80 * 2**30}  # fmt: skip
    now = timezone.now()
    return WorkerHeartbeat.objects.create(hostname="celery@gpu-box", queues=["training"],
                                          devices=[gpu], cpu={"cores": 8}, started_at=now,
                                          seen_at=now)  # fmt: skip


@pytest.fixture
def models(tiny, users):
    """A policy and a reward model trained from it, as registered artifacts of the project."""
    policy = base_artifact(tiny["policy"], name="policy", project=users["project"])
    rm = ModelArtifact.objects.create(name="rm", stage="reward", path=tiny["reward"],
                                      parent=policy, project=users["project"])  # fmt: skip
    return policy, rm


@pytest.mark.parametrize("preset", list(presets.PRESETS))
def test_it_launches_each_preset_from_the_form_it_prefills(
    client, tiny, users, models, gpu_worker, preset
):
    """Kills mutations: the launch view dropping the reward model, the parent or the preset;
    fill_inputs giving PPO's prompts to `dataset`; the form's initial values losing the
    preset's stage, its config or the reward model of the query."""
    stage = presets.PRESETS[preset]["stage"]
    kind = SNAPSHOT_KIND[stage]
    snapshot = snapshot_row(users["project"], kind, tiny[f"snap_{kind}"])
    policy, rm = models
    inputs = {"snapshot": snapshot.pk}
    if stage != "pretrain":  # the pretrain presets train from scratch
        inputs["parent"] = policy.pk
    if stage in ONLINE:
        inputs["reward"] = rm.pk
    client.force_login(users["owner"])

    page = client.get(reverse(LAUNCH), {"preset": preset, **inputs})

    initial = dict(page.context["form"].initial)
    assert {k: initial.pop(k) for k in ("preset", "stage")} == {"preset": preset, "stage": stage}
    assert yaml.safe_load(initial.pop("config")) == presets.PRESETS[preset]["config"]
    assert initial == inputs

    response = client.post(reverse(LAUNCH), {"preset": preset, "stage": stage, **inputs,
                                             "config": page.context["form"].initial["config"],
                                             "name": f"{preset} run", "launch": "Launch"})  # fmt: skip

    run = TrainingRun.objects.get()
    assert response.status_code == 302, page.context["form"].errors
    assert response["Location"] == reverse("training:run", args=[run.pk])
    assert f"{run} queued." in messages_of(response)
    assert (run.stage, run.preset, run.name, run.status) == (
        stage,
        preset,
        f"{preset} run",
        "queued",
    )
    assert run.project == users["project"] and run.created_by == users["owner"]
    assert list(run.snapshots.all()) == [snapshot]
    assert run.config["prompts" if stage in ONLINE else "dataset"] == snapshot.path
    if stage == "pretrain":
        assert run.parent_artifact is None and run.config["model"] is None
    else:
        assert run.parent_artifact == policy and run.config["model"] == policy.path
    if stage in ONLINE:
        assert run.reward_artifact == rm and run.config["reward_model"] == rm.path
    else:
        assert run.reward_artifact is None and "reward_model" not in run.config
    for key, value in presets.PRESETS[preset]["config"].items():
        assert run.config[key] == value, key


def test_the_launch_form_refuses_bad_yaml_and_missing_inputs_naming_the_field(
    client, tiny, users, models, gpu_worker
):
    """Kills mutations: the launch view swallowing the engine's ConfigError; the form accepting
    a config that is not a mapping (a server error), or a stage the config contradicts; a
    reward model allowed on another stage than PPO; a missing input said under Config in the
    engine's words (`ppo.prompts: required`) instead of under its field."""
    policy, rm = models
    prompts = snapshot_row(users["project"], "prompts", tiny["snap_prompts"])
    pairs = snapshot_row(users["project"], "preference", tiny["snap_preference"])
    client.force_login(users["owner"])

    def refused(data: dict) -> dict:
        response = client.post(reverse(LAUNCH), {**data, "launch": "Launch"})
        assert response.status_code == 200
        return response.context["form"].errors

    # Each missing input is said under its own field, in the form's words (issue 21).
    ppo = {"stage": "ppo", "preset": "ppo", "snapshot": prompts.pk, "parent": policy.pk}
    assert refused(ppo) == {"reward": ["PPO trains against a reward model: choose one"]}
    assert refused({**ppo, "reward": rm.pk, "snapshot": ""}) == {
        "snapshot": ["PPO trains on a prompts or preference snapshot: choose one"]
    }
    no_parent = refused({**ppo, "reward": rm.pk, "parent": ""})
    assert list(no_parent) == ["parent"]
    assert no_parent["parent"][0].startswith("PPO starts from a model: choose a base model")
    dpo = {"stage": "dpo", "snapshot": pairs.pk, "parent": policy.pk}
    assert refused({**dpo, "reward": rm.pk}) == {
        "reward": ["only PPO, GRPO and RLOO use a reward model; DPO does not"]
    }
    bad_yaml = refused({**dpo, "config": "beta: 0.1\nmax_steps: [2\n"})["config"][0]
    assert bad_yaml.startswith("config: line 2, column 14: invalid YAML")
    assert refused({**dpo, "config": "- beta\n"})["config"] == [
        "config: expected a mapping of option: value lines"
    ]
    assert refused({**dpo, "config": "stage: sft\n"})["config"] == [
        "stage: the config says 'sft' but the form says 'dpo'"
    ]
    assert refused({"stage": "", "snapshot": pairs.pk})["stage"] == ["This field is required."]
    assert not TrainingRun.objects.exists()


def test_the_launch_form_asks_for_processes_no_more_than_a_live_worker_offers(
    client, tiny, users, models, gpu_worker
):
    """One process per GPU (the GPU worker has one, a CPU worker one per core): a count no live
    training worker can run is refused on the field, naming what is offered; one a worker can
    run is stored on the run, and a resume or re-run keeps it."""
    policy, _ = models
    snapshot = snapshot_row(users["project"], "sft", tiny["snap_sft"])
    client.force_login(users["owner"])
    form = {"stage": "sft", "snapshot": snapshot.pk, "parent": policy.pk, "launch": "Launch",
            "config": "max_steps: 2\n"}  # fmt: skip

    response = client.post(reverse(LAUNCH), {**form, "num_processes": "2"})
    assert response.status_code == 200
    assert response.context["form"].errors["num_processes"] == [
        "num_processes: 2 processes, but the live training workers can run at most 1 (one per "
        "GPU, or per CPU core on a worker without GPUs)"
    ]
    assert not TrainingRun.objects.exists()
    response = client.post(reverse(LAUNCH), {**form, "num_processes": "0"})
    assert "num_processes" in response.context["form"].errors

    now = timezone.now()
    WorkerHeartbeat.objects.create(hostname="celery@cpu-box", queues=["training"], devices=[],
                                   cpu={"cores": 4}, started_at=now, seen_at=now)  # fmt: skip
    response = client.post(reverse(LAUNCH), {**form, "num_processes": "4"})
    assert response.status_code == 302, response.context["form"].errors
    run = TrainingRun.objects.get()
    assert run.num_processes == 4
    # The same launch with one process is another run, not the 4-process one reused.
    client.post(reverse(LAUNCH), form)
    assert sorted(TrainingRun.objects.values_list("num_processes", flat=True)) == [1, 4]
    rerun = runs.run_rerun(run=run)
    assert rerun.num_processes == 4 and rerun.reused  # the same request, still queued


# --- Actions that pre-fill the launch form ----------------------------------------------------


def _query(response) -> dict:
    assert response.status_code == 302
    url = urlparse(response["Location"])
    assert url.path == reverse(LAUNCH)
    return {k: v[0] for k, v in parse_qs(url.query).items()}


def test_train_on_this_snapshot_prefills_the_preset_of_its_kind(client, tiny, users):
    """Kills mutations: preset_for_kind pointing a kind at another preset (SFT's default,
    LoRA, is not its first preset; preference pairs feed the reward model, not DPO);
    train_on_snapshot leaving out the snapshot; _one accepting several selected rows."""
    client.force_login(users["owner"])
    expected = {"pretrain": "pretrain-tiny", "sft": "sft-lora", "instruction": "instruction",
                "preference": "reward", "prompts": "ppo", "kto": "kto"}  # fmt: skip
    rows = {}
    for kind, preset in expected.items():
        rows[kind] = snapshot = snapshot_row(users["project"], kind, tiny[f"snap_{kind}"])
        response = admin_action(client, "annotation_snapshot", "train_on_snapshot", [snapshot])
        assert _query(response) == {"snapshot": str(snapshot.pk), "preset": preset}
        form = client.get(response["Location"]).context["form"]
        assert form.initial["stage"] == presets.PRESETS[preset]["stage"]
        assert form.initial["snapshot"] == snapshot.pk

    response = admin_action(client, "annotation_snapshot", "train_on_snapshot",
                            [rows["pretrain"], rows["prompts"]])  # fmt: skip
    assert response["Location"] == reverse("admin:annotation_snapshot_changelist")
    assert "Select exactly one." in messages_of(response)


def test_train_from_this_model_prefills_the_next_stage(client, users, models):
    """Kills mutations: train_from redirecting nowhere for a policy; a reward model sent as the
    parent (PPO needs it as `reward` and its own parent as the policy); the next preset of a
    stage changed."""
    policy, rm = models
    sft = ModelArtifact.objects.create(name="sft", stage="sft", path="/m/sft", parent=policy,
                                       project=users["project"])  # fmt: skip
    client.force_login(users["owner"])

    def train_from(artifact):
        return admin_action(client, "training_modelartifact", "train_from", [artifact])

    assert _query(train_from(policy)) == {"parent": str(policy.pk), "preset": "sft-lora"}
    assert _query(train_from(sft)) == {"parent": str(sft.pk), "preset": "reward"}
    response = train_from(rm)
    assert _query(response) == {"reward": str(rm.pk), "parent": str(policy.pk), "preset": "ppo"}
    form = client.get(response["Location"]).context["form"]
    assert (form.initial["stage"], form.initial["parent"], form.initial["reward"]) == (
        "ppo",
        policy.pk,
        rm.pk,
    )
    assert "kl_coef: 0.05" in form.initial["config"]
    assert "Select exactly one." in messages_of(
        admin_action(client, "training_modelartifact", "train_from", [policy, sft])
    )


# --- Generate candidates from a model ---------------------------------------------------------


def test_generate_candidates_queues_a_job_with_the_chosen_prompts_and_decoding(
    client, tiny, users, models
):
    """Kills mutations: generate_from redirecting nowhere; the generate view ignoring the tag,
    the limit, K, top_p or the round; the job's round not given to the ranking tasks."""
    policy, _ = models
    project = users["project"]
    tagged, _ = annotation_services.prompts_create(project=project, items=[
        {"text": "Question 1: the cat?", "tags": ["animals"]},
        {"text": "Question 2: the dog?", "tags": ["animals"]},
        {"text": "Question 3: the car?", "tags": ["cars"]},
    ])  # fmt: skip
    client.force_login(users["owner"])

    response = admin_action(client, "training_modelartifact", "generate_from", [policy])

    url = reverse("training:generate", args=[policy.pk])
    assert response.status_code == 302 and response["Location"] == url
    assert client.get(url).status_code == 200
    choices = {"project": project.pk, "tag": "animals", "limit": 1, "k": 3, "temperature": 0.8,
               "top_p": 0.9, "max_new_tokens": 5, "seed": 3, "round": 4}  # fmt: skip
    refused = client.post(url, {**choices, "k": 1})
    assert refused.status_code == 200 and "k" in refused.context["form"].errors
    assert not GenerationJob.objects.exists()

    response = client.post(url, choices)

    job = GenerationJob.objects.get()
    assert response["Location"] == reverse("admin:training_modelartifact_change", args=[policy.pk])
    assert f"Generation #{job.pk} queued: 3 responses for each of 1 prompts" in " ".join(
        messages_of(response)
    )
    assert (job.status, job.project, job.artifact, job.created_by) == (
        "queued",
        project,
        policy,
        users["owner"],
    )
    assert (job.k, job.temperature, job.top_p, job.max_new_tokens, job.seed, job.round) == (
        3,
        0.8,
        0.9,
        5,
        3,
        4,
    )
    assert list(job.prompts.all()) == [tagged[0]]  # the first prompt with the tag, no more

    assert generation.generation_execute(job_id=job.pk, worker="here") == "succeeded"

    task = Task.objects.get(project=project, round=4)
    assert task.kind == "rank" and task.prompt == tagged[0] and task.candidates.count() == 3
    responses = Response.objects.filter(model_artifact=policy)
    assert responses.count() == 3
    assert all(r.generation["temperature"] == 0.8 and r.generation["top_p"] == 0.9
               and r.generation["max_new_tokens"] == 5 for r in responses)  # fmt: skip


# --- Who may do it ---------------------------------------------------------------------------


def test_only_staff_of_the_runs_project_cancel_resume_or_rerun_it(
    client, make_user, sft_inputs, users
):
    """Kills mutations: the run admin's queryset not scoped to the user's projects; the run
    page's actions reading the run without the user's scope; the launch form mounted outside
    the admin's staff check, or offering snapshots of other projects."""
    snapshot, parent = sft_inputs
    stopped = _launched(snapshot, parent, status="failed", checkpoint_step=2)
    checkpoint_write(stopped, 2)  # resumable: only the role is missing
    running = _launched(snapshot, parent, status="running", worker="gpu-1 pid 3")
    labeler = make_user("labeler")
    annotation_services.membership_set(project=users["project"], user=labeler, role=Role.LABELER)
    before = TrainingRun.objects.count()

    def nothing_changed():
        assert TrainingRun.objects.count() == before
        assert not TrainingRun.objects.get(pk=running.pk).cancel_requested

    for user, admin_status, page_status in [
        (users["outsider"], 302, 404),  # an engineer of another project: not their runs
        (users["member"], 302, 302),  # made staff by hand, a labeler: the sync took the flag
        (labeler, 302, 302),  # a labeler: sent to the admin login
    ]:
        client.force_login(user)
        for action in ("cancel_runs", "resume_runs", "rerun_runs"):
            assert admin_action(client, RUNS, action, [stopped, running]).status_code == (
                admin_status
            )
        for name, run in [("run_cancel", running), ("run_resume", stopped),
                          ("run_rerun", stopped)]:  # fmt: skip
            assert client.post(reverse(f"training:{name}", args=[run.pk])).status_code == (
                page_status
            )
        nothing_changed()

    client.force_login(users["outsider"])
    response = client.post(reverse(LAUNCH), {"stage": "sft", "snapshot": snapshot.pk,
                                             "parent": parent.pk, "launch": "Launch"})  # fmt: skip
    assert response.status_code == 200  # refused: the snapshot is not a choice of theirs
    assert "snapshot" in response.context["form"].errors
    client.force_login(labeler)
    assert client.get(reverse(LAUNCH)).status_code == 302
    assert client.post(reverse(LAUNCH), {"stage": "sft", "snapshot": snapshot.pk,
                                         "launch": "Launch"}).status_code == 302  # fmt: skip
    nothing_changed()


def test_a_curator_cannot_launch_cancel_resume_or_rerun(client, make_user, sft_inputs, users):
    """A curator reads runs but changes none: the launch, the run actions and the admin's
    actions all ask for an engineer of the run's project."""
    snapshot, parent = sft_inputs
    stopped = _launched(snapshot, parent, status="failed", checkpoint_step=2)
    checkpoint_write(stopped, 2)  # resumable: only the role is missing
    curator = make_user("curator")
    annotation_services.membership_set(project=users["project"], user=curator, role=Role.CURATOR)
    client.force_login(curator)
    for action in ("cancel_runs", "resume_runs", "rerun_runs"):
        admin_action(client, RUNS, action, [stopped])
    client.post(reverse("training:run_rerun", args=[stopped.pk]))
    client.post(reverse(LAUNCH), {"stage": "sft", "snapshot": snapshot.pk, "parent": parent.pk,
                                  "config": "max_steps: 2\n", "launch": "Launch"})  # fmt: skip
    assert TrainingRun.objects.count() == 1


def test_a_staff_flagged_labeler_cannot_launch(client, tiny, users):
    """A user made staff by hand who holds only a labeler role loses the flag when the role is
    synced (annotation/roles.py user_role_sync), so the admin's launch form is closed to them;
    were it kept, the launch asks for an engineer and refuses a typed dataset path."""
    client.force_login(users["member"])
    client.post(reverse(LAUNCH), {"stage": "pretrain", "launch": "Launch",
                                  "config": f"dataset: {tiny['snap_pretrain']}\n"})  # fmt: skip
    assert not TrainingRun.objects.exists()
