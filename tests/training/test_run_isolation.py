"""Tenant isolation of training: an engineer of project alpha trains, samples and registers
models only with alpha's data and models, never writes or reads another project's folders, and
people below engineer only read. Project beta belongs to `outsider`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse
from runs_testutils import FAST, base_artifact, snapshot_row

from annotation import services as annotation_services
from annotation.models import Role
from training import artifacts, generation, runs, selectors
from training.engine import ConfigError, load_config
from training.forms import GenerateForm, LaunchForm
from training.models import GenerationJob, ModelArtifact, TrainingRun

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("data_dir")]

LAUNCH = "admin:training_trainingrun_launch"


def _launch(client, snapshot, parent, config: str, **extra):
    """POST the launch form as an engineer fills it; the response and its form errors."""
    response = client.post(reverse(LAUNCH), {"stage": "sft", "snapshot": snapshot.pk,
                                             "parent": parent.pk if parent else "", "config": config,
                                             "launch": "Launch", **extra})  # fmt: skip
    form = response.context["form"] if response.context else None
    return response, (form.errors if form is not None else {})


def _fast_yaml(**more) -> str:
    return "".join(f"{k}: {v}\n" for k, v in {**FAST, **more}.items())


def _beta_run_folder(users, data_dir) -> Path:
    """The output folder of a run of project beta, with a model in it."""
    run = TrainingRun.objects.create(project=users["other"], stage="sft", status="succeeded")
    folder = Path(data_dir) / "runs" / str(run.pk)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def curator(make_user, users):
    user = make_user("curator", is_staff=True)
    annotation_services.membership_set(project=users["project"], user=user, role=Role.CURATOR)
    return user


# --- 1. Paths in the config are the platform's -----------------------------------------------


def test_it_refuses_trainer_kwargs_that_name_a_place_or_are_not_on_the_list(
    client, sft_inputs, users
):
    """Hole: `trainer_kwargs.output_dir` was handed to the trainer, which wrote checkpoints
    wherever it said. Now such keys are refused naming `<stage>.trainer_kwargs.<key>`."""
    snapshot, parent = sft_inputs
    client.force_login(users["owner"])

    for key, value in [("output_dir", "/tmp/elsewhere"), ("logging_dir", "/tmp/logs"),
                       ("resume_from_checkpoint", "/tmp/ckpt"), ("push_to_hub", "true"),
                       ("deepspeed", "/tmp/ds.json"), ("report_to", "wandb")]:  # fmt: skip
        response, errors = _launch(
            client, snapshot, parent, _fast_yaml() + f"trainer_kwargs:\n  {key}: {value}\n"
        )
        assert response.status_code == 200
        assert errors["config"] == [
            f"sft.trainer_kwargs.{key}: set by the platform, not by a config; remove it"
        ]
    response, errors = _launch(client, snapshot, parent, _fast_yaml() + "output_dir: /tmp/x\n")
    assert errors["config"][0].startswith("sft.output_dir: set by the platform")
    assert not TrainingRun.objects.exists()
    with pytest.raises(ConfigError, match=r"dpo\.trainer_kwargs\.bogus: not an allowed option"):
        load_config({"stage": "dpo", "output_dir": "o", "dataset": "d", "model": "m",
                     "trainer_kwargs": {"bogus": 1}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"sft\.trainer_kwargs\.adam_beta1: expected a number"):
        load_config({"stage": "sft", "output_dir": "o", "dataset": "d", "model": "m",
                     "trainer_kwargs": {"adam_beta1": "high"}})  # fmt: skip

    response, _ = _launch(
        client, snapshot, parent, _fast_yaml() + "trainer_kwargs:\n  adam_beta2: 0.95\n"
    )

    run = TrainingRun.objects.get()
    assert response.status_code == 302
    assert run.config["trainer_kwargs"] == {"adam_beta2": 0.95}
    assert run.output_dir == str(runs.run_output_dir(run.pk))


# --- 2. YAML: no aliases, a bounded size ----------------------------------------------------


def test_it_refuses_yaml_anchors_and_aliases_and_oversized_configs(client, sft_inputs, users):
    """Hole: 359 bytes of nested aliases were stored as a 1.36 MB config. Now an anchor or an
    alias is refused naming its line, and a config over 64 KB is refused before parsing."""
    snapshot, parent = sft_inputs
    client.force_login(users["owner"])
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    assert len(bomb) < 400

    _, errors = _launch(client, snapshot, parent, _fast_yaml() + bomb)

    assert errors["config"] == [
        f"config: line {len(FAST) + 1}, column 4: invalid YAML (anchors and aliases (& and *) "
        "are not accepted; write the values out)"
    ]
    _, errors = _launch(client, snapshot, parent, "seed: 1\nbase: {max_steps: 2}\n<<: *b\n")
    assert errors["config"][0].startswith("config: line 3, column 5: invalid YAML (anchors")
    _, errors = _launch(client, snapshot, parent, _fast_yaml() + "# " + "x" * 70_000 + "\n")
    assert errors["config"][0].endswith("bytes is more than the 64 KB a config may have")
    assert not TrainingRun.objects.exists()


# --- 3. Typed model paths: the project's artifacts, a hub name, a shared models folder ------


def test_it_refuses_a_typed_model_path_that_is_not_a_model_of_the_project(
    client, settings, tiny, sft_inputs, users, data_dir
):
    """Hole: a typed `model:` was only checked to be a directory, so an engineer of alpha trained
    from beta's run folder. Now a local path is refused unless it is an artifact of the run's
    project or inside TRAINING_MODEL_DIRS; a hub name passes."""
    snapshot, parent = sft_inputs
    beta_folder = _beta_run_folder(users, data_dir)
    other_snapshot = snapshot_row(users["other"], "preference", tiny["snap_preference"])
    client.force_login(users["owner"])
    config = _fast_yaml()

    for key, value, expected in [
        ("model", beta_folder, f"sft.model: {beta_folder} is not a model of this project"),
        ("tokenizer", beta_folder, f"sft.tokenizer: {beta_folder} is not a model of this"),
        ("model", tiny["reward"], f"sft.model: {tiny['reward']} is not a model of this project"),
        ("chat_template", f"{beta_folder}/config.json", "sft.chat_template: "),
        ("model", "../data/runs/1", "sft.model: '../data/runs/1': give an absolute path"),
    ]:
        chosen = None if key == "model" else parent  # a typed model replaces the parent
        _, errors = _launch(client, snapshot, chosen, config + f"{key}: {value}\n")
        assert errors.get("config", [""])[0].startswith(expected), (key, value, errors)
    # Data is a chosen snapshot: a typed dataset path, with no snapshot chosen, is refused.
    response = client.post(reverse(LAUNCH), {"stage": "sft", "launch": "Launch",
                                             "parent": parent.pk,
                                             "config": f"dataset: {other_snapshot.path}\n"})  # fmt: skip
    assert response.context["form"].errors["config"] == [
        "sft.dataset: choose a snapshot of your project (a run belongs to the project of its "
        "data); a typed path is not accepted"
    ]
    assert not TrainingRun.objects.filter(project=users["project"]).exists()
    # The path of the project's own artifact, typed, is that artifact: accepted.
    response, _ = _launch(client, snapshot, None, config + f"model: {parent.path}\n")
    assert response.status_code == 302
    # A hub name is no local path; a shared models folder is listed in the settings.
    response, _ = _launch(client, snapshot, None, config + "model: org/base-model\nseed: 2\n")
    assert response.status_code == 302
    settings.TRAINING_MODEL_DIRS = [Path(tiny["root"])]
    response, _ = _launch(client, snapshot, None, config + f"model: {tiny['reward']}\nseed: 3\n")
    assert response.status_code == 302
    alpha_runs = TrainingRun.objects.filter(project=users["project"])
    assert sorted(r.config["model"] for r in alpha_runs) == sorted(
        [parent.path, "org/base-model", tiny["reward"]]
    )


def test_the_ppo_reward_model_and_dpo_reference_obey_the_same_rule(
    tiny, sft_inputs, users, data_dir
):
    """Reward and reference models are models too: beta's folder is refused for each."""
    _, parent = sft_inputs
    beta_folder = str(_beta_run_folder(users, data_dir))
    pairs = snapshot_row(users["project"], "preference", tiny["snap_preference"])
    with pytest.raises(ConfigError, match=r"^dpo\.ref_model: .* is not a model of this project"):
        runs.run_launch(stage="dpo", config={**FAST, "ref_model": beta_folder},
                        snapshots=[pairs], parent=parent, user=users["owner"])  # fmt: skip
    prompts = snapshot_row(users["project"], "prompts", tiny["snap_prompts"])
    with pytest.raises(ConfigError, match=r"^ppo\.reward_model: .* is not a model of this"):
        runs.run_launch(stage="ppo", config={**FAST, "reward_model": beta_folder},
                        snapshots=[prompts], parent=parent, user=users["owner"])  # fmt: skip
    beta_model = base_artifact(tiny["reward"], name="beta-rm", project=users["other"])
    with pytest.raises(ConfigError, match="reward: beta-rm .* is a model of another project"):
        runs.run_launch(stage="ppo", config=FAST, snapshots=[prompts], parent=parent,
                        reward=beta_model, user=users["owner"])  # fmt: skip
    assert not TrainingRun.objects.filter(project=users["project"]).exists()


