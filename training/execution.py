"""Training in a worker: `run_execute` is what a Celery worker (or `train --here`) calls with
a run id.

It claims the run (queued → running, `core.jobs.job_claim`), so a redelivered or duplicated
message for a run that is already running or finished does nothing. While the engine trains, a
heartbeat thread keeps `heartbeat_at` fresh (`core.jobs.job_heartbeat`) and the recorder turns
the engine's progress events into metric points, the run's step/ETA and its log tail.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from core.jobs import job_claim, job_heartbeat
from training import runs
from training.engine import ConfigError, ProgressSink, checkpoints
from training.models import MetricPoint, TrainingRun

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

    def _notes(self, event: dict, fields: dict) -> None:
        """The engine's notes (a start's or an end's `notes`: what it decided or could not do,
        e.g. "cannot resume"), kept once each in `metrics["notes"]` for the run page."""
        notes = self.metrics.setdefault("notes", [])
        for note in event.get("notes") or []:
            if isinstance(note, str) and note not in notes:
                notes.append(note)
                self._log(f"note: {note}")
                fields["metrics"] = self.metrics

    def __call__(self, event: dict) -> None:
        kind, step = event["event"], event.get("step") or 0
        fields: dict = {}
        if event.get("total_steps"):
            fields["total_steps"] = event["total_steps"]
        if kind == "start":
            self._log(f"started {event.get('stage')} at step {step}/{event.get('total_steps')}")
            resumed = (self.metrics.get("resumed_from") or {}).get("step")
            if resumed is not None and step != resumed:
                self._log(
                    f"the engine did not continue from the checkpoint at step {resumed}: "
                    f"the charts start over from step {step}"
                )
            # Points past where this attempt starts (copied from the run it resumes) would be
            # drawn twice, once by each attempt: this attempt's steps replace them.
            MetricPoint.objects.filter(run_id=self.run_id, step__gt=step).delete()
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
            if event.get("path") and not checkpoints.is_resumable(Path(event["path"])):
                self._log(f"weights saved at step {step} (not a checkpoint a resume can use)")
            else:
                fields["checkpoint_step"] = step
                self._log(f"checkpoint at step {step}")
        elif kind == "end":
            self._log(
                f"ended: {event.get('status')}"
                + (f" — {event['error']}" if event.get("error") else "")
            )
        if kind in ("start", "end"):
            self._notes(event, fields)
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
    train = _train_launched if run.num_processes > 1 else _train
    # Beating from the claim on: a worker's first run imports torch here, which on a busy
    # machine can outlast the stale bound before any training starts.
    with job_heartbeat(TrainingRun, run_id, worker=run.worker):
        torch_threads_apply()
        device = _device_name()
        if run.num_processes > 1:
            device = f"{run.num_processes} processes on {device}"
        TrainingRun.objects.filter(pk=run_id).update(device=device)
        result = train(run, _Recorder(run))
        return _finish(run, result)


class CheckpointGone(Exception):
    """The checkpoint a resume was to continue from is no longer on disk."""


def checkpoint_import(run: TrainingRun) -> None:
    """Before a resume trains: the checkpoint it continues from (`runs.resume_point` of the run
    it resumes), hard-linked into its own output folder's checkpoints/ (copied where links are
    not possible), so the engine's `resume: true` finds it there and every write of the new run
    stays in its own folder. A marked checkpoint is never written again, so sharing its files
    is safe. The directory appears whole or not at all (built aside, then renamed)."""
    if not run.config.get("resume") or run.resume_of is None:
        return
    own = runs.resume_point(run)
    if own is not None and own.run_id == run.pk:
        return  # already here
    point = runs.resume_point(run.resume_of)
    if point is None:
        raise CheckpointGone(
            f"run #{run.pk} resumes run #{run.resume_of_id}, whose checkpoint is gone from "
            f"{checkpoints.checkpoint_dir(run.resume_of.output_dir)}"
        )
    root = checkpoints.checkpoint_dir(run.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / point.path.name
    partial = root / f".{point.path.name}.importing"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(point.path, partial, copy_function=_link_or_copy)
    partial.rename(target)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def _train(run: TrainingRun, recorder: _Recorder) -> dict:
    from training.engine import run_stage

    out = Path(run.output_dir)
    try:
        checkpoint_import(run)
        sink = ProgressSink(out / "progress.jsonl", recorder)
        result = run_stage(run.config, sink=sink, cancel_check=_cancel_check(run.pk))
    except CheckpointGone as exc:
        return {"status": Status.FAILED, "error": str(exc),
                "advice": "Re-run to start over (nothing of this run was trained)."}  # fmt: skip
    except ConfigError as exc:
        return {"status": Status.FAILED, "error": str(exc),
                "advice": "Fix the config (the message names the field) and re-run."}  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the row must say what happened
        logger.exception("run %s crashed", run.pk)
        return {"status": Status.FAILED, "error": f"{type(exc).__name__}: {exc}",
                "advice": "See the worker log. " + _resume_advice(run)}  # fmt: skip
    return {
        "status": result.status,
        "error": result.error or "",
        "advice": result.advice or "",
        "metrics": result.metrics,
        "step": result.global_step,
    }


# --- Several processes: the run trains in `accelerate launch`, a child of the worker ---------

# How often the worker reads the child's new progress lines and the run's cancel flag.
LAUNCH_POLL_SECONDS = 0.5


def processes_capacity() -> int:
    """The processes this worker can train one run with: its visible GPUs, else its CPU cores."""
    from training.engine.resources import device_inventory

    inventory = device_inventory()
    return len(inventory["gpus"]) or int(inventory["cpu"]["cores"])


def _die_with_worker() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The launcher gets SIGTERM when the worker dies (even by SIGKILL), and stops its ranks: a
    run reaped as lost must not train on unseen, writing into its folder."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Tail:
    """New complete lines of a JSONL file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


