"""Writes of the training side: launch, execute, cancel, resume and reap runs; record workers;
sample candidates from a model for the labelers.

`run_execute` is what a Celery worker calls with a run id. It claims the run with one
conditional UPDATE (queued → running), so a redelivered or duplicated message for a run that is
already running or finished does nothing. While the engine trains, a heartbeat thread keeps
`heartbeat_at` fresh; `runs_reap_stale` fails runs whose heartbeat stopped (worker killed), and
`generation_jobs_reap_stale` does the same for generation jobs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from annotation.models import Project, Prompt, Snapshot, Source, TaskKind
from core.queue import enqueue_on_commit
from training.engine import ConfigError, ProgressSink, config_to_dict, load_config
from training.models import GenerationJob, MetricPoint, ModelArtifact, TrainingRun, WorkerHeartbeat

logger = logging.getLogger(__name__)

Status = TrainingRun.Status

# Launch presets: a stage and the options an engineer would otherwise type. Paths (dataset,
# model, reward_model, output_dir) are filled in from the chosen snapshot/artifacts at launch.
PRESETS: dict[str, dict] = {
    "pretrain-tiny": {
        "stage": "pretrain",
        "label": "Pretrain tiny (llama-tiny from scratch; minutes on a CPU)",
        "config": {"architecture": "llama-tiny", "vocab_size": 2000, "max_length": 128,
                   "max_steps": 200, "per_device_train_batch_size": 8, "save_steps": 50},
    },
    "pretrain-small": {
        "stage": "pretrain",
        "label": "Pretrain small (llama-60m from scratch; a GPU)",
        "config": {"architecture": "llama-60m", "vocab_size": 16000, "max_length": 512,
                   "num_train_epochs": 1, "per_device_train_batch_size": 16, "save_steps": 500},
    },
    "sft-full": {
        "stage": "sft",
        "label": "SFT, all weights",
        "config": {"learning_rate": 2e-5, "num_train_epochs": 3, "max_length": 1024,
                   "per_device_train_batch_size": 8, "save_steps": 200},
    },
    "sft-lora": {
        "stage": "sft",
        "label": "SFT with LoRA adapters (merged at the end)",
        "config": {"use_lora": True, "lora_r": 16, "lora_alpha": 32, "learning_rate": 2e-4,
                   "num_train_epochs": 3, "max_length": 1024, "per_device_train_batch_size": 8,
                   "save_steps": 200},
    },
    "instruction": {
        "stage": "instruction",
        "label": "Instruction tuning (chat messages)",
        "config": {"learning_rate": 2e-5, "num_train_epochs": 2, "max_length": 1024,
                   "per_device_train_batch_size": 8, "save_steps": 200},
    },
    "reward": {
        "stage": "reward",
        "label": "Reward model (Bradley-Terry on preference pairs)",
        "config": {"learning_rate": 1e-5, "num_train_epochs": 1, "max_length": 1024,
                   "per_device_train_batch_size": 8, "save_steps": 200},
    },
    "ppo": {
        "stage": "ppo",
        "label": "PPO against a reward model",
        "config": {"learning_rate": 3e-6, "kl_coef": 0.05, "response_length": 53,
                   "per_device_train_batch_size": 4, "num_ppo_epochs": 4, "save_steps": 100},
    },
    "dpo": {
        "stage": "dpo",
        "label": "DPO on preference pairs",
        "config": {"learning_rate": 1e-6, "beta": 0.1, "num_train_epochs": 1,
                   "max_length": 1024, "per_device_train_batch_size": 8, "save_steps": 200},
    },
}  # fmt: skip

LOG_TAIL_LINES = 60
# Keys the launch fills in itself; a re-run recomputes them from the chosen inputs.
_PATH_KEYS = ("output_dir", "dataset", "prompts", "model", "reward_model", "resume")


def preset_config(name: str) -> dict:
    preset = PRESETS[name]
    return {"stage": preset["stage"], **preset["config"]}


def run_output_dir(run_id: int) -> Path:
    return Path(settings.DATA_DIR) / "runs" / str(run_id)


def _check_snapshot(snapshot: Snapshot) -> str:
    if snapshot.status != Snapshot.Status.READY or not snapshot.path:
        raise ConfigError(
            f"snapshot #{snapshot.pk} ({snapshot}) is {snapshot.get_status_display().lower()}, "
            "not ready: wait for its build to finish or pick another snapshot"
        )
    return snapshot.path


def _fill_inputs(
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
    if snapshots:
        field = "prompts" if stage == "ppo" else "dataset"
        config[field] = _check_snapshot(snapshots[0])
    if parent is not None:
        config["model"] = parent.path
    if reward is not None:
        if stage != "ppo":
            raise ConfigError(f"{stage}: a reward model is only used by PPO")
        config["reward_model"] = reward.path
    return config


def _validate(config: dict):
    """The engine's own checks: keys, types and ranges, then the inputs it points at."""
    from training.engine.runner import validate_inputs

    cfg = load_config(config)
    validate_inputs(cfg)
    return cfg


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
    enqueue: bool = True,
) -> TrainingRun:
    """Validate the config with the engine, create the run and queue it after commit.

    `enqueue=False` leaves it queued for the caller to execute in-process (`train --here`).

    Raises ConfigError (the engine's message, naming the field) before anything is written.
    """
    config = _fill_inputs(stage, config, snapshots, parent, reward)
    # Validate before the row exists, with a stand-in output_dir, so a refused config leaves
    # nothing behind (not even a consumed run id).
    _validate({**config, "output_dir": config.get("output_dir") or str(run_output_dir(0))})
    if project is None and snapshots:
        project = snapshots[0].project
    run = TrainingRun.objects.create(
        project=project,
        name=name[:200],
        stage=stage,
        preset=preset,
        parent_artifact=parent,
        reward_artifact=reward,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
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
    """A fresh run with the same config and inputs (new output directory)."""
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
    )


