"""Training in a worker: `run_execute` is what a Celery worker (or `train --here`) calls with
a run id.

It claims the run (queued → running, `core.jobs.job_claim`), so a redelivered or duplicated
message for a run that is already running or finished does nothing. While the engine trains, a
heartbeat thread keeps `heartbeat_at` fresh (`core.jobs.job_heartbeat`) and the recorder turns
the engine's progress events into metric points, the run's step/ETA and its log tail.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from core.jobs import job_claim, job_heartbeat
from training.engine import ConfigError, ProgressSink
from training.models import MetricPoint, TrainingRun
from training.runs import artifact_create_for_run

logger = logging.getLogger(__name__)

Status = TrainingRun.Status

LOG_TAIL_LINES = 60


def torch_threads_apply() -> None:
    """Hold torch to `TRAINING_TORCH_THREADS` CPU threads in this process, when set."""
    if settings.TRAINING_TORCH_THREADS:
        import torch

        torch.set_num_threads(settings.TRAINING_TORCH_THREADS)


def _device_name() -> str:
    try:
        from training.engine.resources import device_label

        return device_label()  # the physical GPU, whatever CUDA_VISIBLE_DEVICES renumbers
    except Exception:  # noqa: BLE001 - a label only
        return "cpu"


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
    # The claim clears the advice a launch left while the broker was down.
    if not job_claim(TrainingRun, run_id, worker=worker, advice=""):
        return "skipped"
    run = TrainingRun.objects.get(pk=run_id)
    torch_threads_apply()
    device = _device_name()
    TrainingRun.objects.filter(pk=run_id).update(device=device)
    with job_heartbeat(TrainingRun, run_id, worker=run.worker):
        result = _train(run, _Recorder(run))
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


def close_db_after(func):
    """For threads outside the request/task cycle: drop connections they leave behind."""

    def wrapper(*args, **kwargs):
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            connection.close()

    return wrapper
