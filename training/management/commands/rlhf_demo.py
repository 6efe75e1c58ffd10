"""`python manage.py rlhf_demo`: the whole RLHF loop, end to end, through the real platform."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Run the RLHF loop on a synthetic world: pretrain a tiny model, simulated labelers write "
        "demonstrations and rank samples, SFT, reward model, PPO and DPO in a Celery worker, "
        "then judge everything with the hidden oracle. Writes var/demo/report.json and .html."
    )

    def add_arguments(self, parser):
        parser.add_argument("--quick", action="store_true", help="Smallest sizes (tests; ~2 min).")
        parser.add_argument(
            "--rounds",
            type=int,
            default=None,
            help="Ranking/RM/PPO/DPO rounds (default 2; 1 with --quick).",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--no-worker",
            action="store_true",
            help="Run the training stages in this process instead of a Celery worker.",
        )
        parser.add_argument(
            "--out", default=None, help="Report directory (default: var/demo under the var dir)."
        )

    def handle(self, *args, **options):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        # Stage progress is printed by the demo itself; per-shard progress bars are noise.
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from training.demo import DemoError, pipeline
        from training.demo.state import QUICK, Demo, Sizes

        if options["rounds"] is None:
            options["rounds"] = 1 if options["quick"] else 2
        if options["rounds"] < 1:
            raise CommandError("--rounds must be at least 1")
        out = Path(options["out"]) if options["out"] else Path(settings.VAR_DIR) / "demo"
        demo = Demo(
            sizes=QUICK if options["quick"] else Sizes(),
            seed=options["seed"],
            rounds=options["rounds"],
            use_worker=not options["no_worker"],
            out_dir=out,
            log=lambda line: self.stdout.write(line),
        )
        # A terminated demo stops the worker it started (its `finally`), like Ctrl+C does.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            pipeline.run(demo)
        except DemoError as exc:
            raise CommandError(
                f"{exc}\nThe runs, snapshots and artifacts so far are in the admin."
            ) from exc


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
