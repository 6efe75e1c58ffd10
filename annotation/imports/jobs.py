"""Imports as jobs: an uploaded file no longer holds the web worker that received it.

The request (`import_request`, from the API and the curate page) stores the upload under
DATA_DIR/imports/<token>/ and makes an `ImportJob` row; a worker on the `default` queue claims
it and imports it with the same service as `manage.py import_data` (`import_job_run`), under
the one job lifecycle (core.jobs): claimed once, kept alive by a heartbeat that also carries
its progress, reaped when its worker dies. The write is one transaction (the importer's own
rule), so a job whose worker died wrote nothing, and says so. The upload is removed once the
job is done; a reject file (skip-invalid) stays beside where it was, for the curator to fetch.

The same file uploaded again with the same options while its job is unfinished gets that job
(one request, one job); once it finished, a new job imports it again, which adds nothing
twice (the importer skips records already imported).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotation.imports.formats import FORMATS
from annotation.imports.limits import SNIFF_BYTES, check_size, check_type
from annotation.imports.service import import_file
from annotation.models import ImportJob, Project
from core.jobs import JobNotQueued, job_claim, job_fingerprint, job_get_or_create, job_heartbeat
from core.queue import enqueue_on_commit

logger = logging.getLogger(__name__)

REJECTS = "rejects.jsonl"


def imports_root() -> Path:
    return Path(settings.DATA_DIR) / "imports"


def upload_check(upload) -> None:
    """Refuse an upload before it is stored: over IMPORT_MAX_BYTES (413), or not an accepted
    type by its name and first bytes (415). Raises UploadRejected naming the file."""
    check_size(upload.name, upload.size)
    upload.seek(0)
    check_type(upload.name, upload.read(SNIFF_BYTES))
    upload.seek(0)


def _store(upload) -> tuple[Path, str, int]:
    """Write the upload into a folder of its own; its path, sha256 and size."""
    folder = imports_root() / uuid.uuid4().hex
    folder.mkdir(parents=True)
    path = folder / f"upload{Path(upload.name).suffix.lower()[:16]}"
    digest, size = hashlib.sha256(), 0
    with path.open("wb") as fh:
        for chunk in upload.chunks():
            digest.update(chunk)
            size += len(chunk)
            fh.write(chunk)
    return path, digest.hexdigest(), size


@transaction.atomic
def import_request(
    *,
    project: Project,
    upload,
    format: str = "auto",
    skip_invalid: bool = False,
    dry_run: bool = False,
    user=None,
    enqueue: bool = True,
) -> ImportJob:
    """Store an uploaded file (checked by `upload_check` first) and queue its import on
    commit. The same file and options while their job is unfinished get that job (`reused`),
    the new copy discarded. ValidationError names a bad `format`."""
    if format not in FORMATS:
        raise ValidationError({"format": f"{format!r} is not one of {', '.join(FORMATS)}."})
    uploads_tidy()
    path, sha256, size = _store(upload)
    try:
        options = {"format": format, "skip_invalid": bool(skip_invalid), "dry_run": bool(dry_run)}
        job, created = job_get_or_create(
            ImportJob,
            fingerprint=job_fingerprint(project=project.pk, sha256=sha256, **options),
            defaults={"project": project, "file_name": upload.name[:500], "upload": str(path),
                      "size": size, "sha256": sha256, "created_by": user, **options},
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise
    if not created:
        shutil.rmtree(path.parent, ignore_errors=True)
    elif enqueue:
        enqueue_on_commit("annotation.tasks.import_run", job.pk)
    return job


def uploads_tidy() -> int:
    """Remove the uploads that finished jobs still hold (a job whose worker died kept its
    own). Returns how many were removed."""
    finished = ImportJob.objects.exclude(status__in=ImportJob.unfinished()).exclude(upload="")
    removed = 0
    for job in finished.only("pk", "upload"):
        _upload_remove(job.upload)
        removed += ImportJob.objects.filter(pk=job.pk, upload=job.upload).update(upload="")
    return removed


def _upload_remove(upload: str) -> None:
    """Remove a stored upload, and its folder when nothing else (a reject file) is left in it."""
    path = Path(upload)
    if imports_root().resolve() not in path.resolve().parents:
        return  # not one of ours: never delete outside DATA_DIR/imports
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # a reject file stays


def reject_file(job: ImportJob) -> Path | None:
    """The job's reject file when it wrote one with rows in it (inside DATA_DIR/imports)."""
    name = (job.report or {}).get("reject_file") or ""
    if not name:
        return None
    path = Path(name)
    root = imports_root().resolve()
    if root not in path.resolve().parents or not path.is_file() or path.stat().st_size == 0:
        return None
    return path


