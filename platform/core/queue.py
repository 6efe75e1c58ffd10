"""Enqueue Celery work only once the surrounding transaction has committed.

A task sent inside a transaction that later rolls back would run against rows that never
existed; one sent before commit can run before its rows are visible. Every service that
starts background work goes through here.

The row is the source of truth, the message only a wake-up call: every task claims its row
(`status=queued` → running) so a duplicate message is a no-op. That lets a broker outage lose
nothing: a message that could not be sent, or that a restarted broker forgot, is sent again by
every worker each time it (re)connects to the broker (`config.celery.ResendUnstarted` calls
`unstarted_resend`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from django.db import transaction
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

# What publishing raises when the broker is down or unreachable (after Celery's own retries).
BROKER_ERRORS = (OperationalError, OSError)


def enqueue_on_commit(
    task,
    *args,
    using: str | None = None,
    on_unsent: Callable[[Exception], None] | None = None,
    **kwargs,
) -> None:
    transaction.on_commit(partial(send, task, *args, on_unsent=on_unsent, **kwargs), using=using)


def send(task, *args, on_unsent: Callable[[Exception], None] | None = None, **kwargs) -> bool:
    """Publish `task`; when the broker is unreachable, log it and leave the row queued.

    The caller's transaction has already committed, so raising here would only turn a saved
    launch into an error page that invites a second launch.
    """
    try:
        task.apply_async(args=args, kwargs=kwargs)
    except BROKER_ERRORS as exc:
        logger.warning(
            "broker unreachable, %s%r not sent (%s); a worker sends it when it reconnects",
            task.name, args, exc,
        )  # fmt: skip
        if on_unsent is not None:
            on_unsent(exc)
        return False
    return True
