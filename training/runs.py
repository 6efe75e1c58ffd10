"""Writes of a training run's lifecycle on the web side: launch (validated by the engine
before anything is written), re-run, cancel, resume, and the model artifact a succeeded run
leaves. Training itself runs in a worker: training/execution.py; a run whose worker is lost is
failed by `core.jobs.jobs_reap_stale` (its message and advice: `TrainingRun.lost_fields`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotation.models import Project, Snapshot
from core.jobs import job_fingerprint, job_get_or_create
from core.queue import enqueue_on_commit
from training.artifacts import engineer_require, model_path_check
from training.engine import (
    STAGES,
    ConfigError,
    StageConfig,
    checkpoints,
    config_to_dict,
    load_config,
)
from training.models import MetricPoint, ModelArtifact, TrainingRun

Status = TrainingRun.Status


# Keys the launch fills in itself; a re-run recomputes them from the chosen inputs.
_PATH_KEYS = ("output_dir", "dataset", "prompts", "model", "reward_model", "resume")
# Keys naming data the run reads (a snapshot), and models, tokenizers or templates it loads.
_SNAPSHOT_KEYS = ("dataset", "prompts")
_MODEL_KEYS = ("model", "ref_model", "reward_model", "value_model", "tokenizer", "chat_template")


def run_output_dir(run_id: int) -> Path:
    return Path(settings.DATA_DIR) / "runs" / str(run_id)


def _check_snapshot(snapshot: Snapshot) -> str:
    if snapshot.status != Snapshot.Status.READY or not snapshot.path:
        raise ConfigError(
            f"snapshot #{snapshot.pk} ({snapshot}) is {snapshot.get_status_display().lower()}, "
            "not ready: wait for its build to finish or pick another snapshot"
        )
    return snapshot.path


def fill_inputs(
    stage: str,
    config: dict,
    snapshots: Sequence[Snapshot],
    parent: ModelArtifact | None,
    reward: ModelArtifact | None,
) -> dict:
    """Point the config at the chosen snapshot and artifacts (they win over typed paths)."""
    config = dict(config)
    if config.get("stage", stage) != stage:
        raise ConfigError(
            f"stage: the config says {config['stage']!r} but the run is launched as {stage!r}"
        )
    config["stage"] = stage
    # The stage's config class knows which field names its snapshot and whether it takes a
    # reward model. An unknown stage gets the base class here and is refused by `_validate`.
    stage_config = STAGES.get(stage, StageConfig)
    if snapshots:
        kinds = stage_config.snapshot_kinds
        if kinds and snapshots[0].kind not in kinds:
            # (the engine's words, said before its manifest is read: an estimate checks it too)
            raise ConfigError(
                f"{stage}.{stage_config.snapshot_field}: snapshot kind {snapshots[0].kind!r} "
                f"does not fit stage {stage!r}: it trains on a {' or '.join(kinds)} snapshot "
                f"(#{snapshots[0].pk} is not one)"
            )
        config[stage_config.snapshot_field] = _check_snapshot(snapshots[0])
    if parent is not None:
        config["model"] = parent.path
    if reward is not None:
        if "reward_model" not in {f.name for f in dataclasses.fields(stage_config)}:
            raise ConfigError(f"{stage}: a reward model is only used by PPO, GRPO and RLOO")
        config["reward_model"] = reward.path
    return config


# A bound on what a form may ask for, whatever the workers: beyond it is a typo.
MAX_PROCESSES = 64


def processes_check(num_processes: int) -> None:
    """ConfigError, naming the field, for a process count no live training worker can run
    (one process per GPU; on a worker without GPUs, one per CPU core over gloo). With no
    worker online the run waits queued, as any run does."""
    from training.selectors import processes_offered

    if not 1 <= num_processes <= MAX_PROCESSES:
        raise ConfigError(f"num_processes: {num_processes} is not between 1 and {MAX_PROCESSES}")
    if num_processes == 1:
        return
    offered = processes_offered()
    if offered is not None and num_processes > offered:
        raise ConfigError(
            f"num_processes: {num_processes} processes, but the live training workers can run "
            f"at most {offered} (one per GPU, or per CPU core on a worker without GPUs)"
        )


def _validate(config: dict):
    """The engine's own checks: keys, types and ranges, then the inputs it points at."""
    from training.engine.runner import validate_inputs

    cfg = load_config(config)
    validate_inputs(cfg)
    return cfg


