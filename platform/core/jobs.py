"""The one lifecycle of background work (snapshot builds, training runs, generation jobs,
imports, task batches, consensus).

1. A request makes the job row first and sends the task only its id; the same request made
   again while that job is unfinished gets the same job (`job_get_or_create`, Sentry's data
   export): one request, one job, however often it is sent.
2. The worker claims the row, queued → running, in one conditional UPDATE (`job_claim`): a
   redelivered or re-sent message, or a retry of a job that already started, finds it claimed
   and does nothing (Zulip's deferred work).
3. While it works, a thread refreshes the row's heartbeat, and its progress if it reports one
   (`job_heartbeat`).
4. A running job whose heartbeat is older than the stale bound lost its worker (killed, its
   machine gone): `jobs_reap_stale` fails it, with what to do next in the kind's own words
   (`Job.lost_fields`). Every worker sweeps every kind on its heartbeat (`jobs_sweep`), then
   runs the settlers apps register: work that a lost message left waiting on finished jobs
   (a battle set whose generation jobs all finished) is finished there.

Each app registers its kinds in its AppConfig.ready (`job_kind_register`); what must visit every
kind (`unstarted_resend` after a broker outage, the sweep) iterates `job_kinds()`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from celery.signals import worker_process_init
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from core.models import Job
from core.queue import send

logger = logging.getLogger(__name__)

J = TypeVar("J", bound=Job)


# --- Kinds ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobKind:
    label: str  # how reports count them: "snapshots", "runs", "generation"
    model: type[Job]
    task: str  # the registered name of the Celery task that executes one, given its id


_kinds: dict[type[Job], JobKind] = {}


def job_kind_register(*, label: str, model: type[Job], task: str) -> None:
    """Make a kind of job known to the lifecycle (from its app's AppConfig.ready)."""
    _kinds[model] = JobKind(label=label, model=model, task=task)


def job_kinds() -> list[JobKind]:
    return list(_kinds.values())


def job_kind(model: type[Job]) -> JobKind:
    return _kinds[model]


# --- Request (or reuse) -------------------------------------------------------------------------


def job_fingerprint(**inputs) -> str:
    """sha256 of a request's canonical inputs (sorted keys, compact JSON): the same request
    spelled in another order, or sent again, has the same fingerprint."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def job_get_or_create(model: type[J], *, fingerprint: str, defaults: dict) -> tuple[J, bool]:
    """The unfinished job of this request, or a new queued one made from `defaults`.

    Returns (job, created); a found job has `reused` set. Two requests that race both miss the
    read; the database's constraint (`core.models.one_unfinished_per_request`) lets one insert
    win and the other, refused, answers with the winner's row. Call it inside the transaction
    that completes the job's row (its relations, its task on commit).
    """
    unfinished = model.objects.filter(fingerprint=fingerprint, status__in=model.unfinished())
    job = unfinished.first()
    if job is None:
        try:
            # A savepoint: a refused insert must not break the caller's transaction.
            with transaction.atomic():
                return model.objects.create(fingerprint=fingerprint, **defaults), True
        except IntegrityError:
            # On PostgreSQL the insert waited for the winner's transaction and failed once it
            # committed, so the winner's row is visible now.
            job = unfinished.first()
            if job is None:
                raise
    job.reused = True
    return job, False


def unstarted_resend() -> dict[str, int]:
    """Send a message again for every job still waiting for one, of every registered kind.
    Returns how many of each kind were sent (by label).

    Each task claims its row (queued → running) before working, so a message the broker still
    holds and its re-sent twin run the work once; the second finds the row claimed and stops.
    Every worker calls this on each (re)connection to the broker (`config.celery`).
    """
    sent = {}
    for kind in job_kinds():
        queued = kind.model.objects.filter(status=kind.model.QUEUED)
        ids = list(queued.order_by("pk").values_list("pk", flat=True))
        sent[kind.label] = sum(send(kind.task, pk) for pk in ids)
    return sent


# --- Claim and heartbeat ----------------------------------------------------------------------


class JobNotQueued(ValidationError):
    """A job was to be worked on in this process but is not queued: someone else claimed it
    (or it finished). Its message says what to do; a worker's task answers "skipped"."""


# The pid of the worker's main process, set in each child of a prefork pool: the pid that its
# heartbeat (the workers page) records. None in the main process (solo and threads pools).
_main_pid: int | None = None


@worker_process_init.connect
def _on_pool_child_start(**kwargs) -> None:
    global _main_pid
    _main_pid = os.getppid()


def job_worker(task) -> str:
    """Who runs a Celery task, as its job records it (the run page shows it, the reaper's
    message names it): the worker's name and its main pid, the one the workers page shows, and
    the pid of the pool process that runs the task where that is another ("celery@gpu-1 pid 41
    (task process 57)")."""
    here, main = os.getpid(), _main_pid or os.getpid()
    name = f"{task.request.hostname or 'local'} pid {main}"
    return name if here == main else f"{name} (task process {here})"


def job_claim(model: type[Job], pk: int, *, worker: str, **fields) -> bool:
    """queued → running for this worker, or False when the job is not queued (claimed by a
    twin message, started before and retried, finished or cancelled): the caller does nothing.
    `fields` are set in the same UPDATE."""
    now = timezone.now()
    claimed = model.objects.filter(pk=pk, status=model.QUEUED).update(
        status=model.RUNNING, worker=worker[:200], started_at=now, heartbeat_at=now, **fields
    )
    if not claimed:
        logger.info("%s %s: not queued (already started or finished), ignored", model.__name__, pk)
    return bool(claimed)


# How often, at most, a job's progress reaches its row (between heartbeats, when it changed).
PROGRESS_SECONDS = 1.0


class _Heartbeat(threading.Thread):
    """Refreshes a running job's `heartbeat_at` from its own thread (and database connection)
    while the worker that claimed it works on it; with `progress`, also the fields it returns,
    whenever they changed. Its own connection is what lets a job's progress be seen while the
    work holds a transaction open (an import's write)."""

    def __init__(
        self,
        model: type[Job],
        pk: int,
        worker: str,
        interval: float,
        progress: Callable[[], dict] | None = None,
    ) -> None:
        super().__init__(name=f"heartbeat-{model._meta.model_name}-{pk}", daemon=True)
        self.model, self.pk, self.worker, self.interval = model, pk, worker, interval
        self.progress = progress
        self.stop = threading.Event()

    def run(self) -> None:
        tick = min(self.interval, PROGRESS_SECONDS) if self.progress else self.interval
        beaten, written = time.monotonic(), None
        try:
            while not self.stop.wait(tick):
                current = self.progress() if self.progress else None
                if current == written and time.monotonic() - beaten < self.interval:
                    continue
                try:
                    self.model.objects.filter(
                        pk=self.pk, worker=self.worker, status=self.model.RUNNING
                    ).update(heartbeat_at=timezone.now(), **(current or {}))
                    beaten, written = time.monotonic(), current
                except Exception:  # noqa: BLE001 - retry on the next beat
                    logger.exception("%s %s: heartbeat failed", self.model.__name__, self.pk)
        finally:
            connection.close()


# The jobs this process is working on now, by model label: (model label, pk). A sweep in this
# process leaves them alone, whatever their heartbeat says (`jobs_reap_stale`).
_working: set[tuple[str, int]] = set()
_working_lock = threading.Lock()


@contextmanager
def job_heartbeat(
    model: type[Job], pk: int, *, worker: str, progress: Callable[[], dict] | None = None
) -> Iterator[None]:
    """Keep a claimed job's heartbeat fresh (every TRAINING_HEARTBEAT_SECONDS) while the block
    runs, so that it is reaped only once its worker is gone. `progress`: the row's progress
    fields now (called from the heartbeat's thread), written within PROGRESS_SECONDS of a
    change."""
    beat = _Heartbeat(model, pk, worker[:200], settings.TRAINING_HEARTBEAT_SECONDS, progress)
    key = (model._meta.label, pk)
    with _working_lock:
        _working.add(key)
    beat.start()
    try:
        yield
    finally:
        with _working_lock:
            _working.discard(key)
        beat.stop.set()
        beat.join(timeout=5)


# --- Reaping --------------------------------------------------------------------------------


def jobs_reap_stale(
    *,
    models: Iterable[type[Job]] | None = None,
    now: datetime | None = None,
    stale_after: float | None = None,
) -> int:
    """Fail the running jobs (of every registered kind unless `models` says) whose heartbeat is
    older than the stale bound (TRAINING_STALE_AFTER_SECONDS unless given), and those claimed
    before their kind had heartbeats, left running by a worker long gone. Returns how many.

    Jobs this very process is working on (inside their `job_heartbeat`) are alive whatever
    their heartbeat says: on a starved machine a job's beat can fall behind the bound while the
    job works, and the worker's own sweep must not fail it. Other processes reap it once this
    one is gone."""
    now = now or timezone.now()
    bound = settings.TRAINING_STALE_AFTER_SECONDS if stale_after is None else stale_after
    cutoff = now - timedelta(seconds=bound)
    stale = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    reaped = 0
    for model in models if models is not None else [kind.model for kind in job_kinds()]:
        with _working_lock:
            here = [pk for label, pk in _working if label == model._meta.label]
        running = model.objects.filter(stale, status=model.RUNNING).exclude(pk__in=here)
        for job in running:
            since = f" since {job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" if job.heartbeat_at else ""
            lost = (
                f"Worker lost: no heartbeat from {job.worker or 'the worker'}{since} (more than "
                f"{bound:g} s); it was killed or its machine went away."
            )
            fields = {"finished_at": now, **job.lost_fields(lost)}
            # Still running and still stale: a heartbeat or a finish since the read wins.
            updated = running.filter(pk=job.pk).update(**fields)
            reaped += updated
            if updated:
                logger.warning(
                    "%s %s: heartbeat stale%s, marked %s",
                    model.__name__, job.pk, since, fields["status"],
                )  # fmt: skip
    return reaped


# --- Settling -------------------------------------------------------------------------------

_settlers: list[Callable[[], object]] = []


def job_settler_register(settle: Callable[[], object]) -> None:
    """Register work that finishes what waits on finished jobs (from an AppConfig.ready): a
    follow-up whose message was lost, or that a reaped job never sent. It must be idempotent
    and cheap when nothing waits; every sweep calls it after reaping."""
    if settle not in _settlers:
        _settlers.append(settle)


def jobs_sweep() -> int:
    """Reap the lost jobs of every kind, then run the settlers (each on its own: one that
    fails is logged and the others still run). Returns how many jobs were reaped."""
    reaped = jobs_reap_stale()
    for settle in _settlers:
        try:
            settle()
        except Exception:  # noqa: BLE001 - the next sweep retries
            logger.exception("settler %s failed", getattr(settle, "__name__", settle))
    return reaped
