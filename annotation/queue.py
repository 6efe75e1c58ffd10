"""Enqueue Celery work only once the surrounding transaction has committed.

A task sent inside a transaction that later rolls back would run against rows that never
existed; one sent before commit can run before its rows are visible. Every service that
starts background work goes through here.
"""

from __future__ import annotations

from functools import partial

from django.db import transaction


def enqueue_on_commit(task, *args, using: str | None = None, **kwargs) -> None:
    transaction.on_commit(partial(task.apply_async, args=args, kwargs=kwargs), using=using)