# --- 4. Model artifacts belong to a project ------------------------------------------------


def test_an_artifact_is_registered_only_inside_its_projects_folders(
    settings, tiny, users, curator, data_dir
):
    """Hole: anyone with the admin's add permission registered any path as a model, and models
    no run produced were shown to every project. Now the service asks for an engineer, keeps
    the path in DATA_DIR (a run folder of the same project) or TRAINING_MODEL_DIRS, resolving
    `..` and symlinks, and keeps the parent in the project."""
    alpha, owner = users["project"], users["owner"]
    beta_folder = _beta_run_folder(users, data_dir)
    alpha_run = TrainingRun.objects.create(project=alpha, stage="sft", status="succeeded")
    alpha_folder = Path(data_dir) / "runs" / str(alpha_run.pk)
    alpha_folder.mkdir(parents=True)
    (alpha_folder / "sneaky").symlink_to(beta_folder)

    def refused(path: str, **extra) -> dict:
        with pytest.raises(ValidationError) as exc:
            artifacts.artifact_register(project=alpha, name="m", stage="sft", path=path,
                                        user=owner, **extra)  # fmt: skip
        return exc.value.message_dict

    assert "not a run of this project" in refused(str(beta_folder))["path"][0]
    assert (
        "not a run of this project" in refused(f"{alpha_folder}/../{beta_folder.name}")["path"][0]
    )
    assert "not a run of this project" in refused(str(alpha_folder / "sneaky"))["path"][0]
    assert "inside DATA_DIR an artifact is the folder" in refused(str(data_dir))["path"][0]
    assert "TRAINING_MODEL_DIRS" in refused(tiny["policy"])["path"][0]
    beta_model = base_artifact(tiny["policy"], name="beta-base", project=users["other"])
    errors = refused(str(alpha_folder), parent=beta_model)
    assert errors == {"parent": ["beta-base (Base pretraining) belongs to another project"]}
    with pytest.raises(PermissionDenied):
        artifacts.artifact_register(project=alpha, name="m", stage="sft", path="org/m",
                                    user=curator)  # fmt: skip
    assert ModelArtifact.objects.count() == 1

    own = artifacts.artifact_register(project=alpha, name="ours", stage="sft",
                                      path=str(alpha_folder), user=owner)  # fmt: skip
    hub = artifacts.artifact_register(project=alpha, name="hub", stage="pretrain",
                                      path="org/base", user=owner)  # fmt: skip
    settings.TRAINING_MODEL_DIRS = [Path(tiny["root"])]
    shared = artifacts.artifact_register(project=alpha, name="shared", stage="pretrain",
                                         path=tiny["policy"], parent=hub, user=owner)  # fmt: skip
    assert {a.project for a in (own, hub, shared)} == {alpha}
    with pytest.raises(ValidationError) as exc:
        artifacts.artifact_update(artifact=own, user=owner, path=str(beta_folder))
    assert "path" in exc.value.message_dict
    with pytest.raises(PermissionDenied):
        artifacts.artifact_update(artifact=own, user=users["outsider"], name="mine now")
    assert artifacts.artifact_update(artifact=own, user=owner, name="renamed").name == "renamed"
    # Each project's staff see their own models only, registered ones included.
    assert set(selectors.artifacts_for(users["outsider"])) == {beta_model}
    assert set(selectors.artifacts_for(curator)) == {own, hub, shared}