def _train_launched(run: TrainingRun, recorder: _Recorder) -> dict:
    """Train under `accelerate launch` with `run.num_processes` ranks, a child process of this
    worker (whose heartbeat covers it): rank 0 writes progress.jsonl, which is read here into
    the run's rows as the in-process recorder would; a cancel request becomes the file rank 0
    looks for after each step; the outcome is the log's `end` event."""
    from training.engine.launch import launch_command

    out = Path(run.output_dir)
    capacity = processes_capacity()
    if run.num_processes > capacity:
        return {"status": Status.FAILED,
                "error": f"num_processes: {run.num_processes}, but this worker can run "
                         f"{capacity} (one per GPU, or per CPU core without GPUs)",
                "advice": "Re-run with fewer processes, or start a worker with more GPUs."}  # fmt: skip
    try:
        checkpoint_import(run)
    except CheckpointGone as exc:
        return {"status": Status.FAILED, "error": str(exc),
                "advice": "Re-run to start over (nothing of this run was trained)."}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "launch_config.json"
    config_path.write_text(json.dumps(run.config, indent=2))
    cancel_file = out / "cancel.request"
    cancel_file.unlink(missing_ok=True)
    progress = out / "progress.jsonl"
    tail = _Tail(progress)
    tail.offset = progress.stat().st_size if progress.is_file() else 0  # an earlier attempt's
    env = {**os.environ, "PYTHONPATH": str(settings.BASE_DIR)}
    if settings.TRAINING_TORCH_THREADS:
        env["OMP_NUM_THREADS"] = str(settings.TRAINING_TORCH_THREADS)
    command = launch_command(config_path, num_processes=run.num_processes, cancel_file=cancel_file)
    logger.info("run %s: %s processes, %s", run.pk, run.num_processes, " ".join(command))
    with (out / "launch.log").open("ab") as log:
        proc = subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_worker)  # fmt: skip
    end = None
    try:
        while True:
            done = proc.poll() is not None
            for event in tail.read():
                if event["event"] == "end":
                    end = event
                recorder(event)
            if done:
                break
            if not cancel_file.exists() and _cancel_check(run.pk)():
                cancel_file.touch()
            time.sleep(LAUNCH_POLL_SECONDS)
    finally:
        if proc.poll() is None:  # this thread failed: the run must not go on unseen
            proc.terminate()
            proc.wait(timeout=60)
    if end is None:
        tail_text = (out / "launch.log").read_text(errors="replace")[-1500:]
        return {"status": Status.FAILED,
                "error": f"the launched processes ended (exit {proc.returncode}) without a "
                         f"result: {tail_text}",
                "advice": "See launch.log in the run's folder. " + _resume_advice(run)}  # fmt: skip
    return {
        "status": end["status"],
        "error": end.get("error") or "",
        "advice": end.get("advice") or "",
        "metrics": end.get("metrics") or {},
        "step": end.get("step") or 0,
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
        fields["advice"] = "Cancelled on request. " + _resume_advice(current)
    # Only the claimant finishes the run (the reaper may have failed it during a long stall;
    # a finished training result still wins over that guess).
    TrainingRun.objects.filter(pk=run.pk, worker=run.worker).update(**fields)
    if status == Status.SUCCEEDED:
        runs.artifact_create_for_run(run=TrainingRun.objects.get(pk=run.pk))
    return status


def _resume_advice(run: TrainingRun) -> str:
    """What a resume of the stopped run would do, read from its checkpoints on disk."""
    point = runs.resume_point(run)
    if point is None:
        return "No checkpoint a resume can continue from was written: re-run to start over."
    return f"Resume continues from the checkpoint at step {point.step}."


def close_db_after(func):
    """For threads outside the request/task cycle: drop connections they leave behind."""

    def wrapper(*args, **kwargs):
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            connection.close()

    return wrapper
