"""GRPO, RLOO and KTO (TRL 1.16's trainers behind the engine's stages), their reward rules, and
`report_to`: in the engine on the tiny fixtures, and end to end through the launch service on
snapshots the platform built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_testutils import assert_output_dir, base_config, finite, params_changed
from rounds_testutils import judge
from runs_testutils import base_artifact

from training.engine import ConfigError, load_config, run_stage
from training.engine.resources import estimate_memory
from training.engine.rewards import format_regex, length_limit


def _online(tiny, stage: str, out, **overrides) -> dict:
    cfg = base_config(tiny, stage, out, prompts=tiny["snap_prompts"], dataset="",
                      reward_model=tiny["reward"], num_generations=2, max_completion_length=8,
                      learning_rate=1e-3)  # fmt: skip
    for key in ("per_device_eval_batch_size", "max_length"):  # ignored by these stages
        cfg.pop(key)
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_online_rl_trains_the_policy_on_the_reward_model_plus_rules(tiny, tmp_path, stage):
    rules = [{"name": "length_limit", "max_chars": 20},
             {"name": "format_regex", "pattern": "the", "weight": 0.5}]  # fmt: skip
    events: list[dict] = []
    result = run_stage(_online(tiny, stage, tmp_path / "out", reward_rules=rules),
                       sink=events.append)  # fmt: skip

    assert result.status == "succeeded", result.error
    assert result.global_step == 3
    lineage = assert_output_dir(result.output_dir, stage)
    assert lineage["snapshots"]["prompts"]["kind"] == "prompts"
    assert params_changed(tiny["policy"], result.output_dir)
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) == 3 and all(finite(e["loss"]) for e in progress)
    # Each reward is logged on its own (the run page charts every `reward` key), then summed.
    metrics = progress[-1]["metrics"]
    for name in ("rewards/reward/mean", "rewards/length_limit/mean", "rewards/format_regex/mean"):
        assert finite(metrics[name]), name
    assert finite(result.metrics["reward"]) and finite(result.metrics["kl"])


def test_grpo_resumes_from_its_last_checkpoint(tiny, tmp_path):
    out = tmp_path / "out"
    first = run_stage(_online(tiny, "grpo", out, max_steps=2, save_steps=2))
    assert first.status == "succeeded"
    assert (out / "checkpoints" / "checkpoint-2").is_dir()

    events: list[dict] = []
    again = run_stage(_online(tiny, "grpo", out, max_steps=4, save_steps=2, resume=True),
                      sink=events.append)  # fmt: skip

    assert again.status == "succeeded" and again.global_step == 4
    start = next(e for e in events if e["event"] == "start")
    assert start["step"] == 2, "the resume continued at the checkpoint's step"
    assert [e["step"] for e in events if e["event"] == "progress"] == [3, 4]


def test_rule_rewards_alone_need_no_reward_model(tiny, tmp_path):
    cfg = _online(tiny, "grpo", tmp_path / "out", reward_model=None, max_steps=1,
                  reward_rules=[{"name": "length_limit", "max_chars": 5}])  # fmt: skip
    result = run_stage(cfg)
    assert result.status == "succeeded", result.error
    # Eight tokens of a random tiny model are longer than five characters: a penalty.
    assert result.metrics["reward"] < 0


def test_the_reward_rules_score_what_their_documentation_says():
    limit = length_limit(max_chars=4)
    assert limit(completions=["abcd", "abcdef", "abcdefgh", ""]) == [0.0, -0.5, -1.0, 0.0]
    chat = [
        [{"role": "assistant", "content": "Answer: 4"}],
        [{"role": "assistant", "content": "4"}],
    ]
    assert format_regex(pattern=r"^Answer:")(completions=chat) == [1.0, 0.0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reward_model": None}, r"grpo.reward_model: required unless reward_rules"),
        ({"reward_rules": [{"name": "lenght_limit", "max_chars": 5}]},
         r"grpo.reward_rules\[0\].name: 'lenght_limit' is not a reward rule \(one of: length_limit"),
        ({"reward_rules": [{"name": "format_regex", "pattern": "(unclosed"}]},
         r"grpo.reward_rules\[0\].pattern: not a regular expression"),
        ({"reward_rules": [{"name": "length_limit"}]},
         r"grpo.reward_rules\[0\].max_chars: required, int, got None"),
        ({"reward_rules": [{"name": "length_limit", "max_chars": 5, "max": 3}]},
         r"grpo.reward_rules\[0\]: length_limit has no option 'max'"),
        ({"num_generations": 3}, r"grpo.num_generations: per_device_train_batch_size x "),
        ({"num_generations": 1}, r"grpo.num_generations: must be at least 2"),
        ({"beta": -1}, r"grpo.beta: must be 0 or positive"),
    ],
)  # fmt: skip
def test_a_bad_online_rl_config_names_the_field(overrides, message):
    cfg = {"stage": "grpo", "output_dir": "o", "model": "m", "prompts": "p", "reward_model": "r",
           "per_device_train_batch_size": 4, "num_generations": 2, **overrides}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        load_config(cfg)


def test_kto_learns_from_thumbs_up_and_down(tiny, tmp_path):
    cfg = base_config(tiny, "kto", tmp_path / "out", dataset=tiny["snap_kto"], learning_rate=3e-5)
    result = run_stage(cfg)

    assert result.status == "succeeded", result.error
    assert_output_dir(result.output_dir, "kto")
    assert params_changed(tiny["policy"], result.output_dir)
    # Thumbs-up rows gain on the reference, thumbs-down rows lose: a positive margin.
    assert result.metrics["margin"] > 0 and finite(result.metrics["eval_loss"])


def test_kto_refuses_a_preference_snapshot_naming_the_kind(tiny, tmp_path):
    from training.engine.runner import validate_inputs

    cfg = load_config(base_config(tiny, "kto", tmp_path / "o", dataset=tiny["snap_preference"]))
    with pytest.raises(ConfigError, match=r"snapshot kind 'preference' does not fit stage 'kto'"):
        validate_inputs(cfg)


def test_the_estimate_counts_what_each_new_stage_holds(tiny):
    base = {"model": tiny["policy"], "max_steps": 1}
    kto = estimate_memory({"stage": "kto", **base}, "cpu")
    sft = estimate_memory({"stage": "sft", **base}, "cpu")
    assert kto.weights > sft.weights, "KTO holds a frozen reference beside the policy"
    grpo = estimate_memory({"stage": "grpo", "reward_model": tiny["reward"], **base}, "cpu")
    no_kl = estimate_memory({"stage": "grpo", "reward_model": tiny["reward"], "beta": 0, **base},
                            "cpu")  # fmt: skip
    assert grpo.rollout > 0 and grpo.known
    assert no_kl.weights < grpo.weights, "beta 0 loads no reference"


# --- report_to --------------------------------------------------------------------------------


def _events_in(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def _scalars(event_files: list[Path]) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for path in event_files:
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_report_to_tensorboard_writes_event_files_into_the_run_folder(tiny, tmp_path, stage):
    out = tmp_path / "out"
    if stage == "ppo":
        cfg = base_config(tiny, "ppo", out, prompts=tiny["snap_prompts"], dataset="",
                          reward_model=tiny["reward"], total_episodes=8, response_length=8,
                          num_mini_batches=1, num_ppo_epochs=1)  # fmt: skip
        cfg.pop("max_steps")
    else:
        cfg = base_config(tiny, "sft", out)
    events: list[dict] = []
    result = run_stage({**cfg, "report_to": "tensorboard"}, sink=events.append)

    assert result.status == "succeeded", result.error
    files = _events_in(out / "tensorboard")
    assert files, f"no event files under {out / 'tensorboard'}"
    assert not _events_in(out / "checkpoints"), "not under checkpoints/, which rotation prunes"
    tags = _scalars(files)
    loss = "train/loss" if stage == "sft" else "loss/policy_avg"
    assert loss in tags, tags
    # The platform's own sink still gets every step.
    assert any(e["event"] == "progress" for e in events)


def test_report_to_a_tracker_that_is_not_installed_names_the_package():
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match=r"sft.report_to: wandb needs the wandb package"):
        load_config({"stage": "sft", "output_dir": "o", "model": "m", "dataset": "d",
                     "report_to": "wandb"})  # fmt: skip


def test_report_to_is_a_config_key_not_a_trainer_kwarg():
    with pytest.raises(ConfigError, match=r"sft.report_to: 'comet' is not one of 'none'"):
        load_config({"stage": "sft", "output_dir": "o", "model": "m", "dataset": "d",
                     "report_to": "comet"})  # fmt: skip
    with pytest.raises(ConfigError, match=r"sft.trainer_kwargs.report_to: set by the platform"):
        load_config({"stage": "sft", "output_dir": "o", "model": "m", "dataset": "d",
                     "trainer_kwargs": {"report_to": "tensorboard"}})  # fmt: skip


# --- End to end through the launch service, on snapshots the platform built -------------------


@pytest.fixture
def platform_snapshots(users, make_user):
    """A prompts snapshot and a kto snapshot built by the snapshot builder from the project's
    prompts, its seeded responses and ratings given through the labeling service."""
    from annotation import services
    from annotation.exports import snapshot_build, snapshot_request
    from annotation.models import Response, Role, TaskKind

    project = users["project"]
    raters = [make_user(f"rater{i}") for i in range(2)]
    for rater in raters:
        services.membership_set(project=project, user=rater, role=Role.LABELER)
    for i, response in enumerate(Response.objects.filter(prompt__project=project).order_by("pk")):
        task = services.task_create(project=project, kind=TaskKind.RATE, prompt=response.prompt,
                                    candidates=[response], required=2)  # fmt: skip
        score = 7 if i % 2 else 1  # thumbs up on every other response
        for rater in raters:
            judge(task, rater, {"score": score, "flags": []})

    def build(kind):
        request = snapshot_request(project=project, kind=kind, filters={"test_size": 0},
                                   enqueue=False)  # fmt: skip
        return snapshot_build(snapshot=request)

    return {"prompts": build("prompts"), "kto": build("kto")}


def _launch_and_execute(users, *, stage, preset, snapshot, parent, reward=None, **config):
    from training import execution, runs
    from training.presets import preset_config

    cfg = {k: v for k, v in preset_config(preset).items() if k != "stage"}
    cfg.update(max_steps=2, save_steps=1, **config)
    run = runs.run_launch(stage=stage, config=cfg, snapshots=[snapshot], parent=parent,
                          reward=reward, user=users["owner"], preset=preset)  # fmt: skip
    assert execution.run_execute(run_id=run.pk, worker="here") == "succeeded", run.pk
    run.refresh_from_db()
    return run


@pytest.mark.django_db
@pytest.mark.usefixtures("data_dir")
@pytest.mark.parametrize(("stage", "preset"), [("grpo", "grpo-cpu"), ("rloo", "rloo-cpu")])
def test_online_rl_runs_end_to_end_from_the_launch_service(
    tiny, users, platform_snapshots, stage, preset, client
):
    from training import selectors
    from training.models import ModelArtifact

    project = users["project"]
    parent = base_artifact(tiny["policy"], project=project)
    reward = ModelArtifact.objects.create(name="rm", stage="reward", path=tiny["reward"],
                                          project=project)  # fmt: skip
    snapshot = platform_snapshots["prompts"]
    assert snapshot.row_count == 2

    run = _launch_and_execute(users, stage=stage, preset=preset, snapshot=snapshot,
                              parent=parent, reward=reward, report_to="tensorboard",
                              reward_rules=[{"name": "length_limit", "max_chars": 40}])  # fmt: skip

    assert run.status == "succeeded" and run.step == 2 and run.checkpoint_step >= 1
    assert run.config["reward_model"] == reward.path and run.config["prompts"] == snapshot.path
    artifact = ModelArtifact.objects.get(run=run)
    assert artifact.stage == stage and artifact.parent == parent
    assert list(artifact.snapshots.all()) == [snapshot]
    # The run page charts the rewards and the KL.
    series = selectors.run_series(run)
    assert "rewards/length_limit/mean" in series["reward"] and "kl" in series["kl"]
    client.force_login(users["owner"])
    page = client.get(f"/training/runs/{run.pk}/").content.decode()
    assert "rewards/reward/mean" in page
    # report_to: tensorboard wrote into the run's folder, and the page links the files.
    assert _events_in(Path(run.output_dir) / "tensorboard")
    assert f"/training/runs/{run.pk}/tensorboard/" in page
    archive = client.get(f"/training/runs/{run.pk}/tensorboard/")
    assert archive.status_code == 200 and archive["Content-Type"] == "application/gzip"
    client.force_login(users["outsider"])
    assert client.get(f"/training/runs/{run.pk}/tensorboard/").status_code == 404


@pytest.mark.django_db
@pytest.mark.usefixtures("data_dir")
def test_kto_runs_end_to_end_on_the_ratings_labelers_gave(tiny, users, platform_snapshots):
    from training.models import ModelArtifact

    snapshot = platform_snapshots["kto"]
    rows = [json.loads(line) for line in (Path(snapshot.path) / "train.jsonl").open()]
    assert {r["label"] for r in rows} == {True, False}
    parent = base_artifact(tiny["policy"], project=users["project"])

    run = _launch_and_execute(users, stage="kto", preset="kto-cpu", snapshot=snapshot,
                              parent=parent, per_device_train_batch_size=2)  # fmt: skip

    assert run.status == "succeeded" and run.step == 2
    artifact = ModelArtifact.objects.get(run=run)
    assert artifact.stage == "kto" and "KTO policy" in artifact.model_card
    assert run.points.filter(values__has_key="rewards/margins").exists()


@pytest.mark.django_db
def test_the_launch_form_offers_the_new_stages_and_their_presets(client, users):
    client.force_login(users["owner"])
    page = client.get("/admin/training/trainingrun/launch/?preset=grpo-cpu").content.decode()
    for option in ('value="grpo"', 'value="rloo"', 'value="kto"', 'value="kto-cpu"'):
        assert option in page, option
    assert "num_generations: 4" in page, "the preset pre-fills the config"
