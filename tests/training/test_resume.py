"""Resume, as an engineer meets it: the page offers the checkpoint that is really on disk (or says
why there is none), a resumed run goes on counting steps from it in a folder of its own and ends
where an uninterrupted run ends, its charts draw one series, a run is resumed once, and what the
engine noted on the way is on the page."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from django.core.exceptions import ValidationError
from django.urls import reverse
from engine_testutils import load_weights
from runs_testutils import FAST, admin_action, checkpoint_write, messages_of, snapshot_row

from training import execution, presets, runs, selectors
from training.engine import STAGES, ProgressSink, checkpoints, read_events
from training.models import MetricPoint, ModelArtifact, TrainingRun

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("data_dir")]

RUNS = "training_trainingrun"


def _page(client, run: TrainingRun) -> str:
    return client.get(reverse("training:run", args=[run.pk])).content.decode()


def _resume_button(page: str) -> bool:
    return 'id="run-resume"' in page


def _events(run: TrainingRun, kind: str) -> list[dict]:
    events = read_events(Path(run.output_dir) / "progress.jsonl")
    return [e for e in events if e["event"] == kind]


def _launch(snapshots, parent, **config) -> TrainingRun:
    return runs.run_launch(stage=config.pop("stage", "sft"), config={**FAST, **config},
                           snapshots=snapshots, parent=parent)  # fmt: skip


def _cancelled_after_step_1(snapshots, parent, **config) -> TrainingRun:
    """A run the engineer cancelled during its first step: the engine stops after it and saves
    a complete checkpoint there."""
    run = _launch(snapshots, parent, **config)
    TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    assert execution.run_execute(run_id=run.pk, worker="here") == "cancelled"
    run.refresh_from_db()
    return run


def _final_weights(run: TrainingRun) -> dict:
    return load_weights(ModelArtifact.objects.get(run=run).path)


def _assert_same_weights(resumed: dict, straight: dict) -> None:
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_a_cancelled_run_resumed_from_the_admin_continues_its_steps_in_a_new_folder(
    client, sft_inputs, users
):
    """Cancel, then the admin's Resume: the new run starts at the checkpoint's step (its log,
    progress and step count go on from 1, not from 0), its charts draw steps 1-6 once each, it
    reads the checkpoint from the old folder and writes only into its own, and it ends with
    the weights and metrics of the same run trained without a stop."""
    snapshot, parent = sft_inputs
    config = {"max_steps": 6, "save_steps": 2, "save_total_limit": None, "seed": 11}
    stopped = _cancelled_after_step_1([snapshot], parent, **config)
    assert stopped.checkpoint_step == 1 and "Resume continues from the checkpoint at step 1" in (
        stopped.advice
    )
    client.force_login(users["owner"])
    page = _page(client, stopped)
    assert "Resume from checkpoint (step 1)" in page

    response = admin_action(client, RUNS, "resume_runs", [stopped])

    assert "1 run(s) resumed." in messages_of(response)
    resumed = TrainingRun.objects.get(resume_of=stopped)
    assert resumed.step == resumed.checkpoint_step == 1 and resumed.total_steps == 6
    assert execution.run_execute(run_id=resumed.pk, worker="here") == "succeeded"
    resumed.refresh_from_db()
    assert "started sft at step 1/6" in resumed.log_tail and resumed.step == 6
    assert [e["step"] for e in _events(resumed, "start")] == [1]
    assert [e["step"] for e in _events(resumed, "progress")] == [2, 3, 4, 5, 6]

    # One series: step 1 from the first attempt, 2-6 from the resume, each once, in order.
    loss = selectors.run_series(resumed)["loss"]["loss"]
    assert [step for step, _ in loss] == [1, 2, 3, 4, 5, 6]
    page = _page(client, resumed)
    assert 'data-series="loss" data-count="6"' in page
    assert 'data-mark="resumed" data-step="1"' in page
    assert f'Continues <a href="{reverse("training:run", args=[stopped.pk])}">run #' in page

    # A folder of its own; the checkpoint was read from the old one (linked, not rewritten).
    old, new = Path(stopped.output_dir), Path(resumed.output_dir)
    assert old != new and ModelArtifact.objects.get(run=resumed).path == str(new)
    assert not list(old.glob("*.safetensors")) and not (old / "README.md").exists()
    assert [e["step"] for e in read_events(old / "progress.jsonl") if e["event"] == "start"] == [0]
    imported = new / "checkpoints" / "checkpoint-1" / checkpoints.MARKER
    assert os.path.samefile(imported, old / "checkpoints" / "checkpoint-1" / checkpoints.MARKER)
    assert checkpoints.is_resumable(old / "checkpoints" / "checkpoint-1")

    straight = _launch([snapshot], parent, **config)
    assert straight.pk not in (stopped.pk, resumed.pk)
    assert execution.run_execute(run_id=straight.pk, worker="here") == "succeeded"
    straight.refresh_from_db()
    _assert_same_weights(_final_weights(resumed), _final_weights(straight))
    assert resumed.metrics["final"]["eval_loss"] == pytest.approx(
        straight.metrics["final"]["eval_loss"], rel=1e-5
    )
    straight_loss = selectors.run_series(straight)["loss"]["loss"]
    assert [v for _, v in loss] == pytest.approx([v for _, v in straight_loss], rel=1e-5)


@pytest.mark.slow
def test_a_model_pretrained_from_scratch_resumes_with_its_own_tokenizer(client, tiny, users):
    """Pretraining from scratch trains a tokenizer first and says so in a note, shown on the
    page. Its resume, in a fresh folder, takes the tokenizer from the checkpoint (the embeddings
    were trained with it) rather than training another: no such note, same final weights."""
    snapshot = snapshot_row(users["project"], "pretrain", tiny["snap_pretrain"])
    config = {"stage": "pretrain", "architecture": "llama-tiny", "vocab_size": 300,
              "max_steps": 4, "save_steps": 2, "seed": 5}  # fmt: skip
    stopped = _cancelled_after_step_1([snapshot], None, **dict(config))
    client.force_login(users["owner"])
    page = _page(client, stopped)
    assert 'id="run-notes"' in page and "trained a byte-level BPE tokenizer (vocab 300)" in page

    resumed = runs.run_resume(run=stopped, user=users["owner"])
    assert execution.run_execute(run_id=resumed.pk, worker="here") == "succeeded"
    resumed.refresh_from_db()
    assert "started pretrain at step 1/4" in resumed.log_tail
    assert "tokenizer" not in " ".join(resumed.metrics.get("notes", []))

    straight = _launch([snapshot], None, **dict(config))
    assert execution.run_execute(run_id=straight.pk, worker="here") == "succeeded"
    _assert_same_weights(_final_weights(resumed), _final_weights(straight))


def test_resume_is_refused_once_the_run_was_resumed_and_the_page_links_the_resume(
    client, sft_inputs, users
):
    """One resume per stopped run, whatever became of it: the second would train the same
    checkpoint again into another model. The page shows the resume instead of the button."""
    snapshot, parent = sft_inputs
    stopped = _launch([snapshot], parent)
    TrainingRun.objects.filter(pk=stopped.pk).update(status="cancelled", step=3)
    checkpoint_write(stopped, 2)
    client.force_login(users["owner"])
    assert _resume_button(_page(client, stopped))
    first = runs.run_resume(run=stopped, user=users["owner"])

    for status in ("queued", "running", "succeeded", "failed"):
        TrainingRun.objects.filter(pk=first.pk).update(status=status)
        with pytest.raises(ValidationError, match=f"already resumed as run #{first.pk}"):
            runs.run_resume(run=stopped, user=users["owner"])
        page = _page(client, stopped)
        assert not _resume_button(page)
        assert f'Resumed as <a href="{reverse("training:run", args=[first.pk])}">' in page
        response = client.post(reverse("training:run_resume", args=[stopped.pk]))
        assert f"already resumed as run #{first.pk}" in " ".join(messages_of(response))
    response = admin_action(client, RUNS, "resume_runs", [stopped])
    assert any(f"already resumed as run #{first.pk}" in m for m in messages_of(response))
    assert list(stopped.resumed_by.all()) == [first]

    # The resume that failed is the one to resume: from the same checkpoint (its own folder
    # never got one: the step stays 2), into a third folder.
    again = runs.run_resume(run=first, user=users["owner"])
    assert again.checkpoint_step == 2 and again.metrics["resumed_from"] == {
        "run": stopped.pk, "step": 2}  # fmt: skip
    assert len({stopped.output_dir, first.output_dir, again.output_dir}) == 3


@pytest.mark.parametrize(
    ("disk", "why"),
    [
        ("nothing", "no checkpoint to resume from in {root} (one is written every 2 steps; it "
                    "stopped at step 1)"),
        ("weights only", "checkpoint-3 holds the weights only, which the sft stage cannot "
                         "continue from"),
        ("cut short", "checkpoint-3 was cut short (no ENGINE_COMPLETE marker)"),
    ],
)  # fmt: skip
def test_a_run_without_a_checkpoint_to_continue_from_says_why_and_is_not_resumed(
    client, sft_inputs, users, disk, why
):
    """The row's checkpoint_step (3 here, as a weights-only save once recorded it) is not what
    Resume trusts: the completion markers on disk are."""
    snapshot, parent = sft_inputs
    run = _launch([snapshot], parent)
    TrainingRun.objects.filter(pk=run.pk).update(status="failed", step=1, checkpoint_step=3)
    if disk == "weights only":
        checkpoint_write(run, 3, resumable=False)
    elif disk == "cut short":
        (checkpoints.checkpoint_dir(run.output_dir) / "checkpoint-3").mkdir(parents=True)
    root = checkpoints.checkpoint_dir(run.output_dir)
    client.force_login(users["owner"])

    page = _page(client, run)

    assert not _resume_button(page) and "Cannot resume: " in page
    assert why.format(root=root) in page and "Re-run it to start over." in page
    with pytest.raises(ValidationError, match="no checkpoint to resume from"):
        runs.run_resume(run=run, user=users["owner"])
    assert not TrainingRun.objects.filter(resume_of=run).exists()


def test_resume_offers_the_last_complete_checkpoint_on_disk(client, sft_inputs, users):
    """checkpoint-4 was cut short by the crash: the resume continues from checkpoint-2, and says
    so before it is asked."""
    snapshot, parent = sft_inputs
    run = _launch([snapshot], parent)
    TrainingRun.objects.filter(pk=run.pk).update(status="failed", step=5, checkpoint_step=4)
    checkpoint_write(run, 2)
    (checkpoints.checkpoint_dir(run.output_dir) / "checkpoint-4").mkdir()
    client.force_login(users["owner"])
    assert "Resume from checkpoint (step 2)" in _page(client, run)
    assert runs.run_resume(run=run, user=users["owner"]).step == 2


def test_the_engines_notes_are_shown_on_the_run_page_escaped(client, sft_inputs, users):
    """What the engine writes to progress.jsonl as notes (at start and at the end), e.g. that it
    could not resume, reaches the page once each."""
    snapshot, parent = sft_inputs
    run = _launch([snapshot], parent)
    note = "PPO cannot resume from a checkpoint <b>here</b>; this run starts from the beginning."
    sink = ProgressSink(Path(run.output_dir) / "progress.jsonl", execution._Recorder(run))
    sink.emit("start", stage="sft", step=0, total_steps=3, notes=[note])
    sink.emit("end", status="failed", step=0, notes=[note, "second note"])
    client.force_login(users["owner"])

    page = _page(client, run)

    notes = page.split('id="run-notes"')[1].split("</ul>")[0]
    assert notes.count("<li>") == 2 and "second note" in notes
    assert "&lt;b&gt;here&lt;/b&gt;" in notes and "<b>here" not in page
    assert f"note: {note}" in TrainingRun.objects.get(pk=run.pk).log_tail
    assert [e["notes"] for e in read_events(Path(run.output_dir) / "progress.jsonl")][0] == [note]


def test_a_resume_the_engine_starts_over_draws_one_series(sft_inputs):
    """When the engine does not continue from the checkpoint (it starts at step 0), the steps
    copied from the stopped run are dropped: the charts never draw two step-1s."""
    snapshot, parent = sft_inputs
    stopped = _launch([snapshot], parent)
    TrainingRun.objects.filter(pk=stopped.pk).update(status="cancelled", step=3)
    checkpoint_write(stopped, 2)
    for step in (1, 2, 3):
        MetricPoint.objects.create(run=stopped, step=step, values={"loss": 9.0 - step})
    resumed = runs.run_resume(run=stopped)
    assert list(resumed.points.values_list("step", flat=True)) == [1, 2]
    recorder = execution._Recorder(resumed)

    recorder({"event": "start", "stage": "sft", "step": 0, "total_steps": 3})
    for step in (1, 2, 3):
        recorder({"event": "progress", "step": step, "total_steps": 3, "loss": 1.0 / step})

    series = selectors.run_series(resumed)["loss"]["loss"]
    assert series == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert (
        "did not continue from the checkpoint at step 2"
        in TrainingRun.objects.get(pk=resumed.pk).log_tail
    )


def test_presets_set_only_options_their_stage_reads(monkeypatch):
    """PPO once wrote no periodic checkpoints, yet its preset set save_steps: a preset key its
    stage ignores (or does not know) is refused, naming the preset and the key. The engine's
    own PPO checkpoints every save_steps updates, so its preset's save_steps now counts."""
    presets.presets_check(presets.PRESETS)
    assert presets.PRESETS["ppo"]["config"]["save_steps"] > 0
    monkeypatch.setattr(STAGES["ppo"], "ignored", {"save_steps": "no periodic checkpoints"})
    with pytest.raises(ValueError, match=r"preset 'mine': ppo\.save_steps is ignored by the stage"):
        presets.presets_check({"mine": {"stage": "ppo", "config": {"save_steps": 100}}})
    with pytest.raises(ValueError, match=r"preset 'mine': sft has no option 'kl_coef'"):
        presets.presets_check({"mine": {"stage": "sft", "config": {"kl_coef": 0.1}}})


