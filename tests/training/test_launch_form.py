"""The launch form in its own words (issue 21, part 4): the snapshot's kind checked against the
stage before an estimate or a launch, option labels that tell two snapshots (or models) apart,
a config key of another stage refused by name, and actions offered only where they make sense
(a reward model writes no text: no "Generate candidates", round or arena from it)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from runs_testutils import admin_action, base_artifact, messages_of, snapshot_row

from training import arena, generation, rounds, runs
from training.engine import ConfigError
from training.forms import BattleSetForm
from training.models import GenerationJob, ModelArtifact, TrainingRun

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("data_dir")]

LAUNCH = "admin:training_trainingrun_launch"


@pytest.fixture
def models(tiny, users):
    policy = base_artifact(tiny["policy"], name="policy", project=users["project"])
    rm = ModelArtifact.objects.create(name="rm", stage="reward", path=tiny["reward"],
                                      parent=policy, project=users["project"])  # fmt: skip
    return policy, rm


def _post(client, data: dict, button: str):
    response = client.post(reverse(LAUNCH), {**data, button: button})
    assert response.status_code == 200
    return response


@pytest.mark.parametrize("button", ["estimate", "launch"])
def test_a_snapshot_of_the_wrong_kind_is_refused_under_snapshot_before_estimate_and_launch(
    client, tiny, users, models, button
):
    """Kills mutations: the kind check only on launch (an estimate of PPO on preference pairs
    went through), or said under Config; fill_inputs not checking the kind (the API's path)."""
    policy, rm = models
    demos = snapshot_row(users["project"], "sft", tiny["snap_sft"])
    client.force_login(users["owner"])

    response = _post(client, {"stage": "ppo", "snapshot": demos.pk, "parent": policy.pk,
                              "reward": rm.pk}, button)  # fmt: skip

    errors = response.context["form"].errors
    assert list(errors) == ["snapshot"]
    assert errors["snapshot"] == [
        f"PPO trains on a prompts or preference snapshot; #{demos.pk} {demos} is a sft snapshot"
    ]
    assert response.context["estimate"] is None  # no estimate of a launch that cannot run
    page = response.content.decode()
    assert 'id="errors-snapshot"' in page and 'id="errors-config"' not in page
    assert not TrainingRun.objects.exists()
    with pytest.raises(
        ConfigError,
        match=r"^ppo\.prompts: snapshot kind 'sft' does not fit stage 'ppo': it trains on a prompts or preference",
    ):
        runs.run_launch(stage="ppo", config={}, snapshots=[demos], parent=policy, reward=rm)


def test_sft_without_a_parent_says_to_choose_a_base_model_and_pretraining_may_start_from_scratch(
    client, tiny, users
):
    """Kills mutations: the parent check applied to pretraining (which trains from scratch), or
    SFT's missing model left to the engine (`sft.model: required` under Config)."""
    demos = snapshot_row(users["project"], "sft", tiny["snap_sft"])
    corpus = snapshot_row(users["project"], "pretrain", tiny["snap_pretrain"])
    client.force_login(users["owner"])

    errors = (
        _post(client, {"stage": "sft", "snapshot": demos.pk}, "estimate").context["form"].errors
    )

    assert list(errors) == ["parent"]
    assert "SFT starts from a model: choose a base model" in errors["parent"][0]
    assert "only pretraining starts from scratch" in errors["parent"][0]
    scratch = _post(client, {"stage": "pretrain", "snapshot": corpus.pk,
                             "config": "max_steps: 1"}, "estimate")  # fmt: skip
    assert scratch.context["form"].errors == {}
    assert scratch.context["estimate"]["known"] is True
    help_text = scratch.context["form"].fields["parent"].help_text
    assert "Only pretraining may leave it empty" in help_text


def test_two_snapshots_of_the_same_data_and_two_models_of_one_name_have_distinct_labels(
    client, tiny, users, models
):
    """Kills mutations: the snapshot options labelled by `str()` (two `alpha/sft@<sha>` alike),
    a model's label without its id or without saying it is a base model."""
    first = snapshot_row(users["project"], "sft", tiny["snap_sft"])
    second = snapshot_row(users["project"], "sft", tiny["snap_sft"])
    assert str(first) == str(second)
    twin = base_artifact(tiny["policy"], name="policy", project=users["project"])
    client.force_login(users["owner"])

    form = client.get(reverse(LAUNCH)).context["form"]

    snapshots = [label for value, label in form.fields["snapshot"].choices if value]
    assert len(snapshots) == len(set(snapshots)) == 2
    assert f"#{first.pk} {first} · Supervised fine-tuning · 40 rows · " in " ".join(snapshots)
    parents = dict((int(str(v)), label) for v, label in form.fields["parent"].choices if v)
    assert len(set(parents.values())) == len(parents) == 3
    assert parents[twin.pk].startswith(f"#{twin.pk} policy · base model · alpha · ")
    assert " · Reward model · " in parents[models[1].pk]


def test_a_preset_or_config_key_of_another_stage_is_refused_naming_it(client, tiny, users, models):
    """Kills mutations: the preset's stage not compared with the form's; the keys of another
    stage's preset left to the engine's first `unknown key` (one at a time, under no name)."""
    policy, _ = models
    demos = snapshot_row(users["project"], "sft", tiny["snap_sft"])
    client.force_login(users["owner"])
    ppo_preset = client.get(reverse(LAUNCH), {"preset": "ppo"}).context["form"].initial["config"]

    errors = _post(client, {"stage": "sft", "preset": "ppo", "snapshot": demos.pk,
                            "parent": policy.pk, "config": ppo_preset}, "launch").context[
        "form"
    ].errors  # fmt: skip

    assert errors["preset"] == [
        "'PPO against a reward model' is a preset of PPO, not of SFT: choose a preset of SFT "
        "or none"
    ]
    (said,) = errors["config"]
    assert said.startswith("sft: kl_coef, response_length, ") and "are not options of SFT" in said
    assert "learning_rate" not in said  # an option SFT has too
    assert not TrainingRun.objects.exists()


def test_a_reward_model_offers_no_generation_round_or_arena(client, tiny, users, models):
    """Kills mutations: generate_from, start_next_round or arena_from redirecting for a reward
    model; its generate page rendering a form; the run page of a reward run linking to it."""
    policy, rm = models
    client.force_login(users["owner"])

    for action in ("generate_from", "start_next_round"):
        response = admin_action(client, "training_modelartifact", action, [rm])
        assert response["Location"] == reverse("admin:training_modelartifact_changelist")
        said = messages_of(response)[-1]  # (the last action's message is still unread)
        assert said.startswith("rm (Reward model) is a reward model: it scores responses")
    response = admin_action(client, "training_modelartifact", "arena_from", [policy, rm])
    assert "cannot battle" in messages_of(response)[-1]
    for name in ("training:generate", "training:round_start"):
        response = client.get(reverse(name, args=[rm.pk]))
        assert response["Location"] == reverse("admin:training_modelartifact_change", args=[rm.pk])
    # A policy still offers it.
    ok = admin_action(client, "training_modelartifact", "generate_from", [policy])
    assert ok["Location"] == reverse("training:generate", args=[policy.pk])

    for artifact, shown in ((rm, False), (policy, True)):
        run = TrainingRun.objects.create(project=users["project"], stage=artifact.stage,
                                         status="succeeded")  # fmt: skip
        ModelArtifact.objects.filter(pk=artifact.pk).update(run=run)
        page = client.get(reverse("training:run", args=[run.pk])).content.decode()
        assert ("Generate candidates for labelers" in page) is shown, artifact


def test_the_services_refuse_a_reward_model_to_generate_round_or_battle(users, models):
    """Kills mutations: generation_job_create, round_start or battle_set_create accepting a
    reward model (what the pages hide, the services refuse: the API and the shell too)."""
    policy, rm = models
    project = users["project"]
    prompts = list(project.prompts.all())

    with pytest.raises(ValidationError) as error:
        generation.generation_job_create(project=project, artifact=rm, prompts=prompts, k=2)
    assert "is a reward model" in error.value.message_dict["artifact"][0]
    with pytest.raises(ValidationError) as error:
        rounds.round_start(policy=rm, budget=1)
    assert "cannot start a round" in error.value.message_dict["policy"][0]
    with pytest.raises(ValidationError) as error:
        arena.battle_set_create(project=project, artifacts=[policy, rm], prompts=prompts)
    assert "cannot battle" in error.value.message_dict["artifacts"][0]
    assert list(BattleSetForm(project=project).fields["artifacts"].queryset) == [policy]
    assert not GenerationJob.objects.exists()


def test_a_new_team_finds_a_first_try_sft_preset_that_a_cpu_trains_in_minutes(
    client, tiny, users, models
):
    """The launch form had no small SFT preset for a first run: only epochs over a real
    snapshot at max_length 1024. "SFT — first try" is listed, passes presets_check, and
    trains the tiny policy to the end here on the CPU, as launched from the form."""
    from training import execution
    from training.presets import PRESETS, presets_check

    preset = PRESETS["sft-first-try"]
    presets_check({"sft-first-try": preset})
    assert preset["stage"] == "sft" and preset["config"]["max_steps"] <= 50
    policy, _ = models
    demos = snapshot_row(users["project"], "sft", tiny["snap_sft"])
    client.force_login(users["owner"])

    page = client.get(reverse(LAUNCH), {"preset": "sft-first-try", "snapshot": demos.pk,
                                        "parent": policy.pk})  # fmt: skip

    assert '<option value="sft-first-try" selected>SFT — first try (CPU, minutes)</option>' in (
        page.content.decode()
    )
    listed = client.get(reverse(LAUNCH)).content.decode()
    assert '<option value="sft-first-try">SFT — first try (CPU, minutes)</option>' in listed
    launched = client.post(reverse(LAUNCH), {**page.context["form"].initial,
                                             "launch": "Launch"})  # fmt: skip
    run = TrainingRun.objects.get()
    assert launched.status_code == 302, page.context["form"].errors
    assert (run.stage, run.preset) == ("sft", "sft-first-try")
    assert execution.run_execute(run_id=run.pk, worker="here") == "succeeded"
    run.refresh_from_db()
    assert run.status == "succeeded" and run.step == preset["config"]["max_steps"]
    assert ModelArtifact.objects.get(run=run).stage == "sft"