@transaction.atomic
def run_cancel(*, run: TrainingRun, user=None) -> TrainingRun:
    """Queued: cancelled at once. Running: a flag the worker reads after every training step."""
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


@transaction.atomic
def run_resume(*, run: TrainingRun, user=None) -> TrainingRun:
    """A new run on the same output directory with `resume: true`.

    The engine continues from the last complete checkpoint there (or starts over when there is
    none). A new row keeps the failed attempt's error and timings as history; the metric points
    up to the checkpoint are copied so the charts read as one curve.
    """
    run = TrainingRun.objects.select_for_update().get(pk=run.pk)
    if not run.can_resume:
        raise ValidationError(
            f"run #{run.pk} is {run.get_status_display().lower()}: only failed or cancelled runs "
            "can be resumed"
        )
    if run.resumed_by.exclude(status__in=TrainingRun.FINISHED).exists():
        raise ValidationError(f"run #{run.pk} is already being resumed")
    config = {**run.config, "resume": True}
    _validate(config)
    new = TrainingRun.objects.create(
        project=run.project,
        name=run.name,
        stage=run.stage,
        preset=run.preset,
        config=config,
        output_dir=run.output_dir,
        parent_artifact=run.parent_artifact,
        reward_artifact=run.reward_artifact,
        resume_of=run,
        step=run.checkpoint_step,
        total_steps=run.total_steps,
        checkpoint_step=run.checkpoint_step,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    new.snapshots.set(run.snapshots.all())
    MetricPoint.objects.bulk_create(
        MetricPoint(run=new, step=p.step, values=p.values)
        for p in run.points.filter(step__lte=run.checkpoint_step)
    )
    _enqueue(new)
    return new


def _stale_bound(now, stale_after: float | None):
    """(now, the stale bound in seconds, the oldest heartbeat still alive) for the reapers."""
    now = now or timezone.now()
    bound = stale_after if stale_after is not None else settings.TRAINING_STALE_AFTER_SECONDS
    return now, bound, now - timedelta(seconds=bound)


def runs_reap_stale(*, now=None, stale_after: float | None = None) -> int:
    """Fail running runs whose worker stopped sending heartbeats. Returns how many."""
    now, bound, cutoff = _stale_bound(now, stale_after)
    reaped = 0
    for run in TrainingRun.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff):
        cancelled = run.cancel_requested
        updated = TrainingRun.objects.filter(
            pk=run.pk, status=Status.RUNNING, heartbeat_at__lt=cutoff
        ).update(
            status=Status.CANCELLED if cancelled else Status.FAILED,
            finished_at=now,
            error="" if cancelled else (
                f"Worker lost: no heartbeat from {run.worker or 'the worker'} since "
                f"{run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC (more than {bound:g} s); it was "
                "killed or its machine went away."
            ),
            advice="" if cancelled else (
                "Resume to continue from the last complete checkpoint"
                + (f" (step {run.checkpoint_step})." if run.checkpoint_step else
                   "; none was written yet, so the run starts over.")
            ),
        )  # fmt: skip
        reaped += updated
        if updated:
            logger.warning(
                "run %s: heartbeat stale since %s, marked failed", run.pk, run.heartbeat_at
            )
    return reaped