def launch_inputs_check(
    *,
    user,
    project: Project | None,
    stage: str,
    config: dict,
    snapshots: Sequence[Snapshot],
    parent: ModelArtifact | None,
    reward: ModelArtifact | None,
) -> None:
    """What a person may launch: a run of a project where they are an engineer, on snapshots of
    projects where they are one, from models of the run's project. Every path in the config is
    the platform's: output_dir is refused, data is a chosen snapshot's folder, a model (or
    tokenizer, chat template) is an artifact of the project, a hub name or inside
    TRAINING_MODEL_DIRS. PermissionDenied for the role; ConfigError naming the key otherwise."""
    if project is None and not user.is_superuser:
        field = STAGES.get(stage, StageConfig).snapshot_field
        raise ConfigError(
            f"{stage}.{field}: choose a snapshot of your project (a run belongs to the project "
            "of its data); a typed path is not accepted"
        )
    engineer_require(user, project)
    for snapshot in snapshots:
        engineer_require(user, snapshot.project)
    for key, artifact in (("parent", parent), ("reward", reward)):
        if artifact is None:
            continue
        legacy = artifact.project_id is None and user.is_superuser
        if not legacy and (project is None or artifact.project_id != project.pk):
            raise ConfigError(f"{key}: {artifact} is a model of another project")
    if config.get("output_dir"):
        raise ConfigError(
            f"{stage}.output_dir: set by the platform (each run writes to its own folder, "
            "DATA_DIR/runs/<run id>); remove it from the config"
        )
    chosen = {s.path for s in snapshots}
    for key in _SNAPSHOT_KEYS:
        value = config.get(key)
        if value and value not in chosen:
            raise ConfigError(
                f"{stage}.{key}: a typed path is not accepted; choose the snapshot in the form"
            )
    artifact_paths = {a.path for a in (parent, reward) if a is not None}
    for key in _MODEL_KEYS:
        value = config.get(key)
        if not value or value in artifact_paths or (key == "chat_template" and value == "default"):
            continue
        try:
            model_path_check(str(value), project=project, key=f"{stage}.{key}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@transaction.atomic
def run_launch(
    *,
    stage: str,
    config: dict,
    snapshots: Sequence[Snapshot] = (),
    parent: ModelArtifact | None = None,
    reward: ModelArtifact | None = None,
    user=None,
    project: Project | None = None,
    name: str = "",
    preset: str = "",
    num_processes: int = 1,
    enqueue: bool = True,
) -> TrainingRun:
    """Validate the config with the engine, create the run and queue it after commit.

    `num_processes` > 1 trains it under `accelerate launch` (`processes_check` says how many a
    worker can run). `enqueue=False` leaves it queued for the caller to execute in-process (`train --here`).
    The same launch (stage, config with the engine's defaults filled in, snapshots, parent and
    reward model) made while such a run is still queued or running gets that run, marked
    `reused`, and queues nothing: a double submit trains once.

    With a `user` (a person, not the shell's `manage.py train`), `launch_inputs_check` decides
    what they may launch.

    Raises ConfigError (the engine's message, naming the field) before anything is written;
    PermissionDenied when the user is not an engineer of the run's project.
    """
    from training.engine.runner import validate_inputs

    config = fill_inputs(stage, config, snapshots, parent, reward)
    if project is None and snapshots:
        project = snapshots[0].project
    # Validate before the row exists, with a stand-in output_dir, so a refused config leaves
    # nothing behind (not even a consumed run id). Keys and types first; then who may read what;
    # then the engine looks at what the config points at.
    checked = load_config(
        {**config, "output_dir": config.get("output_dir") or str(run_output_dir(0))}
    )
    if user is not None:
        launch_inputs_check(user=user, project=project, stage=stage, config=config,
                            snapshots=snapshots, parent=parent, reward=reward)  # fmt: skip
    validate_inputs(checked)
    processes_check(num_processes)
    # Only a count other than one joins the fingerprint: runs launched before it existed keep
    # theirs.
    processes = {"num_processes": num_processes} if num_processes != 1 else {}
    run, created = job_get_or_create(
        TrainingRun,
        fingerprint=job_fingerprint(
            project=project.pk if project else None,
            stage=stage,
            # Every run gets its own output directory: not part of what was asked for.
            config={k: v for k, v in config_to_dict(checked).items() if k != "output_dir"},
            snapshots=[s.pk for s in snapshots],
            parent=parent.pk if parent else None,
            reward=reward.pk if reward else None,
            **processes,
        ),
        defaults={
            "project": project,
            "name": name[:200],
            "stage": stage,
            "preset": preset,
            "num_processes": num_processes,
            "parent_artifact": parent,
            "reward_artifact": reward,
            "created_by": user if getattr(user, "is_authenticated", False) else None,
        },
    )
    if not created:
        return run
    config["output_dir"] = str(run_output_dir(run.pk))
    run.config = config_to_dict(load_config(config))
    run.output_dir = run.config["output_dir"]
    run.save(update_fields=["config", "output_dir"])
    if snapshots:
        run.snapshots.set(snapshots)
    if enqueue:
        _enqueue(run)
    return run


def _enqueue(run: TrainingRun) -> None:
    def unsent(exc: Exception) -> None:
        TrainingRun.objects.filter(pk=run.pk, status=Status.QUEUED).update(
            advice=(
                f"The message broker was unreachable at launch ({exc}). The run stays queued "
                "and is sent again as soon as a worker reconnects to the broker; if none is "
                "waiting for it, restart a worker once the broker is back."
            )
        )

    enqueue_on_commit("training.tasks.run_train", run.pk, on_unsent=unsent)


def run_rerun(*, run: TrainingRun, user=None) -> TrainingRun:
    """A fresh run with the same config and inputs (new output directory), checked as a launch
    of `user`'s."""
    config = {k: v for k, v in run.config.items() if k not in _PATH_KEYS}
    snapshots = list(run.snapshots.all())
    # Shell-launched runs may name their data by path rather than by snapshot row.
    for key in ("dataset", "prompts", "model", "reward_model"):
        if key in run.config and run.config[key]:
            config.setdefault(key, run.config[key])
    return run_launch(
        stage=run.stage,
        config=config,
        snapshots=snapshots,
        parent=run.parent_artifact,
        reward=run.reward_artifact,
        user=user,
        project=run.project,
        name=run.name,
        preset=run.preset,
        num_processes=run.num_processes,
    )


@transaction.atomic
def run_cancel(*, run: TrainingRun, user=None) -> TrainingRun:
    """Queued: cancelled at once. Running: a flag the worker reads after every training step.
    With a `user`: an engineer of the run's project only (PermissionDenied)."""
    if user is not None:
        engineer_require(user, run.project)
    now = timezone.now()
    if TrainingRun.objects.filter(pk=run.pk, status=Status.QUEUED).update(
        status=Status.CANCELLED, cancel_requested=True, finished_at=now
    ):
        run.refresh_from_db()
        return run
    if not TrainingRun.objects.filter(pk=run.pk, status=Status.RUNNING).update(
        cancel_requested=True
    ):
        run.refresh_from_db()
        raise ValidationError(f"run #{run.pk} is already {run.get_status_display().lower()}")
    run.refresh_from_db()
    return run


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a resume of a run continues from: the last complete one (the engine's
    completion-marker rule) that is not marked as weights only."""

    step: int
    path: Path
    run_id: int  # the run whose folder holds it (an earlier run of the chain, see resume_point)


def _last_resumable(output_dir: str) -> tuple[int, Path] | None:
    found = [
        (step, path)
        for step, path, complete in checkpoints.list_checkpoints(
            checkpoints.checkpoint_dir(output_dir)
        )
        if complete and checkpoints.is_resumable(path)
    ]
    return found[-1] if found else None


def resume_point(run: TrainingRun) -> ResumePoint | None:
    """Where a resume of `run` would continue: the last resumable checkpoint in its output
    folder, or, for a resume that never got to copy its origin's checkpoint (cancelled while
    queued), its origin's. None: there is nothing to continue from."""
    seen: set[int] = set()
    node: TrainingRun | None = run
    while node is not None and node.pk not in seen:
        seen.add(node.pk)
        last = _last_resumable(node.output_dir) if node.output_dir else None
        if last is not None:
            return ResumePoint(step=last[0], path=last[1], run_id=node.pk)
        node = node.resume_of
    return None


