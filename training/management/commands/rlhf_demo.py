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
        parser.add_argument(
            "--quick", action="store_true", help="Smallest sizes (tests; under a minute)."
        )
        parser.add_argument(
            "--rounds",
            type=int,
            default=None,
            help="Ranking/RM/PPO/DPO rounds (default 3; 1 with --quick).",
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--seeds",
            default=None,
            help="Several worlds, e.g. 0,1,2: one run per seed (reports in seed-N/ under the "
            "report directory), then each figure per seed with its mean and range (seeds.md).",
        )
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
        from training.demo import DemoError, pipeline, report
        from training.demo.state import QUICK, Demo, Sizes

        if options["rounds"] is None:
            # Three, chosen on seed 0's dev prompts: round 3 took PPO from 0.71 to 0.74 against
            # SFT (DPO 0.715 to 0.717) for about 100 s more of one core.
            options["rounds"] = 1 if options["quick"] else 3
        if options["rounds"] < 1:
            raise CommandError("--rounds must be at least 1")
        seeds = _seeds(options["seeds"]) if options["seeds"] is not None else None
        _require_migrated()
        out = Path(options["out"]) if options["out"] else Path(settings.VAR_DIR) / "demo"

        def demo_for(seed: int, out_dir: Path) -> Demo:
            return Demo(
                sizes=QUICK if options["quick"] else Sizes(),
                seed=seed,
                rounds=options["rounds"],
                use_worker=not options["no_worker"],
                out_dir=out_dir,
                log=lambda line: self.stdout.write(line),
            )

        # A terminated demo stops the worker it started (its `finally`), like Ctrl+C does.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            if seeds is None:
                pipeline.run(demo_for(options["seed"], out))
                return
            reports = []
            for seed in seeds:
                self.stdout.write(f"\n=== seed {seed} ({len(reports) + 1} of {len(seeds)}) ===")
                reports.append(pipeline.run(demo_for(seed, out / f"seed-{seed}")))
                # The table so far, after every seed: a long run shows what it has.
                summary = report.seeds_summary(reports)
                _json, md = report.write_seeds(summary, out)
            self.stdout.write("\nRLHF demo — every seed (oracle-judged, held-out test prompts)")
            self.stdout.write(report.seeds_table(summary))
            self.stdout.write(f"\n  tables: {md}")
        except DemoError as exc:
            raise CommandError(
                f"{exc}\nThe runs, snapshots and artifacts so far are in the admin."
            ) from exc


def _require_migrated() -> None:
    """A database without the platform's tables (a new PLATFORM_VAR_DIR, say) fails at the
    demo's first query with "no such table"; say what to run instead."""
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        raise CommandError(
            f"The database {settings.DATABASES[DEFAULT_DB_ALIAS]['NAME']} has {len(plan)} "
            "unapplied migrations: run `.venv/bin/python manage.py migrate` first "
            "(`make run` does it), then the demo again."
        )


def _seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` as a list of distinct seeds, in order."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--seeds: {text!r} is not a comma-separated list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise CommandError(f"--seeds: {text!r} must name at least one seed, each once")
    return seeds


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