def test_the_artifact_admin_saves_through_the_service(client, users, data_dir):
    """The admin's add form refuses a path into beta's run folder on the `path` field, and
    offers only projects where the user is an engineer."""
    beta_folder = _beta_run_folder(users, data_dir)
    alpha_run = TrainingRun.objects.create(project=users["project"], stage="sft")
    alpha_folder = Path(data_dir) / "runs" / str(alpha_run.pk)
    client.force_login(users["owner"])
    add = reverse("admin:training_modelartifact_add")
    form = {"project": users["project"].pk, "name": "m", "stage": "sft"}

    response = client.post(add, {**form, "path": str(beta_folder)})

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "not a run of this project" in errors["path"][0]
    response = client.post(add, {**form, "project": users["other"].pk, "path": "org/m"})
    assert "project" in response.context["adminform"].form.errors
    assert not ModelArtifact.objects.exists()

    response = client.post(add, {**form, "path": str(alpha_folder)})

    assert response.status_code == 302
    artifact = ModelArtifact.objects.get()
    assert (artifact.project, artifact.path) == (users["project"], str(alpha_folder))
    change = reverse("admin:training_modelartifact_change", args=[artifact.pk])
    response = client.post(change, {**form, "name": "m2", "path": str(beta_folder)})
    assert "path" in response.context["adminform"].form.errors
    assert ModelArtifact.objects.get().path == str(alpha_folder)