def test_checkpoint_markers_say_whether_a_resume_can_use_them(tmp_path):
    full, weights = tmp_path / "checkpoint-2", tmp_path / "checkpoint-3"
    for path in (full, weights):
        path.mkdir()
    checkpoints.mark_complete(full, 2)
    checkpoints.mark_complete(weights, 3, resumable=False)
    assert checkpoints.is_resumable(full) and not checkpoints.is_resumable(weights)
    assert json.loads((weights / checkpoints.MARKER).read_text())["resumable"] is False
    (tmp_path / "checkpoint-4").mkdir()  # no marker: never resumed from
    assert not checkpoints.is_resumable(tmp_path / "checkpoint-4")


def test_a_resume_whose_checkpoint_was_deleted_meanwhile_fails_saying_so(sft_inputs):
    snapshot, parent = sft_inputs
    stopped = _launch([snapshot], parent)
    TrainingRun.objects.filter(pk=stopped.pk).update(status="failed", step=3)
    checkpoint_write(stopped, 2)
    resumed = runs.run_resume(run=stopped)
    shutil.rmtree(checkpoints.checkpoint_dir(stopped.output_dir))

    assert execution.run_execute(run_id=resumed.pk, worker="here") == "failed"

    resumed.refresh_from_db()
    assert f"resumes run #{stopped.pk}, whose checkpoint is gone" in resumed.error
    assert "Re-run" in resumed.advice
    assert not (Path(resumed.output_dir) / "progress.jsonl").exists()  # nothing was trained


