"""`python manage.py round_start --policy ID --budget N`: start the next labeling round."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from training import rounds
from training.models import ModelArtifact


def _models(ids: list[int], option: str) -> list[ModelArtifact]:
    found = {m.pk: m for m in ModelArtifact.objects.filter(pk__in=ids)}
    missing = [pk for pk in ids if pk not in found]
    if missing:
        raise CommandError(f"{option}: no model #{', #'.join(map(str, missing))}.")
    return [found[pk] for pk in ids]


class Command(BaseCommand):
    help = (
        "Start the next labeling round of a policy's project: one job (queued for a worker, or "
        "run here with --now) that selects prompts not judged yet, samples K distinct "
        "candidates per prompt and creates the rank or compare tasks, within --budget prompts."
    )

    def add_arguments(self, parser):
        parser.add_argument("--policy", type=int, required=True, help="Policy artifact id.")
        parser.add_argument("--budget", type=int, required=True, help="Prompts to ask at most.")
        parser.add_argument("--generator", type=int, action="append", default=[],
                            help="Another model whose samples share the tasks (repeatable).")  # fmt: skip
        parser.add_argument("--reward-model", type=int, action="append", default=[],
                            help="A reward model of the active-selection ensemble (repeatable).")  # fmt: skip
        parser.add_argument("--active", action="store_true", help="Uncertainty sampling.")
        parser.add_argument("--tag", action="append", default=[], help="Only prompts tagged so.")
        parser.add_argument("--batch", type=int, help="Only the prompts of this import batch.")
        parser.add_argument("--snapshot", type=int, help="Only the prompts of this snapshot.")
        parser.add_argument("--k", type=int, default=None)
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument("--top-p", type=float, default=0.95)
        parser.add_argument("--max-new-tokens", type=int, default=64)
        parser.add_argument("--seed", type=int, default=None, help="Default: a fresh one.")
        parser.add_argument("--now", action="store_true", help="Run it in this process.")

    def handle(self, *args, **o):
        (policy,) = _models([o["policy"]], "--policy")
        source = {"tags": o["tag"], "batch": o["batch"], "snapshot": o["snapshot"]}
        try:
            job = rounds.round_start(
                policy=policy, budget=o["budget"],
                source={k: v for k, v in source.items() if v not in (None, [])},
                generators=_models(o["generator"], "--generator"),
                reward_models=_models(o["reward_model"], "--reward-model"), active=o["active"],
                k=o["k"], temperature=o["temperature"], top_p=o["top_p"],
                max_new_tokens=o["max_new_tokens"], seed=o["seed"],
            )  # fmt: skip
        except ValidationError as error:
            raise CommandError(json.dumps(error.message_dict)) from None
        self.stdout.write(f"Round {job.number} of {job.project} (#{job.pk}) {job.status}.")
        if o["now"]:
            outcome = rounds.round_execute(round_id=job.pk, worker="manage.py")
            job.refresh_from_db()
            self.stdout.write(f"{outcome}: {json.dumps(job.counts)} {job.error}".rstrip())