def generation_jobs_reap_stale(*, now=None, stale_after: float | None = None) -> int:
    """Fail running generation jobs whose worker stopped sending heartbeats (and those claimed
    before jobs had heartbeats, left running by a worker long gone). Returns how many."""
    now, bound, cutoff = _stale_bound(now, stale_after)
    stale = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    running = GenerationJob.objects.filter(stale, status=GenerationJob.Status.RUNNING)
    reaped = 0
    for job in running:
        since = f" since {job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" if job.heartbeat_at else ""
        updated = running.filter(pk=job.pk).update(
            status=GenerationJob.Status.FAILED,
            finished_at=now,
            error=(
                f"Worker lost: no heartbeat from {job.worker or 'the worker'}{since} (more than "
                f"{bound:g} s); it was killed or its machine went away. Nothing was written "
                "(responses and tasks are saved together at the end): generate again."
            ),
        )
        reaped += updated
        if updated:
            logger.warning("generation job %s: heartbeat stale, marked failed", job.pk)
    return reaped


# --- Execution (in a worker) ----------------------------------------------------------------


def _torch_threads_apply() -> None:
    """Hold torch to `TRAINING_TORCH_THREADS` CPU threads in this process, when set."""
    if settings.TRAINING_TORCH_THREADS:
        import torch

        torch.set_num_threads(settings.TRAINING_TORCH_THREADS)


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            idx = torch.cuda.current_device()
            total = torch.cuda.get_device_properties(idx).total_memory / 2**30
            return f"cuda:{idx} {torch.cuda.get_device_name(idx)} ({total:.0f} GiB)"
        return f"cpu ({torch.get_num_threads()} threads)"
    except Exception:  # noqa: BLE001 - a label only
        return "cpu"


