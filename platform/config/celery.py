"""The Celery app. Workers start with `python manage.py worker` (which puts platform/ on sys.path)."""

from __future__ import annotations

import logging
import os

from celery import Celery, bootsteps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

logger = logging.getLogger(__name__)

app = Celery("rlhf")
# The current app of every thread, not only of the one that loaded the settings: code outside
# config (the queue, the worker command, shared tasks) reaches it as `celery.current_app`.
# Celery's Django fix-up does this too, but only when no other app was made first.
app.set_default()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class ResendUnstarted(bootsteps.StartStopStep):
    """On every (re)connection to the broker, re-send the messages of queued work.

    A broker that restarts without persistence forgets its queues, and a launch made while it
    was down could not publish at all; in both cases the row is still `queued` in the database,
    so the worker that reconnects sends it again instead of leaving it waiting forever.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, c) -> None:
        from django.db import connection

        from core.jobs import unstarted_resend

        try:
            sent = unstarted_resend()
        except Exception:  # noqa: BLE001 - the database may be down too; the next reconnect retries
            logger.exception("could not re-send queued work")
            return
        finally:
            connection.close()  # the consumer thread must not keep a connection for the tasks
        if any(sent.values()):
            logger.warning("re-sent queued work on broker (re)connection: %s", sent)


app.steps["consumer"].add(ResendUnstarted)
