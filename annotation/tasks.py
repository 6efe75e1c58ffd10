"""Celery tasks of the annotation app: thin interfaces that call services."""

from __future__ import annotations

from celery import shared_task

from annotation import leasing
from core.jobs import JobNotQueued, job_worker


@shared_task(name="annotation.tasks.leases_expire")
def leases_expire() -> int:
    """Tidy leases past their expiry (they already stopped counting against the overlap)."""
    return leasing.leases_expire()


@shared_task(name="annotation.tasks.snapshot_build", bind=True)
def snapshot_build(self, snapshot_id: int) -> str:
    """Build a queued snapshot. A retry of one that already started is refused, not run twice."""
    from annotation.exports import snapshot_build as build
    from annotation.models import Snapshot

    snapshot = Snapshot.objects.select_related("project").filter(pk=snapshot_id).first()
    if snapshot is None:
        return "skipped: not queued"
    try:
        build(snapshot=snapshot, worker=job_worker(self))
    except JobNotQueued:
        return "skipped: not queued"
    except Exception:
        # The service recorded the error on the row for the curator; nothing to retry blindly.
        return f"failed: {snapshot.error[:200]}"
    return f"ready: {snapshot.sha256}"


@shared_task(name="annotation.tasks.task_batch_run", bind=True)
def task_batch_run(self, batch_id: int) -> str:
    """Create the tasks of a queued batch. A retry of one that already started is refused."""
    from annotation.bulk import task_batch_run as run
    from annotation.models import TaskBatch

    batch = TaskBatch.objects.select_related("project").filter(pk=batch_id).first()
    if batch is None:
        return "skipped: not queued"
    try:
        run(batch=batch, worker=job_worker(self))
    except JobNotQueued:
        return "skipped: not queued"
    except Exception:
        # The service recorded the error on the row; the chunks done are kept.
        return f"failed: {batch.error[:200]}"
    return f"done: {batch.counts.get('created', 0)} created"


@shared_task(name="annotation.tasks.consensus_compute", bind=True)
def consensus_compute(self, job_id: int) -> str:
    """Compute a requested consensus version. A retry of a job that already started is
    refused, not run twice."""
    from annotation.consensus import consensus_job_run
    from annotation.models import ConsensusJob

    job = ConsensusJob.objects.select_related("project").filter(pk=job_id).first()
    if job is None:
        return "skipped: not queued"
    try:
        consensus_job_run(job=job, worker=job_worker(self))
    except JobNotQueued:
        return "skipped: not queued"
    except Exception:
        # The service recorded the error on the row for the curator.
        return f"failed: {job.error[:200]}"
    return f"done: version {job.consensus.version}"


@shared_task(name="annotation.tasks.import_run", bind=True)
def import_run(self, job_id: int) -> str:
    """Import the file of a queued import job. A retry of one that already started is refused,
    not run twice."""
    from annotation.imports.jobs import import_job_run
    from annotation.models import ImportJob

    job = ImportJob.objects.select_related("project", "created_by").filter(pk=job_id).first()
    if job is None:
        return "skipped: not queued"
    try:
        import_job_run(job=job, worker=job_worker(self))
    except JobNotQueued:
        return "skipped: not queued"
    except Exception:
        # The service recorded the error on the row; the write rolled back whole.
        return f"failed: {job.error[:200]}"
    if job.status == ImportJob.Status.FAILED:
        return f"failed: {job.error[:200]}"
    return f"done: batch {job.report.get('batch_id')}"
