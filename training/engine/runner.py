"""`run_stage`: config in, trained model directory and a StageResult out."""

from __future__ import annotations

import errno
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, StageConfig, load_config
from .progress import ProgressSink
from .snapshots import check_columns, read_snapshot


@dataclass
class StageResult:
    """Outcome of `run_stage`. status: succeeded | failed | cancelled."""

    status: str
    output_dir: str
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    advice: str | None = None
    global_step: int = 0


def validate_inputs(cfg: StageConfig) -> None:
    """Check what the config points at (snapshots, their columns, local model paths)."""
    snapshot = read_snapshot(cfg.snapshot, field=f"{cfg.stage}.{cfg.snapshot_field}")
    if snapshot.kind not in cfg.snapshot_kinds:
        raise ConfigError(
            f"{cfg.stage}.{cfg.snapshot_field}: snapshot kind {snapshot.kind!r} does not fit stage "
            f"{cfg.stage!r} (expected {' or '.join(cfg.snapshot_kinds)})"
        )
    check_columns(snapshot, cfg.stage, field=f"{cfg.stage}.{cfg.snapshot_field}")
    for name in ("model", "ref_model", "reward_model", "value_model", "tokenizer"):
        value = getattr(cfg, name, None)
        # Anything that looks like a path must exist; other names are hub ids.
        if value and (value.startswith(("/", ".", "~")) or Path(value).exists()):
            if not Path(value).expanduser().is_dir():
                raise ConfigError(f"{cfg.stage}.{name}: directory not found: {value}")


# errno values of a full or read-only disk; torch.save reports the same as a RuntimeError.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def is_write_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _WRITE_ERRNOS
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "PytorchStreamWriter" in text or "inline_container" in text or "file write failed" in text
    )


def write_advice(output_dir: Path) -> str:
    try:
        free = f"{shutil.disk_usage(output_dir).free / 2**30:.1f} GiB free there now"
    except OSError:
        free = "its free space could not be read"
    return (
        f"Saving to {output_dir} failed ({free}). Free disk space, or set output_dir to a "
        "writable folder with room for the model and its checkpoints (save_total_limit keeps "
        "fewer), then run again with resume: true; a checkpoint cut short is never resumed from."
    )


def run_stage(
    config: StageConfig | dict | str | Path,
    *,
    sink: ProgressSink | Callable[[dict], object] | None = None,
    cancel_check: Callable[[], bool] | None = None,
):
    """Run one stage to completion, cancellation or failure.

    Raises ConfigError for an invalid config before any work. Run failures (non-finite loss,
    out of memory, errors in training) come back as `StageResult(status="failed")`.
    """
    from . import stages
    from .runtime import OOM_ADVICE, Run, choose_precision, is_oom, release_memory

    cfg = config if isinstance(config, StageConfig) else load_config(config)
    validate_inputs(cfg)
    device, bf16, fp16 = choose_precision(cfg)
    output_dir = Path(cfg.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{cfg.stage}.output_dir: cannot create {output_dir}: {exc.strerror or exc}; "
            "choose a writable folder"
        ) from exc
    from accelerate import PartialState

    if not PartialState(cpu=device == "cpu").is_main_process:
        sink = ProgressSink()  # under `accelerate launch`, rank 0 alone reports
    elif sink is None:
        sink = ProgressSink(output_dir / "progress.jsonl")
    elif not isinstance(sink, ProgressSink):
        sink = ProgressSink(output_dir / "progress.jsonl", sink)
    run = Run(cfg, sink, cancel_check, output_dir=output_dir, device=device, bf16=bf16, fp16=fp16)

    status, error, advice = "succeeded", None, None
    try:
        stages.STAGE_RUNNERS[cfg.stage](run)
    except ConfigError:
        raise
    except BaseException as exc:  # noqa: BLE001 - the caller wants a status, not a traceback
        if isinstance(exc, KeyboardInterrupt):
            run.cancelled = True
        elif is_oom(exc):
            status, error, advice = "failed", f"out of memory: {exc}".strip(), OOM_ADVICE
        elif is_write_failure(exc):
            status, error = "failed", f"could not write under {output_dir}: {exc}".strip()
            advice = write_advice(output_dir)
        else:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            sink.emit("end", status="failed", error=error, traceback=traceback.format_exc())
            return StageResult(status, str(output_dir), run.metrics, error, None, run.global_step)
    finally:
        # The stage's models are unreachable now: a worker's next run starts with an empty GPU.
        release_memory()
    if run.failure:
        status, error, advice = "failed", run.failure, run.advice
    elif run.cancelled and status == "succeeded":
        status = "cancelled"
    result = StageResult(status, str(output_dir), run.metrics, error, advice, run.global_step)
    sink.emit(
        "end",
        status=status,
        step=run.global_step,
        error=error,
        advice=advice,
        metrics=run.metrics,
        notes=run.notes,
    )
    return result