def _no_checkpoint_reason(run: TrainingRun) -> str:
    if not run.output_dir:
        return f"run #{run.pk} has no output folder, so no checkpoint. Re-run it to start over."
    root = checkpoints.checkpoint_dir(run.output_dir)
    found = checkpoints.list_checkpoints(root)
    weights_only = [step for step, path, ok in found if ok and not checkpoints.is_resumable(path)]
    cut_short = [step for step, _, ok in found if not ok]
    why = f"run #{run.pk} has no checkpoint to resume from in {root}"
    if weights_only:
        why += (
            f": checkpoint-{weights_only[-1]} holds the weights only, which the {run.stage} stage "
            "cannot continue from"
        )
    elif cut_short:
        why += f": checkpoint-{cut_short[-1]} was cut short (no {checkpoints.MARKER} marker)"
    else:
        save_steps = run.config.get("save_steps")
        every = f" every {save_steps} steps" if save_steps else ""
        why += f" (one is written{every}; it stopped at step {run.step})"
    return why + ". Re-run it to start over."


def resume_refusal(run: TrainingRun) -> str:
    """Why `run` cannot be resumed now ("" when it can): it is not failed or cancelled, it was
    resumed already (resume that run instead: one run continues a checkpoint, never two into
    one artifact), or no resumable checkpoint exists."""
    if run.status not in (Status.FAILED, Status.CANCELLED):
        return (
            f"run #{run.pk} is {run.get_status_display().lower()}: only failed or cancelled runs "
            "can be resumed"
        )
    later = run.resumed_by.order_by("pk").first()
    if later is not None:
        return (
            f"run #{run.pk} was already resumed as run #{later.pk} "
            f"({later.get_status_display().lower()}); resume that run if it stopped"
        )
    if not run.output_dir or resume_point(run) is None:
        return _no_checkpoint_reason(run)
    return ""


