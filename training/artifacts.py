"""Model artifacts that engineers register, and where training may read a model from.

A model is read (trained from, sampled from) only through an artifact of the project the work
belongs to, or by hub name. An artifact's path is a hub name (`org/name`), or a folder inside
MODELS_DIR, DATA_DIR or one of TRAINING_MODEL_DIRS; inside DATA_DIR, only the folder of a run of its own
project (or a folder below it), so no project can reach another's runs through an artifact.
Runs' own artifacts are written by `runs.artifact_create_for_run`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from annotation.access import role_require
from annotation.models import Project, Role
from training.models import ModelArtifact, Stage, TrainingRun

# `gpt2`, `org/name`: what the hub accepts as a repository id. A value of this shape that
# exists as a local path is a path, not a hub name (transformers would load the local folder).
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def is_hub_name(value: str) -> bool:
    return (
        bool(_HUB_NAME.fullmatch(value))
        and ".." not in value
        and not os.path.lexists(os.path.expanduser(value))
    )


def _real(value: str | Path) -> Path:
    """The path with `~`, `..` and symlinks resolved (what the worker will actually open)."""
    return Path(value).expanduser().resolve()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def model_roots() -> list[Path]:
    """The shared model folders of TRAINING_MODEL_DIRS, resolved."""
    return [_real(d) for d in getattr(settings, "TRAINING_MODEL_DIRS", [])]


def models_dir() -> Path:
    """The platform's models folder (MODELS_DIR), resolved: base models registered from the
    admin live there, whether copied in by hand or fetched from the hub."""
    return _real(settings.MODELS_DIR)


def _run_of_folder(real: Path) -> int | None:
    """The run id when `real` is DATA_DIR/runs/<id> or a folder below it."""
    runs_root = _real(settings.DATA_DIR) / "runs"
    if real == runs_root or not _inside(real, runs_root):
        return None
    first = real.relative_to(runs_root).parts[0]
    return int(first) if first.isdigit() else None


def artifact_path_check(path: str, *, project: Project | None) -> str:
    """`path` when an artifact of `project` may point there; a ValidationError naming `path`
    otherwise (see the module docstring for the rule)."""
    path = (path or "").strip()
    if not path:
        raise ValidationError({"path": "a folder or a hub name (org/name) is required"})
    if is_hub_name(path):
        return path
    if not os.path.isabs(os.path.expanduser(path)):
        raise ValidationError({"path": f"{path!r}: give an absolute folder or a hub name"})
    real = _real(path)
    data = _real(settings.DATA_DIR)
    if _inside(real, models_dir()):  # shared by every project, like TRAINING_MODEL_DIRS
        return path
    if _inside(real, data):
        run_id = _run_of_folder(real)
        if run_id is None:
            raise ValidationError(
                {"path": f"{path}: inside DATA_DIR an artifact is the folder of one of its "
                 "project's runs (DATA_DIR/runs/<id>)"}
            )  # fmt: skip
        if project is None or not TrainingRun.objects.filter(pk=run_id, project=project).exists():
            raise ValidationError(
                {"path": f"{path}: the folder of run #{run_id}, which is not a run of this project"}
            )
        return path
    if any(_inside(real, root) for root in model_roots()):
        return path
    raise ValidationError(
        {"path": f"{path}: an artifact lives inside DATA_DIR or a TRAINING_MODEL_DIRS folder "
         "(or is a hub name such as org/name)"}
    )  # fmt: skip


def _parent_check(parent: ModelArtifact | None, project: Project | None) -> None:
    if parent is not None and (project is None or parent.project_id != project.pk):
        raise ValidationError({"parent": f"{parent} belongs to another project"})


def artifact_inputs_check(
    *,
    project: Project | None,
    path: str | None,
    parent: ModelArtifact | None,
    check_parent: bool = True,
) -> None:
    """The path and parent rules of an artifact of `project`, every error at once (`path`
    None, `check_parent` False: that one is unchanged and not checked again)."""
    errors: dict[str, list[str]] = {}
    checks = []
    if path is not None:
        checks.append(lambda: artifact_path_check(path, project=project))
    if check_parent:
        checks.append(lambda: _parent_check(parent, project))
    for check in checks:
        try:
            check()
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)


def artifact_changes_check(
    *, artifact: ModelArtifact | None, project: Project | None, path: str, parent, changed
) -> None:
    """`artifact_inputs_check` of a new artifact (`artifact` None), or of the fields `changed`
    of an existing one: a path or parent is checked when it or the project changes."""
    changed = set(changed)
    new = artifact is None or artifact.pk is None
    if not new and parent is not None and "parent" in changed:
        if artifact.pk in {a.pk for a in parent.lineage()}:
            raise ValidationError({"parent": "a model cannot descend from itself"})
    artifact_inputs_check(
        project=project,
        path=path if new or changed & {"path", "project"} else None,
        parent=parent,
        check_parent=new or bool(changed & {"parent", "project"}),
    )


def generation_refusal(artifact: ModelArtifact, what: str) -> str:
    """Why a reward model cannot `what` (generate, start a round, battle): it scores text."""
    return (
        f"{artifact} is a reward model: it scores responses and writes none, so it cannot "
        f"{what}. Choose a policy (a base, SFT, DPO or PPO model)."
    )


def engineer_require(user, project: Project | None) -> None:
    """`role_require(user, project, engineer)`; a run or model of no project (made in the shell,
    or from before models had one): superusers only."""
    if project is None:
        if not getattr(user, "is_superuser", False):
            raise PermissionDenied("Only a superuser can act on what belongs to no project.")
        return
    role_require(user, project, Role.ENGINEER)


@transaction.atomic
def artifact_register(
    *,
    project: Project,
    name: str,
    stage: str,
    path: str,
    parent: ModelArtifact | None = None,
    user,
    info: dict | None = None,
) -> ModelArtifact:
    """Register a model (a base model, one trained elsewhere) in `project`: an engineer's act.
    PermissionDenied below engineer; ValidationError naming `path`, `parent` or `stage`.
    `info`: what its config.json says (training.base_models.model_info)."""
    engineer_require(user, project)
    if stage not in Stage.values:
        raise ValidationError({"stage": f"{stage!r} is not a stage"})
    artifact_inputs_check(project=project, path=path, parent=parent)
    return ModelArtifact.objects.create(
        project=project, name=name, stage=stage, path=path.strip(), parent=parent,
        info=info or {},
    )  # fmt: skip


_EDITABLE = ("project", "name", "stage", "path", "parent")


@transaction.atomic
def artifact_update(*, artifact: ModelArtifact, user, **fields) -> ModelArtifact:
    """Change an artifact's name, stage, path, parent or project: an engineer of its project
    (and of the new one, when it moves). The path and parent are checked against the project it
    ends up in."""
    unknown = set(fields) - set(_EDITABLE)
    if unknown:
        raise ValidationError(f"not editable: {', '.join(sorted(unknown))}")
    engineer_require(user, artifact.project)
    project = fields.get("project", artifact.project)
    if project != artifact.project:
        engineer_require(user, project)
    if "stage" in fields and fields["stage"] not in Stage.values:
        raise ValidationError({"stage": f"{fields['stage']!r} is not a stage"})
    path = fields.get("path", artifact.path)
    parent = fields.get("parent", artifact.parent)
    if artifact.run_id is not None and {"path", "project"} & set(fields):
        raise ValidationError({"path": "a run's model stays in the run's folder and project"})
    artifact_changes_check(
        artifact=artifact, project=project, path=path, parent=parent, changed=fields
    )
    for name, value in fields.items():
        setattr(artifact, name, value.strip() if name == "path" else value)
    artifact.save(update_fields=list(fields))
    return artifact


def model_path_check(value: str, *, project: Project | None, key: str) -> None:
    """A model (or tokenizer, chat template) that a launch names by path: a hub name, a path
    inside a TRAINING_MODEL_DIRS folder, or the folder (or inside the folder) of an artifact of
    the run's project. ValueError naming `key` otherwise (the caller turns it into its error)."""
    if is_hub_name(value):
        return
    if not os.path.isabs(os.path.expanduser(value)):
        raise ValueError(f"{key}: {value!r}: give an absolute path or a hub name (org/name)")
    real = _real(value)
    in_data = _inside(real, _real(settings.DATA_DIR))
    if _inside(real, models_dir()) or (
        not in_data and any(_inside(real, root) for root in model_roots())
    ):
        return
    if project is not None:
        for path in project.artifacts.values_list("path", flat=True):
            if not is_hub_name(path) and _inside(real, _real(path)):
                return
    raise ValueError(
        f"{key}: {value} is not a model of this project: choose one of its artifacts (parent, "
        "reward model), a hub name, or a folder listed in TRAINING_MODEL_DIRS"
    )
