"""python manage.py snapshot PROJECT --kind KIND [--format jsonl|parquet|hf] [--filter k=v] [--out DIR]"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.exports import FORMATS, snapshot_build, snapshot_request
from annotation.models import Project, SnapshotKind


class Command(BaseCommand):
    help = (
        "Build a content-addressed dataset snapshot of a project (in TRL's row formats) under "
        "DATA_DIR/snapshots/<sha256>/ and, with --out, copy its files into DIR."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("--kind", required=True, choices=SnapshotKind.values)
        parser.add_argument("--format", default="jsonl", choices=FORMATS)
        parser.add_argument(
            "--filters",
            default="",
            help='JSON object of filters, e.g. \'{"test_size": 0.2, "tags": ["math"]}\'',
        )
        parser.add_argument(
            "--filter",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="one filter (repeatable), e.g. --filter test_size=0.2 --filter review=approved",
        )
        parser.add_argument("--out", help="directory to copy the snapshot files into")

    def handle(self, *args, **options):
        project = Project.objects.filter(slug=options["project"]).first()
        if project is None:
            raise CommandError(f"No project with slug {options['project']!r}.")
        filters = {}
        if options["filters"]:
            try:
                filters = json.loads(options["filters"])
            except json.JSONDecodeError as error:
                raise CommandError(f"--filters is not valid JSON: {error}") from None
            if not isinstance(filters, dict):
                raise CommandError("--filters must be a JSON object.")
        for item in options["filter"]:
            name, sep, value = item.partition("=")
            if not sep:
                raise CommandError(f"--filter {item!r}: expected NAME=VALUE.")
            filters[name] = value
        out = Path(options["out"]) if options["out"] else None
        if out is not None and out.exists() and any(out.iterdir()):
            raise CommandError(f"--out {out} is not empty; choose a new or empty directory.")
        try:
            snapshot = snapshot_request(
                project=project,
                kind=options["kind"],
                format=options["format"],
                filters=filters,
                enqueue=False,
            )
            snapshot_build(snapshot=snapshot)
        except ValidationError as error:
            raise CommandError(_describe(error)) from None
        if out is not None:
            shutil.copytree(snapshot.path, out, dirs_exist_ok=True)
        manifest = snapshot.manifest
        splits = ", ".join(f"{n} {s['rows']}" for n, s in manifest["splits"].items())
        self.stdout.write(
            f"snapshot #{snapshot.pk} {project.slug}/{snapshot.kind} sha256 {snapshot.sha256}\n"
            f"rows: {snapshot.row_count} ({splits}); columns {', '.join(manifest['columns'])}\n"
            f"path: {out or snapshot.path}"
        )


def _describe(error: ValidationError) -> str:
    if hasattr(error, "error_dict"):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in error.message_dict.items())
    return " ".join(error.messages)