class _Progress:
    """What the job's page shows while it runs. A new stage is set on the row at once, from the
    worker's own connection, before the write's transaction opens; the records read are left
    to the heartbeat's thread, whose own connection writes them while that transaction holds
    the worker's."""

    def __init__(self, job: ImportJob) -> None:
        self.job = job
        self.stage, self.read, self.total = "", 0, None

    def __call__(self, stage: str, records: int) -> None:
        if stage == self.stage:
            self.read = records
            return
        if self.stage == ImportJob.Stage.CHECKING:
            self.total = self.read  # every record was checked: the write reads as many
        self.stage, self.read = stage, records
        _save(self.job, **self.fields())

    def fields(self) -> dict:
        return {"stage": self.stage, "records_read": self.read, "records_total": self.total}


def _save(job: ImportJob, **fields) -> None:
    ImportJob.objects.filter(pk=job.pk).update(**fields)
    for name, value in fields.items():
        setattr(job, name, value)


def import_job_run(*, job: ImportJob, worker: str = "local") -> ImportJob:
    """Claim a queued import job and import its file. Raises JobNotQueued, writing nothing,
    when it is not queued (a twin message or a retry claimed it, or it finished). The outcome
    is recorded on the row: done (written, or a dry run) with the report, or failed (bad rows
    refused the file, or an error), and the upload removed."""
    if not job_claim(ImportJob, job.pk, worker=worker):
        job.refresh_from_db()
        raise JobNotQueued(
            f"import job #{job.pk} is {job.get_status_display().lower()}, not queued: another "
            "worker has it (or had it); wait for it or upload the file again."
        )
    job.refresh_from_db()
    progress = _Progress(job)
    rejects = Path(job.upload).parent / REJECTS if job.skip_invalid and not job.dry_run else None
    try:
        with job_heartbeat(ImportJob, job.pk, worker=worker, progress=progress.fields):
            report = import_file(
                project=job.project,
                path=job.upload,
                format=job.format,
                skip_invalid=job.skip_invalid,
                dry_run=job.dry_run,
                reject_path=rejects,
                user=job.created_by,
                file_name=job.file_name,
                progress=progress,
                job=job,
            )
    except Exception as error:
        _finish(job, progress, status=ImportJob.Status.FAILED,
                error=f"{type(error).__name__}: {error}. Nothing of this file was written; fix "
                "the cause and upload it again.")  # fmt: skip
        raise
    if report.reject_file and not report.counts.get("rejected"):
        Path(report.reject_file).unlink(missing_ok=True)
        report.reject_file = ""
    error = ""
    if not report.written and report.error_count and not job.dry_run:
        error = (
            f"{report.error_count} bad row(s); nothing was imported. Fix them, or import with "
            "skip-invalid to import the good rows."
        )
    status = ImportJob.Status.FAILED if error else ImportJob.Status.DONE
    _finish(job, progress, status=status, error=error, report=asdict(report))
    return job


def _finish(job: ImportJob, progress: _Progress, **fields) -> None:
    if job.upload:
        _upload_remove(job.upload)
    _save(job, **fields, **progress.fields(), upload="", finished_at=timezone.now())