# A PPO run small enough for a test: 4 prompts an update, 3 updates, a checkpoint after each.
PPO = {"max_steps": -1, "total_episodes": 12, "per_device_train_batch_size": 2,
       "gradient_accumulation_steps": 2, "num_mini_batches": 2,
       "local_rollout_forward_batch_size": 4, "num_ppo_epochs": 2, "response_length": 6,
       "learning_rate": 1e-3, "lr_scheduler_type": "constant", "save_steps": 1,
       "save_total_limit": None, "missing_eos_penalty": 1.0, "seed": 3}  # fmt: skip


@pytest.mark.slow
def test_a_cancelled_ppo_run_resumed_from_the_admin_ends_as_an_uninterrupted_one(
    client, tiny, users
):
    """PPO through the platform: cancelled during its first update, the engine's PPO writes a
    resumable checkpoint there; the admin's Resume continues at update 2 and ends with the
    metrics of the same run trained without a stop (the engine's exact resume, reached through
    the service, the worker's folder hand-over and the run page)."""
    project = users["project"]
    prompts = snapshot_row(project, "prompts", tiny["snap_prompts"])
    policy = ModelArtifact.objects.create(name="policy", stage="base", path=tiny["policy"],
                                          project=project)  # fmt: skip
    rm = ModelArtifact.objects.create(name="rm", stage="reward", path=tiny["reward"],
                                      parent=policy, project=project)  # fmt: skip

    def launch() -> TrainingRun:
        return runs.run_launch(stage="ppo", config=dict(PPO), snapshots=[prompts],
                               parent=policy, reward=rm)  # fmt: skip

    stopped = launch()
    TrainingRun.objects.filter(pk=stopped.pk).update(cancel_requested=True)
    assert execution.run_execute(run_id=stopped.pk, worker="here") == "cancelled"
    stopped.refresh_from_db()
    assert stopped.checkpoint_step == 1
    client.force_login(users["owner"])
    assert "Resume from checkpoint (step 1)" in _page(client, stopped)

    response = admin_action(client, RUNS, "resume_runs", [stopped])

    assert "1 run(s) resumed." in messages_of(response)
    resumed = TrainingRun.objects.get(resume_of=stopped)
    assert execution.run_execute(run_id=resumed.pk, worker="here") == "succeeded"
    resumed.refresh_from_db()
    assert "started ppo at step 1/3" in resumed.log_tail and resumed.step == 3
    assert [e["step"] for e in _events(resumed, "progress")] == [2, 3]
    kl = selectors.run_series(resumed)
    steps = {step for series in kl.values() for points in series.values() for step, _ in points}
    assert steps == {1, 2, 3}

    straight = launch()
    assert execution.run_execute(run_id=straight.pk, worker="here") == "succeeded"
    straight.refresh_from_db()
    for step in (2, 3):
        a = next(e for e in _events(resumed, "progress") if e["step"] == step)["metrics"]
        b = next(e for e in _events(straight, "progress") if e["step"] == step)["metrics"]
        for key in ("objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (step, key)