class _Heartbeat(threading.Thread):
    """Refreshes a running row's `heartbeat_at` (a training run's, a generation job's) from its
    own thread (and DB connection) while the worker that claimed it works on it."""

    def __init__(self, model, pk: int, worker: str, interval: float) -> None:
        super().__init__(name=f"heartbeat-{model._meta.model_name}-{pk}", daemon=True)
        self.model, self.pk, self.worker, self.interval = model, pk, worker, interval
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.wait(self.interval):
                try:
                    self.model.objects.filter(
                        pk=self.pk, worker=self.worker, status="running"
                    ).update(heartbeat_at=timezone.now())
                except Exception:  # noqa: BLE001 - retry on the next beat
                    logger.exception("%s %s: heartbeat failed", self.model.__name__, self.pk)
        finally:
            connection.close()


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Recorder:
    """The engine's progress callback: metric points, the run's step/ETA/metrics and log tail."""

    def __init__(self, run: TrainingRun) -> None:
        self.run_id = run.pk
        self.lines: deque[str] = deque(
            run.log_tail.split("\n") if run.log_tail else [], LOG_TAIL_LINES
        )
        self.metrics: dict = dict(run.metrics)

    def _log(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {line}")

    def __call__(self, event: dict) -> None:
        kind, step = event["event"], event.get("step") or 0
        fields: dict = {}
        if event.get("total_steps"):
            fields["total_steps"] = event["total_steps"]
        if kind == "start":
            self._log(f"started {event.get('stage')} at step {step}/{event.get('total_steps')}")
            fields["step"] = step
        elif kind == "progress":
            values = {
                k: event[k]
                for k in ("loss", "learning_rate", "tokens_per_s")
                if _number(event.get(k))
            }
            values.update({k: v for k, v in (event.get("metrics") or {}).items() if _number(v)})
            MetricPoint.objects.create(run_id=self.run_id, step=step, values=values)
            fields.update(
                step=step, eta_seconds=event.get("eta_s") if _number(event.get("eta_s")) else None
            )
            loss = f" loss {event['loss']:.4g}" if _number(event.get("loss")) else ""
            tps = (
                f" {event['tokens_per_s']:.0f} tok/s" if _number(event.get("tokens_per_s")) else ""
            )
            self._log(f"step {step}/{event.get('total_steps')}{loss}{tps}")
            self.metrics["latest"] = values
            fields["metrics"] = self.metrics
        elif kind == "eval":
            values = {k: v for k, v in (event.get("metrics") or {}).items() if _number(v)}
            MetricPoint.objects.create(run_id=self.run_id, step=step, values=values)
            self.metrics["eval"] = values
            fields["metrics"] = self.metrics
            self._log("eval " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        elif kind == "checkpoint":
            fields["checkpoint_step"] = step
            self._log(f"checkpoint at step {step}")
        elif kind == "end":
            self._log(
                f"ended: {event.get('status')}"
                + (f" — {event['error']}" if event.get("error") else "")
            )
        fields["log_tail"] = "\n".join(self.lines)
        TrainingRun.objects.filter(pk=self.run_id).update(**fields)  # fmt: skip


def _cancel_check(run_id: int):
    # One indexed primary-key read per training step: cheap next to any real step, and it
    # honours a cancel within one step, also one stored before a worker restart.
    def check() -> bool:
        return TrainingRun.objects.filter(pk=run_id, cancel_requested=True).exists()

    return check


def run_execute(*, run_id: int, worker: str) -> str:
    """Claim and train a run. Returns the outcome ('skipped' when someone else owns it)."""
    now = timezone.now()
    claimed = TrainingRun.objects.filter(pk=run_id, status=Status.QUEUED).update(
        status=Status.RUNNING, worker=worker[:200], heartbeat_at=now, started_at=now, advice=""
    )
    if not claimed:
        logger.info("run %s: not queued (already running or finished), message ignored", run_id)
        return "skipped"
    run = TrainingRun.objects.get(pk=run_id)
    _torch_threads_apply()
    device = _device_name()
    TrainingRun.objects.filter(pk=run_id).update(device=device)
    beat = _Heartbeat(TrainingRun, run_id, run.worker, settings.TRAINING_HEARTBEAT_SECONDS)
    beat.start()
    recorder = _Recorder(run)
    try:
        result = _train(run, recorder)
    finally:
        beat.stop.set()
        beat.join(timeout=5)
    return _finish(run, result)


def _train(run: TrainingRun, recorder: _Recorder) -> dict:
    from training.engine import run_stage

    out = Path(run.output_dir)
    try:
        sink = ProgressSink(out / "progress.jsonl", recorder)
        result = run_stage(run.config, sink=sink, cancel_check=_cancel_check(run.pk))
    except ConfigError as exc:
        return {"status": Status.FAILED, "error": str(exc),
                "advice": "Fix the config (the message names the field) and re-run."}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the row must say what happened
        logger.exception("run %s crashed", run.pk)
        return {"status": Status.FAILED, "error": f"{type(exc).__name__}: {exc}",
                "advice": "See the worker log; resume continues from the last checkpoint."}  # fmt: skip
    return {
        "status": result.status,
        "error": result.error or "",
        "advice": result.advice or "",
        "metrics": result.metrics,
        "step": result.global_step,
    }


@transaction.atomic
def _finish(run: TrainingRun, result: dict) -> str:
    status = result["status"]
    fields = {
        "status": status,
        "finished_at": timezone.now(),
        "error": result.get("error", ""),
        "advice": result.get("advice", ""),
    }
    if result.get("step"):
        fields["step"] = result["step"]
    current = TrainingRun.objects.select_for_update().get(pk=run.pk)
    if result.get("metrics"):
        fields["metrics"] = {**current.metrics, "final": result["metrics"]}
    if status == Status.CANCELLED and not fields["advice"]:
        fields["advice"] = "Cancelled on request; resume continues from the last checkpoint."
    # Only the claimant finishes the run (the reaper may have failed it during a long stall;
    # a finished training result still wins over that guess).
    TrainingRun.objects.filter(pk=run.pk, worker=run.worker).update(**fields)
    if status == Status.SUCCEEDED:
        artifact_create_for_run(run=TrainingRun.objects.get(pk=run.pk))
    return status


def artifact_create_for_run(*, run: TrainingRun) -> ModelArtifact:
    out = Path(run.output_dir)
    card = out / "README.md"
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    root = run
    while root.resume_of_id:  # a resumed run's artifact belongs to the whole chain
        root = root.resume_of
    artifact, _ = ModelArtifact.objects.update_or_create(
        run=run,
        defaults={
            "name": run.name or f"{run.stage}-run{root.pk}",
            "stage": run.stage,
            "path": str(out),
            "parent": run.parent_artifact,
            "metrics": metrics,
            "model_card": card.read_text(encoding="utf-8") if card.is_file() else "",
        },
    )
    artifact.snapshots.set(run.snapshots.all())
    return artifact


# --- Workers --------------------------------------------------------------------------------


def worker_heartbeat_record(
    *, hostname: str, pid: int, queues: Sequence[str] = ()
) -> WorkerHeartbeat:
    from training.engine.resources import device_inventory

    inventory = device_inventory()
    now = timezone.now()
    worker, created = WorkerHeartbeat.objects.update_or_create(
        hostname=hostname,
        defaults={"pid": pid, "queues": list(queues), "devices": inventory["gpus"],
                  "cpu": inventory["cpu"], "seen_at": now, "stopped_at": None},
        create_defaults={"pid": pid, "queues": list(queues), "devices": inventory["gpus"],
                         "cpu": inventory["cpu"], "seen_at": now, "started_at": now},
    )  # fmt: skip
    return worker


def worker_stopped_record(*, hostname: str, pid: int) -> bool:
    """Mark a worker that is shutting down as stopped, so that nothing counts on it until its
    heartbeat goes stale. Only this process's row: a worker restarted under the same name may
    already have written its own. Returns whether a row was marked."""
    rows = WorkerHeartbeat.objects.filter(hostname=hostname, pid=pid, stopped_at__isnull=True)
    return bool(rows.update(stopped_at=timezone.now()))


# --- Candidates for the next labeling round -------------------------------------------------


@transaction.atomic
def generation_job_create(
    *,
    project: Project,
    artifact: ModelArtifact,
    prompts: Sequence[Prompt],
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int = 64,
    seed: int = 0,
    round: int = 2,
    user=None,
) -> GenerationJob:
    errors = {}
    if not 2 <= k <= 9:
        errors["k"] = "a ranking task takes 2–9 responses."
    if temperature <= 0:
        errors["temperature"] = "must be positive."
    if not 0 < top_p <= 1:
        errors["top_p"] = "must be in (0, 1]."
    if not prompts:
        errors["prompts"] = "choose at least one prompt."
    if any(p.project_id != project.pk for p in prompts):
        errors["prompts"] = "every prompt must belong to the project."
    if errors:
        raise ValidationError(errors)
    job = GenerationJob.objects.create(
        project=project, artifact=artifact, k=k, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, seed=seed, round=round,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )  # fmt: skip
    job.prompts.set(prompts)
    enqueue_on_commit("training.tasks.generation_run", job.pk)
    return job


def generation_job_repeat(*, job: GenerationJob, user=None) -> GenerationJob:
    """A new job with the same model, prompts and sampling settings (after a failure, or for
    more candidates with another seed set on the new row)."""
    return generation_job_create(
        project=job.project, artifact=job.artifact, prompts=list(job.prompts.order_by("pk")),
        k=job.k, temperature=job.temperature, top_p=job.top_p,
        max_new_tokens=job.max_new_tokens, seed=job.seed, round=job.round, user=user,
    )  # fmt: skip


def generation_execute(*, job_id: int, worker: str = "local") -> str:
    """Claim a job, sample K responses per prompt and create one ranking task per prompt.

    While it works a heartbeat thread keeps `heartbeat_at` fresh, so that a job whose worker is
    killed is failed by `generation_jobs_reap_stale` instead of staying "running" for ever."""
    now, worker = timezone.now(), worker[:200]
    if not GenerationJob.objects.filter(pk=job_id, status=GenerationJob.Status.QUEUED).update(
        status=GenerationJob.Status.RUNNING, worker=worker, started_at=now, heartbeat_at=now
    ):
        return "skipped"
    _torch_threads_apply()
    beat = _Heartbeat(GenerationJob, job_id, worker, settings.TRAINING_HEARTBEAT_SECONDS)
    beat.start()
    try:
        return _generate(job_id)
    finally:
        beat.stop.set()
        beat.join(timeout=5)


def _generate(job_id: int) -> str:
    from annotation import services as annotation_services
    from training.engine.generation import sample_responses

    job = GenerationJob.objects.select_related("artifact", "project").get(pk=job_id)
    prompts = list(job.prompts.order_by("pk"))
    try:
        samples = sample_responses(
            job.artifact.path, [p.messages or p.text for p in prompts], k=job.k,
            temperature=job.temperature, top_p=job.top_p, max_new_tokens=job.max_new_tokens,
            seed=job.seed,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - recorded on the job
        logger.exception("generation job %s failed", job_id)
        GenerationJob.objects.filter(pk=job_id, status=GenerationJob.Status.RUNNING).update(
            status=GenerationJob.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}",
            finished_at=timezone.now(),
        )
        return "failed"
    with transaction.atomic():
        # Finished only if still ours: a job the reaper failed meanwhile (its heartbeats stopped
        # reaching the database) keeps "nothing was written", as its error says. The row stays
        # locked until the responses are in, so the reaper cannot fail it half-written.
        if not GenerationJob.objects.filter(pk=job_id, status=GenerationJob.Status.RUNNING).update(
            status=GenerationJob.Status.SUCCEEDED, finished_at=timezone.now()
        ):
            logger.warning("generation job %s: no longer running, its samples are dropped", job_id)
            return "failed"
        responses = tasks_made = 0
        for prompt, row in zip(prompts, samples, strict=True):
            # Each sample records the decoding parameters and the per-prompt seed the engine
            # actually used, so a response can be reproduced from its own row.
            candidates = [
                annotation_services.response_create(
                    prompt=prompt,
                    text=sample["text"],
                    origin=Source.MODEL,
                    model_artifact=job.artifact,
                    generation={
                        **{key: value for key, value in sample.items() if key != "text"},
                        "k": job.k,
                        "job": job.pk,
                    },
                )
                for sample in row
            ]
            responses += len(candidates)
            annotation_services.task_create(
                project=job.project, kind=TaskKind.RANK, prompt=prompt, candidates=candidates,
                round=job.round,
            )  # fmt: skip
            tasks_made += 1
        GenerationJob.objects.filter(pk=job_id).update(
            responses_created=responses, tasks_created=tasks_made
        )
    return "succeeded"


def close_db_after(func):
    """For threads outside the request/task cycle: drop connections they leave behind."""

    def wrapper(*args, **kwargs):
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            connection.close()

    return wrapper
