"""python manage.py tasks_create PROJECT --kind KIND (--batch N | --tags a,b | --snapshot N |
--without-demonstrations N) [--required N] [--priority N] [--round N] [--instructions TEXT]"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.bulk import BULK_KINDS, task_batch_request, task_batch_run
from annotation.models import Project


class Command(BaseCommand):
    help = (
        "Create tasks of one kind for every prompt of a selection (the prompts of an import "
        "batch, with tags, of a prompts snapshot, or without N demonstrations yet); run twice, "
        "it creates nothing twice. Prints what it created, found and skipped."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("--kind", required=True, choices=BULK_KINDS)
        parser.add_argument("--batch", type=int, help="an import batch id")
        parser.add_argument("--tags", default="", help="comma-separated; prompts with all of them")
        parser.add_argument("--snapshot", type=int, help="a ready prompts snapshot id")
        parser.add_argument(
            "--without-demonstrations",
            type=int,
            metavar="N",
            help="prompts with fewer than N demonstrations yet",
        )
        parser.add_argument("--required", type=int, help="labelers per task (default: overlap)")
        parser.add_argument("--priority", type=int, default=0)
        parser.add_argument("--round", type=int, default=1)
        parser.add_argument("--instructions", default="", help="shown with each task")

    def handle(self, *args, **options):
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project with slug {options['project']!r}.")
        selection = {
            "batch": options["batch"],
            "tags": [t for t in options["tags"].split(",") if t.strip()],
            "snapshot": options["snapshot"],
            "without_demonstrations": options["without_demonstrations"],
        }
        try:
            batch = task_batch_request(
                project=project,
                kind=options["kind"],
                selection={k: v for k, v in selection.items() if v not in (None, [])},
                required=options["required"],
                priority=options["priority"],
                round=options["round"],
                instructions=options["instructions"],
                enqueue=False,
            )
            task_batch_run(batch=batch)
        except ValidationError as error:
            raise CommandError(_describe(error)) from None
        counts = batch.counts
        self.stdout.write(
            f"task batch #{batch.pk} {project.slug}/{batch.kind}: {counts['selected']} prompts "
            f"selected, {counts['created']} tasks created, {counts['already_there']} already "
            f"there, {counts['skipped_too_few_responses']} prompts skipped (too few responses)"
        )
        if counts["skipped_prompt_ids"]:
            ids = ", ".join(map(str, counts["skipped_prompt_ids"]))
            self.stdout.write(f"skipped prompts (first {len(counts['skipped_prompt_ids'])}): {ids}")


def _describe(error: ValidationError) -> str:
    if hasattr(error, "error_dict"):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in error.message_dict.items())
    return " ".join(error.messages)
