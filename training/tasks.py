"""Celery tasks of the training side: thin interfaces that fetch by id and call services.

Training (`run_train`) goes to the `training` queue (settings route `training.tasks.*` there;
a GPU worker takes one run per GPU); light work is routed to `default` by name in settings.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from django.conf import settings
from django.db import connection

from core.jobs import job_worker, jobs_sweep
from training import arena, base_models, execution, generation, playground, rounds, workers

logger = logging.getLogger(__name__)


@shared_task(name="training.tasks.run_train", bind=True, acks_late=True)
def run_train(self, run_id: int) -> str:
    # The database claim inside run_execute makes a redelivered or duplicated message a no-op.
    return execution.run_execute(run_id=run_id, worker=job_worker(self))


@shared_task(name="training.tasks.generation_run", bind=True)
def generation_run(self, job_id: int) -> str:
    return generation.generation_execute(job_id=job_id, worker=job_worker(self))


@shared_task(name="training.tasks.arena_battles_create")
def arena_battles_create(battle_set_id: int) -> str:
    # Idempotent: the set's status, read under a lock, says whether its battles exist.
    return arena.battles_create(battle_set_id=battle_set_id)


@shared_task(name="training.tasks.playground_generate", bind=True, max_retries=None)
def playground_generate(self, session_id: int, turn: int) -> str:
    try:
        return playground.playground_generate(session_id=session_id, turn=turn)
    except playground.NoSlot:
        # Every slot is taken: look again shortly rather than hold this worker while waiting.
        raise self.retry(countdown=1) from None


@shared_task(name="training.tasks.round_run", bind=True)
def round_run(self, round_id: int) -> str:
    return rounds.round_execute(round_id=round_id, worker=job_worker(self))


@shared_task(name="training.tasks.base_model_fetch", bind=True)
def base_model_fetch(self, job_id: int) -> str:
    return base_models.base_model_fetch_execute(job_id=job_id, worker=job_worker(self))


# --- Worker presence: devices for the workers page, and the sweeper of lost jobs of every kind -

_stop = threading.Event()
_beat_thread: threading.Thread | None = None


def _beat(hostname: str, queues: list[str]) -> None:
    try:
        workers.worker_heartbeat_record(hostname=hostname, pid=os.getpid(), queues=queues)
        jobs_sweep()  # every kind: snapshot builds, runs, generation jobs; then battle sets
    except Exception:  # noqa: BLE001 - presence is best effort; the next beat retries
        logger.exception("worker heartbeat failed")


def _beat_loop(hostname: str, queues: list[str]) -> None:
    try:
        while not _stop.wait(settings.TRAINING_HEARTBEAT_SECONDS):
            _beat(hostname, queues)
        # Shutting down: say so now, not a stale bound later, so that the demo and the pages of
        # queued work stop counting on this worker. Written here, after the last beat, so no
        # beat can undo it.
        workers.worker_stopped_record(hostname=hostname, pid=os.getpid())
    except Exception:  # noqa: BLE001 - best effort: the heartbeat goes stale anyway
        logger.exception("could not record the worker's shutdown")
    finally:
        connection.close()


@worker_ready.connect
def _on_worker_ready(sender=None, **kwargs) -> None:
    """Record this worker's devices and sweep lost jobs (snapshot builds, runs, generation jobs)
    now and every heartbeat interval, so that work whose worker was killed is failed within the
    stale bound without Celery beat."""
    hostname = getattr(sender, "hostname", None) or "worker"
    try:
        queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values())
    except Exception:  # noqa: BLE001
        queues = []
    global _beat_thread
    _beat(hostname, queues)
    connection.close()  # the beat thread and the tasks use their own connections
    _beat_thread = threading.Thread(
        target=_beat_loop, args=(hostname, queues), name="worker-heartbeat", daemon=True
    )
    _beat_thread.start()
    atexit.register(worker_presence_end)  # a cold shutdown sends no `worker_shutdown`


@worker_shutting_down.connect
def _on_worker_shutting_down(**kwargs) -> None:
    """The first Ctrl+C or SIGTERM: the worker takes no more work. Runs inside the signal
    handler, so it only wakes the beat thread, which records the stop on its own connection."""
    _stop.set()


@worker_shutdown.connect
def _on_worker_shutdown(**kwargs) -> None:
    worker_presence_end()


def worker_presence_end(timeout: float = 10.0) -> None:
    """Stop the heartbeats and wait (bounded) until the beat thread has recorded the stop: it
    is a daemon thread, which the process would not wait for. Idempotent."""
    _stop.set()
    if _beat_thread is not None and _beat_thread is not threading.current_thread():
        _beat_thread.join(timeout)
