"""Celery tasks of the plumbing: thin interfaces that call `core.jobs`."""

from __future__ import annotations

from celery import shared_task

from core.jobs import jobs_sweep


@shared_task(name="core.tasks.jobs_reap_stale")
def jobs_reap_stale() -> int:
    """Fail the running jobs of every kind whose worker is lost, and settle what waited on
    finished ones (`core.jobs.jobs_sweep`). Every worker already does this on its own
    heartbeat; this is for a schedule (Celery beat) where no worker may be left."""
    return jobs_sweep()