def test_a_runs_model_made_its_own_ancestor_is_a_form_error(client, users, data_dir):
    """A run's model (project and path read-only) given itself, or its own child, as parent:
    the change form names `parent` (the service's refusal was a 500) and nothing changes."""
    run = TrainingRun.objects.create(project=users["project"], stage="sft")
    folder = str(Path(data_dir) / "runs" / str(run.pk))
    model = ModelArtifact.objects.create(
        project=users["project"], run=run, name="m", stage="sft", path=folder
    )
    child = ModelArtifact.objects.create(
        project=users["project"], name="c", stage="reward", path="org/c", parent=model
    )
    client.force_login(users["owner"])
    change = reverse("admin:training_modelartifact_change", args=[model.pk])

    for parent in (model, child):
        response = client.post(change, {"name": "m", "stage": "sft", "parent": parent.pk})

        assert response.status_code == 200
        assert "descend from itself" in str(response.context["adminform"].form.errors)
    assert ModelArtifact.objects.get(pk=model.pk).parent is None


def test_a_model_generates_only_into_its_own_project(client, tiny, users):
    """Hole: the generate page offered every staff project, so beta's model sampled into
    alpha (and any staff member could start it). Now only the model's project, by its
    engineers."""
    beta_model = base_artifact(tiny["policy"], name="beta-base", project=users["other"])
    alpha_model = base_artifact(tiny["policy"], name="alpha-base", project=users["project"])
    alpha = users["project"]
    with pytest.raises(ValidationError) as exc:
        generation.generation_job_create(project=alpha, artifact=beta_model,
                                         prompts=list(alpha.prompts.all()), user=users["owner"])  # fmt: skip
    assert "project" in exc.value.message_dict
    form = GenerateForm(user=users["outsider"], artifact=beta_model)
    assert list(form.fields["project"].queryset) == [users["other"]]
    client.force_login(users["owner"])
    assert client.get(reverse("training:generate", args=[beta_model.pk])).status_code == 404
    response = client.post(reverse("training:generate", args=[alpha_model.pk]),
                           {"project": users["other"].pk, "limit": 1, "k": 2, "temperature": 1,
                            "top_p": 0.9, "max_new_tokens": 4, "seed": 0, "round": 2})  # fmt: skip
    assert "project" in response.context["form"].errors
    assert not GenerationJob.objects.exists()


