"""Enqueue Celery work only once the surrounding transaction has committed, by task name.

A task sent inside a transaction that later rolls back would run against rows that never
existed; one sent before commit can run before its rows are visible. Every service that
starts background work goes through here.

Tasks are named, never imported: a service says `enqueue_on_commit("training.tasks.run_train",
run.pk)`, so no service imports the module of the worker that runs it (which imports the
services). The name is looked up in the current Celery app's registry and sent with the task's
own `apply_async`, so the routes in settings and `task_always_eager` apply as to a direct call.

The row is the source of truth, the message only a wake-up call: every task claims its row
(`status=queued` → running) so a duplicate message is a no-op. That lets a broker outage lose
nothing: a message that could not be sent, or that a restarted broker forgot, is sent again by
every worker each time it (re)connects to the broker (the Celery app's `ResendUnstarted` step
calls `core.jobs.unstarted_resend`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

from celery import Task, current_app
from django.db import transaction
from kombu.exceptions import OperationalError

logger = logging.getLogger(__name__)

# What publishing raises when the broker is down or unreachable (after Celery's own retries).
BROKER_ERRORS = (OperationalError, OSError)


def task_named(name: str) -> Task:
    """The registered task called `name`; raises NotRegistered (a KeyError) for an unknown one.

    Celery discovers the apps' `tasks` modules lazily (when a worker starts); a web process
    that has not imported one yet discovers them on the first miss.
    """
    tasks = current_app.tasks
    if name not in tasks:
        current_app.autodiscover_tasks(force=True)
    return tasks[name]


def enqueue_on_commit(
    name: str,
    *args,
    using: str | None = None,
    on_unsent: Callable[[Exception], None] | None = None,
    **kwargs,
) -> None:
    task_named(name)  # an unknown name fails now, inside the caller's transaction
    transaction.on_commit(partial(send, name, *args, on_unsent=on_unsent, **kwargs), using=using)


def send(name: str, *args, on_unsent: Callable[[Exception], None] | None = None, **kwargs) -> bool:
    """Publish the task `name`; when the broker is unreachable, log it and leave the row queued.

    The caller's transaction has already committed, so raising here would only turn a saved
    launch into an error page that invites a second launch.
    """
    try:
        task_named(name).apply_async(args=args, kwargs=kwargs)
    except BROKER_ERRORS as exc:
        logger.warning(
            "broker unreachable, %s%r not sent (%s); a worker sends it when it reconnects",
            name, args, exc,
        )  # fmt: skip
        if on_unsent is not None:
            on_unsent(exc)
        return False
    return True
