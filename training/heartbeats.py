"""Liveness of claimed work (a training run, a generation job): the thread that keeps a
claimed row's `heartbeat_at` fresh while its worker works, and the bound past which the reapers
(`runs_reap_stale`, `generation_jobs_reap_stale`) take a silent worker for lost."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

logger = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Refreshes a running row's `heartbeat_at` (a training run's, a generation job's) from its
    own thread (and DB connection) while the worker that claimed it works on it."""

    def __init__(self, model, pk: int, worker: str, interval: float) -> None:
        super().__init__(name=f"heartbeat-{model._meta.model_name}-{pk}", daemon=True)
        self.model, self.pk, self.worker, self.interval = model, pk, worker, interval
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.wait(self.interval):
                try:
                    self.model.objects.filter(
                        pk=self.pk, worker=self.worker, status="running"
                    ).update(heartbeat_at=timezone.now())
                except Exception:  # noqa: BLE001 - retry on the next beat
                    logger.exception("%s %s: heartbeat failed", self.model.__name__, self.pk)
        finally:
            connection.close()


def stale_bound(now, stale_after: float | None):
    """(now, the stale bound in seconds, the oldest heartbeat still alive) for the reapers."""
    now = now or timezone.now()
    bound = stale_after if stale_after is not None else settings.TRAINING_STALE_AFTER_SECONDS
    return now, bound, now - timedelta(seconds=bound)