# --- 5. Run pages and actions by role ------------------------------------------------------


def test_curators_read_runs_and_engineers_change_them(client, sft_inputs, users, curator):
    """Hole: the run pages asked only for the staff flag. Now a curator of the run's project
    reads the run page but gets 403 on cancel, resume, re-run, the workers page and generation;
    the launch form offers only projects where the user is an engineer."""
    snapshot, parent = sft_inputs
    run = runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent)
    TrainingRun.objects.filter(pk=run.pk).update(status="failed")
    client.force_login(curator)

    assert client.get(reverse("training:run", args=[run.pk])).status_code == 200
    assert client.get(reverse("training:run_live", args=[run.pk])).status_code == 200
    for name in ("run_cancel", "run_resume", "run_rerun"):
        assert client.post(reverse(f"training:{name}", args=[run.pk])).status_code == 403
    assert client.get(reverse("training:workers")).status_code == 403
    assert client.get(reverse(LAUNCH)).status_code == 403
    assert client.get(reverse("training:generate", args=[parent.pk])).status_code == 403
    assert TrainingRun.objects.count() == 1 and not GenerationJob.objects.exists()

    client.force_login(users["owner"])
    assert client.post(reverse("training:run_rerun", args=[run.pk])).status_code == 302
    assert TrainingRun.objects.count() == 2
    assert client.get(reverse("training:workers")).status_code == 200


def test_the_launch_form_keeps_snapshots_and_models_in_the_chosen_project(
    tiny, sft_inputs, users, make_user
):
    """A snapshot or model of another project than the chosen one is a form error; choices are
    those of projects where the user is an engineer."""
    snapshot, parent = sft_inputs
    both = make_user("both", is_staff=True)
    annotation_services.membership_set(project=users["project"], user=both, role=Role.ENGINEER)
    annotation_services.membership_set(project=users["other"], user=both, role=Role.ENGINEER)
    form = LaunchForm({"stage": "sft", "project": users["other"].pk, "snapshot": snapshot.pk,
                       "parent": parent.pk}, user=both)  # fmt: skip
    assert not form.is_valid()
    assert form.errors["snapshot"] == [
        f"{snapshot} is a snapshot of {users['project']}, not of {users['other']}"
    ]
    assert form.errors["parent"] == [
        f"{parent} is a model of another project, not of {users['other']}"
    ]
    outsider_form = LaunchForm(user=users["outsider"])
    assert list(outsider_form.fields["project"].queryset) == [users["other"]]
    assert snapshot not in outsider_form.fields["snapshot"].queryset
    assert parent not in outsider_form.fields["parent"].queryset


# --- 6. The demo report ----------------------------------------------------------------------


def test_the_demo_report_is_for_the_demo_projects_staff(client, settings, tmp_path, users, curator):
    """Hole: any staff member of any project read the demo report. Now curators and above of
    the project its report.json names (and superusers)."""
    settings.VAR_DIR = tmp_path
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "report.html").write_text("<h1>demo</h1>")
    project = users["project"]
    (tmp_path / "demo" / "report.json").write_text(
        f'{{"project": {{"id": {project.pk}, "slug": "{project.slug}"}}}}'
    )
    client.force_login(users["outsider"])  # staff, engineer of another project
    assert client.get("/training/demo/report/").status_code == 403
    assert client.get("/training/demo/report.json").status_code == 403
    client.force_login(curator)
    assert client.get("/training/demo/report/").status_code == 200
    assert client.get("/training/demo/report.json").status_code == 200
    os.remove(tmp_path / "demo" / "report.json")  # no project named: superusers only
    assert client.get("/training/demo/report/").status_code == 403
