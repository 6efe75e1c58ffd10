"""Celery tasks of the annotation app: thin interfaces that call services."""

from __future__ import annotations

from celery import shared_task

from annotation import services


@shared_task(name="annotation.tasks.leases_expire")
def leases_expire() -> int:
    """Tidy leases past their expiry (they already stopped counting against the overlap)."""
    return services.leases_expire()