@transaction.atomic
def run_resume(*, run: TrainingRun, user=None) -> TrainingRun:
    """A new run, linked to `run` (`resume_of`), that continues from its last resumable
    checkpoint in a fresh output folder of its own.

    A new row rather than the same one: the stopped attempt keeps its status, error, log and
    timings as history, and each row goes through the job lifecycle once (queued, claimed,
    finished). The new run reads the checkpoint from the old folder (the worker hard-links it
    into its own before training, `execution.checkpoint_import`), so nothing is ever written
    where an earlier attempt's files, or a finished artifact's weights, live. The metric points
    up to the checkpoint are copied, so its charts and step count read as one series that goes
    on where the checkpoint left off. Refused (ValidationError, `resume_refusal` says why) for
    a run that is not failed or cancelled, that was resumed already, or that has no checkpoint
    to continue from. With a `user`: an engineer of the run's project only (PermissionDenied).
    """
    if user is not None:
        engineer_require(user, run.project)
    run = TrainingRun.objects.select_for_update().get(pk=run.pk)
    refusal = resume_refusal(run)
    if refusal:
        raise ValidationError(refusal)
    point = resume_point(run)
    assert point is not None  # resume_refusal said so
    _validate({**run.config, "resume": True})
    # Two racing requests both pass the check above where the row lock is a no-op (SQLite):
    # the unfinished-job constraint on this fingerprint lets one insert win.
    new, created = job_get_or_create(
        TrainingRun,
        fingerprint=job_fingerprint(resume_of=run.pk),
        defaults={
            "project": run.project,
            "name": run.name,
            "stage": run.stage,
            "preset": run.preset,
            "num_processes": run.num_processes,
            "parent_artifact": run.parent_artifact,
            "reward_artifact": run.reward_artifact,
            "resume_of": run,
            "step": point.step,
            "total_steps": run.total_steps,
            "checkpoint_step": point.step,
            "metrics": {"resumed_from": {"run": point.run_id, "step": point.step}},
            "log_tail": f"{time.strftime('%H:%M:%S')} resumes run #{run.pk} from its checkpoint "
            f"at step {point.step} ({point.path})",
            "created_by": user if getattr(user, "is_authenticated", False) else None,
        },
    )
    if not created:
        raise ValidationError(f"run #{run.pk} was already resumed as run #{new.pk}")
    new.output_dir = str(run_output_dir(new.pk))
    new.config = {**run.config, "resume": True, "output_dir": new.output_dir}
    new.save(update_fields=["config", "output_dir"])
    new.snapshots.set(run.snapshots.all())
    MetricPoint.objects.bulk_create(
        MetricPoint(run=new, step=p.step, values=p.values)
        for p in run.points.filter(step__lte=point.step)
    )
    _enqueue(new)
    return new


def model_card_titled(card: str, title: str) -> str:
    """`card` with its first Markdown title (after the front matter) replaced by `title`."""
    lines = card.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("# "):
            lines[i] = f"# {title}"
            break
    return "\n".join(lines)


def artifact_create_for_run(*, run: TrainingRun) -> ModelArtifact:
    out = Path(run.output_dir)
    card = out / "README.md"
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    root = run
    while root.resume_of_id:  # a resumed run's artifact belongs to the whole chain
        root = root.resume_of
    name = run.name or f"{run.stage}-run{root.pk}"
    model_card = ""
    if card.is_file():
        # The engine titles the card with its output folder, the run's number ("# 11"): the
        # platform knows the model's name, so the card (in the folder too) carries that.
        model_card = model_card_titled(card.read_text(encoding="utf-8"), name)
        card.write_text(model_card, encoding="utf-8")
    artifact, _ = ModelArtifact.objects.update_or_create(
        run=run,
        defaults={
            "name": name,
            "project": run.project,
            "stage": run.stage,
            "path": str(out),
            "parent": run.parent_artifact,
            "metrics": metrics,
            "model_card": model_card,
        },
    )
    artifact.snapshots.set(run.snapshots.all())
    return artifact
