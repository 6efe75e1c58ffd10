"""Writes of worker presence: the devices and heartbeat a worker records while it is up, and
its stop. The reads (who is online, which device a run would get) are in training/selectors.py."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils import timezone

from training.models import WorkerHeartbeat


def worker_heartbeat_record(
    *, hostname: str, pid: int, queues: Sequence[str] = ()
) -> WorkerHeartbeat:
    from training.engine.resources import device_inventory

    inventory = device_inventory()
    now = timezone.now()
    worker, created = WorkerHeartbeat.objects.update_or_create(
        hostname=hostname,
        defaults={"pid": pid, "queues": list(queues), "devices": inventory["gpus"],
                  "cpu": inventory["cpu"], "seen_at": now, "stopped_at": None},
        create_defaults={"pid": pid, "queues": list(queues), "devices": inventory["gpus"],
                         "cpu": inventory["cpu"], "seen_at": now, "started_at": now},
    )  # fmt: skip
    return worker


def worker_stopped_record(*, hostname: str, pid: int) -> bool:
    """Mark a worker that is shutting down as stopped, so that nothing counts on it until its
    heartbeat goes stale. Only this process's row: a worker restarted under the same name may
    already have written its own. Returns whether a row was marked."""
    rows = WorkerHeartbeat.objects.filter(hostname=hostname, pid=pid, stopped_at__isnull=True)
    return bool(rows.update(stopped_at=timezone.now()))
