"""The demo's worker harness: the Celery worker its training runs go to.

A live worker of the training queue is used when one runs; otherwise the demo starts
`manage.py worker` as a child process that sees this process's database, broker and data, and
stops it at the end. Waiting on a run ends with an error when the worker that should train it
is gone, instead of waiting for ever.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

from core.databases import database_url
from training import runs, selectors
from training.models import ModelArtifact, TrainingRun

from . import DemoError


def worker_env() -> dict:
    """The environment of a worker that sees this process's database, broker and data."""
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url()
    env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    env["PLATFORM_DATA_DIR"] = str(Path(settings.DATA_DIR).resolve())
    env.setdefault("DJANGO_DEBUG", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return env


@dataclass
class DemoWorker:
    """The worker the demo's runs train on: a live one of the training queue, or its own."""

    out_dir: Path
    log: Callable[[str], None] = print
    proc: subprocess.Popen | None = None  # the worker this demo started, if any
    _external_noted: bool = False

    def ensure(self) -> None:
        """Use a live worker of the training queue, or start `manage.py worker` for this demo."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is None:
            queue = selectors.queue_of(TrainingRun)
            # A stopped worker is not live, however recent its last heartbeat.
            for beat in selectors.workers_live(queue=queue):
                if not self._external_noted:
                    self.log(f"     using the running worker {beat.hostname}")
                    self._external_noted = True
                return
        self.start()

    def start(self) -> None:
        """Start `manage.py worker` (training and default queues) as a child process."""
        manage = Path(settings.BASE_DIR) / "manage.py"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        logfile = (self.out_dir / "worker.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(manage),
                "worker",
                "--queues=training,default",
                "--concurrency=1",
                # solo: the worker trains in its own process, so stopping it stops training too.
                "--pool=solo",
                "--loglevel=WARNING",
                f"--hostname=rlhf-demo-{os.getpid()}@%h",
            ],
            env=worker_env(),
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
        self.log(f"     started a Celery worker (pid {self.proc.pid}, log {logfile.name})")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # warm shutdown: quick when idle, waits for a run in progress
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()  # interrupted mid-run: the run's heartbeat stops and the reaper fails it
            proc.wait()

    def wait(
        self, run: TrainingRun, poll: float = 1.0, unserved_after: float | None = None
    ) -> tuple[TrainingRun, ModelArtifact | None]:
        """Wait until the run finishes. On its own worker, stop if that worker exits; on a worker
        not its own, stop (and cancel the run) once the run has stayed queued for
        `unserved_after` seconds (the stale bound unless given) with no live worker taking its
        queue: nothing would ever start it."""
        if unserved_after is None:
            unserved_after = settings.TRAINING_STALE_AFTER_SECONDS
        last = -1
        unserved_since = None
        while True:
            run.refresh_from_db()
            if run.status in TrainingRun.FINISHED:
                break
            if self.proc is not None:
                if self.proc.poll() is not None:
                    raise DemoError(
                        f"the Celery worker exited (code {self.proc.returncode}) while run "
                        f"{run.pk} was {run.status}; see {self.out_dir / 'worker.log'}"
                    )
            elif selectors.queued_without_worker(run):
                now = time.monotonic()
                unserved_since = now if unserved_since is None else unserved_since
                if now - unserved_since >= unserved_after:
                    try:
                        runs.run_cancel(run=run)
                    except ValidationError:
                        continue  # it finished meanwhile: the next look sees how
                    queue = selectors.queue_of(TrainingRun)
                    raise DemoError(
                        f"training run {run.pk} ({run.name}) stayed queued for "
                        f"{unserved_after:g} s with no live worker taking the '{queue}' queue "
                        "(the worker the demo found has stopped), so the demo cancelled it. Start "
                        "a worker (`python manage.py worker`, or `make run`) and run the demo "
                        "again, or run it while no worker runs and it starts its own."
                    )
            else:
                unserved_since = None
            if run.step != last and run.total_steps:
                self.log(f"     run #{run.pk} step {run.step}/{run.total_steps}")
                last = run.step
            time.sleep(poll)
        artifact = ModelArtifact.objects.filter(run=run).first()
        return run, artifact

    def wait_job(self, job, *, what: str, poll: float = 0.5, unserved_after: float | None = None):
        """Wait until a queued job of the platform (`core.models.Job`: a snapshot build, a
        round, a generation job) is finished, and return it fresh. As `wait`: an error when the
        worker the demo started exits, or when no live worker takes the job's queue for
        `unserved_after` seconds (the stale bound unless given) while it is still queued."""
        if unserved_after is None:
            unserved_after = settings.TRAINING_STALE_AFTER_SECONDS
        model = type(job)
        unserved_since = None
        while True:
            job.refresh_from_db()
            if job.status not in model.unfinished():
                return job
            if self.proc is not None:
                if self.proc.poll() is not None:
                    raise DemoError(
                        f"the Celery worker exited (code {self.proc.returncode}) while {what} "
                        f"was {job.status}; see {self.out_dir / 'worker.log'}"
                    )
            elif job.status == model.QUEUED and not selectors.workers_live(
                queue=selectors.queue_of(model)
            ):
                now = time.monotonic()
                unserved_since = now if unserved_since is None else unserved_since
                if now - unserved_since >= unserved_after:
                    raise DemoError(
                        f"{what} stayed queued for {unserved_after:g} s with no live worker taking "
                        f"the '{selectors.queue_of(model)}' queue. Start a worker (`python manage.py "
                        "worker`) and run the demo again, or run it while no worker runs."
                    )
            else:
                unserved_since = None
            time.sleep(poll)
