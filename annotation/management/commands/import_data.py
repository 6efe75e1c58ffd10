"""python manage.py import_data PROJECT FILE [--format ...] [--create-project] [--dry-run] [--skip-invalid]"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation import services
from annotation.imports import FORMATS, import_file
from annotation.imports.errors import place, place_of
from annotation.models import Project


class Command(BaseCommand):
    help = (
        "Import prompts, demonstrations and judgments into a project. Nothing is written when "
        "any row is bad (unless --skip-invalid); re-importing a file adds nothing twice."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("file")
        parser.add_argument("--format", default="auto", choices=FORMATS)
        parser.add_argument("--create-project", action="store_true")
        parser.add_argument(
            "--dry-run", action="store_true", help="validate and count, write nothing"
        )
        parser.add_argument(
            "--skip-invalid",
            action="store_true",
            help="import the good rows; write the bad ones to FILE.rejects.jsonl",
        )

    def handle(self, *args, **options):
        path = Path(options["file"])
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        slug = options["project"]
        project = Project.objects.filter(slug=slug).first()
        if project is None:
            if not options["create_project"]:
                raise CommandError(
                    f"No project with slug {slug!r}; pass --create-project to create it."
                )
            project = services.project_create(name=slug.replace("-", " ").title(), slug=slug)
        reject_path = (
            path.with_name(path.name + ".rejects.jsonl") if options["skip_invalid"] else None
        )
        report = import_file(
            project=project,
            path=path,
            format=options["format"],
            skip_invalid=options["skip_invalid"],
            dry_run=options["dry_run"],
            reject_path=reject_path,
        )
        for line in report.error_lines():
            self.stderr.write(f"{path}: {line}")
        if report.error_count > len(report.errors):
            self.stderr.write(f"... and {report.error_count - len(report.errors)} more bad rows")
        if report.counts:
            c = report.counts
            verb = "would import" if options["dry_run"] else "imported"
            self.stdout.write(
                f"{verb} into {project.slug} ({report.format}): {c['prompts']} prompts, "
                f"{c['responses']} responses, {c['judgments']} judgments, {c['pairs']} pairs, "
                f"{c['documents']} documents, {c['demonstrations']} demonstrations; "
                f"{c['already_imported']} records already imported, {c['rejected']} rejected"
            )
            if c.get("gold_tasks"):
                self.stdout.write(f"{c['gold_tasks']} gold tasks, with their answers")
            if report.reject_file and c["rejected"]:
                self.stdout.write(f"bad rows written to {report.reject_file}")
        # Records with nothing to learn from, imported as less or skipped: never silently.
        for reason, n in report.notices.items():
            example = next(e for e in report.notice_examples if e["reason"] == reason)
            where = place(place_of(example))
            self.stdout.write(f"notice: {n} × {reason} (e.g. {where}: {example['message']})")
        if not report.ok:
            if options["dry_run"] and options["skip_invalid"]:
                raise CommandError(
                    f"{report.error_count} rows would be rejected; nothing was written (dry run)."
                )
            if not report.written:
                raise CommandError(
                    f"{report.error_count} bad rows; nothing was imported. Fix them, or pass "
                    "--skip-invalid to import the good rows."
                )
            raise CommandError(f"{report.error_count} rows were rejected.")
