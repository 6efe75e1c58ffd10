"""`python manage.py train STAGE --config FILE [--snapshot ID] [--parent ID] [--wait]`:
the launch form from a shell. Same validation, same queue, same run rows."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.models import Snapshot
from training import execution, runs
from training.engine import ConfigError
from training.models import ModelArtifact, Stage, TrainingRun


def _read_config(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"--config: file not found: {path}")
    text = file.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CommandError(f"{path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CommandError(f"{path}: expected a mapping of config keys at the top level")
    return data


class Command(BaseCommand):
    help = "Launch a training run (queued for a worker unless --here) and optionally wait for it."

    def add_arguments(self, parser):
        parser.add_argument("stage", choices=Stage.values)
        parser.add_argument("--config", required=True, help="YAML or JSON engine config.")
        parser.add_argument("--snapshot", type=int, action="append", default=[],
                            help="Snapshot id (training data; for PPO the prompts).")  # fmt: skip
        parser.add_argument("--parent", type=int, help="Parent model artifact id.")
        parser.add_argument("--reward", type=int, help="PPO: reward model artifact id.")
        parser.add_argument("--name", default="")
        parser.add_argument("--wait", action="store_true", help="Follow progress until it ends.")
        parser.add_argument("--here", action="store_true",
                            help="Train in this process instead of a worker (implies --wait).")  # fmt: skip

    def handle(self, *args, **opts):
        config = _read_config(opts["config"])
        try:
            snapshots = [Snapshot.objects.get(pk=pk) for pk in opts["snapshot"]]
            parent = ModelArtifact.objects.get(pk=opts["parent"]) if opts["parent"] else None
            reward = ModelArtifact.objects.get(pk=opts["reward"]) if opts["reward"] else None
        except (Snapshot.DoesNotExist, ModelArtifact.DoesNotExist) as exc:
            raise CommandError(str(exc)) from None
        try:
            run = runs.run_launch(stage=opts["stage"], config=config, snapshots=snapshots,
                                      parent=parent, reward=reward, name=opts["name"],
                                      enqueue=not opts["here"])  # fmt: skip
        except (ConfigError, ValidationError) as exc:
            raise CommandError(str(exc)) from None
        state = "created" if opts["here"] else "queued"
        if run.reused:  # the same launch is already queued or running: follow that one
            state = f"reused (already {run.get_status_display().lower()})"
        self.stdout.write(f"run #{run.pk} {state}: {run.output_dir}")
        if opts["here"]:
            execution.run_execute(run_id=run.pk, worker="manage.py train --here")
        if opts["wait"] or opts["here"]:
            run = self._follow(run.pk)
            if run.status != TrainingRun.Status.SUCCEEDED:
                raise CommandError(f"run #{run.pk} {run.status}: {run.error} {run.advice}".strip())

    def _follow(self, run_id: int) -> TrainingRun:
        last = None
        while True:
            run = TrainingRun.objects.get(pk=run_id)
            line = f"{run.status} step {run.step}/{run.total_steps}"
            if run.metrics.get("latest", {}).get("loss") is not None:
                line += f" loss {run.metrics['latest']['loss']:.4g}"
            if line != last:
                self.stdout.write(line)
                sys.stdout.flush()
                last = line
            if run.is_finished:
                if run.status == TrainingRun.Status.SUCCEEDED:
                    artifact = getattr(run, "artifact", None)
                    if artifact is not None:
                        self.stdout.write(f"artifact #{artifact.pk}: {artifact.path}")
                return run
            time.sleep(1)
