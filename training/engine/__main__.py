"""`python -m training.engine CONFIG.yaml`: run the stage named in the config.

Prints one line per progress event, writes them to OUTPUT_DIR/progress.jsonl, and exits 0 on
success, 1 on a failed run, 2 on an invalid config, 3 when cancelled (Ctrl-C stops after the
current step and saves a checkpoint). Works under `accelerate launch -m training.engine ...`
(training/accelerate/ holds configs): rank 0 reads the cancel flag (a signal, or
`--cancel-file`) and every rank stops at the same step; rank 0 alone prints, writes the progress
log and the model.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def _line(event: dict) -> str:
    kind = event["event"]
    if kind == "start":
        return f"[start] stage={event.get('stage')} step={event['step']}/{event['total_steps']}" + (
            "".join(f"\n  note: {n}" for n in event.get("notes") or [])
        )
    if kind == "progress":
        parts = [f"step {event['step']}/{event['total_steps']}"]
        for key, fmt in (("loss", "{:.4f}"), ("learning_rate", "{:.2e}"), ("tokens_per_s", "{:.0f}"),
                         ("eta_s", "{:.0f}s")):  # fmt: skip
            if isinstance(event.get(key), int | float):
                parts.append(f"{key}={fmt.format(event[key])}")
        for key, value in (event.get("metrics") or {}).items():
            if key.startswith(("objective/", "rewards/accuracies", "accuracy")):
                parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        return "  ".join(parts)
    if kind == "eval":
        return "[eval] " + json.dumps(event.get("metrics"))
    if kind == "precision":
        return f"[precision] autocast={event.get('autocast')} trainable={event.get('trainable')}"
    if kind == "checkpoint":
        return f"[checkpoint] step {event['step']}: {event.get('path')}"
    status = f"[end] {event.get('status')} at step {event['step']}"
    if event.get("error"):
        status += f"\n  error: {event['error']}"
    if event.get("advice"):
        status += f"\n  advice: {event['advice']}"
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.engine", description=__doc__)
    parser.add_argument("config", nargs="?", help="stage config (YAML or JSON)")
    parser.add_argument("--help-config", metavar="STAGE", help="list a stage's config keys")
    parser.add_argument("--validate", action="store_true", help="check the config and exit")
    parser.add_argument(
        "--cancel-file",
        metavar="PATH",
        help="stop after the current step (saving a checkpoint) once this file exists",
    )
    args = parser.parse_args(argv)

    from .config import ConfigError, describe_config, load_config

    if args.help_config:
        try:
            fields = describe_config(args.help_config)
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        for f in fields:
            req = " (required)" if f["required"] else ""
            print(f"{f['name']}: {f['type']} = {f['default']!r}{req}\n    {f['help']}")
        return 0
    if not args.config:
        parser.error("CONFIG is required")

    from .progress import ProgressSink

    try:
        cfg = load_config(args.config)
        if args.validate:
            from .runner import validate_inputs

            validate_inputs(cfg)
            print(f"config OK: stage {cfg.stage}")
            return 0
        cancelled = []
        signal.signal(signal.SIGINT, lambda *_: cancelled.append(True))
        signal.signal(signal.SIGTERM, lambda *_: cancelled.append(True))
        from pathlib import Path

        from .runner import run_stage

        sink = ProgressSink(
            Path(cfg.output_dir) / "progress.jsonl", lambda e: print(_line(e), flush=True)
        )
        cancel_file = Path(args.cancel_file) if args.cancel_file else None

        def cancel_check() -> bool:
            return bool(cancelled) or (cancel_file is not None and cancel_file.exists())

        try:
            result = run_stage(cfg, sink=sink, cancel_check=cancel_check)
        except BaseException:
            _leave_process_group()
            raise
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    code = {"succeeded": 0, "failed": 1, "cancelled": 3}[result.status]
    if result.status == "cancelled" and os.environ.get("RANK", "0") != "0":
        # Under a launcher the first rank to exit non-zero makes it kill the others, which
        # could cut rank 0 short while it writes the checkpoint and the end of the log: rank 0
        # alone says "cancelled".
        code = 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_teardown(code)
    return code


def _leave_process_group() -> None:
    """Leave the process group (if any) before an error propagates out of the interpreter."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _exit_without_teardown(code: int) -> None:
    """One rank of several ends here once its run is over and everything it wrote is on disk
    (`run_stage` returned: the model, the checkpoints, the log): stdio flushed, then out at
    once, without tearing gloo down. A rank whose process group was destroyed (or left to the
    interpreter's finalization) while its peer was tearing down too sometimes aborted after a
    run that had succeeded ("terminate called without an active exception", exit -6), and the
    launcher then killed the others and failed the whole run: 2 of 83 FSDP runs on two loaded
    cores, both times rank 1, after rank 0 had written the run's last line; none of 108 since
    (kto, dpo, grpo, reward, sft-lora, two loops at once). Nothing is left to tear down that
    the operating system does not: the sockets close with the process."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
