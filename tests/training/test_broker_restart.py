"""The broker restarts under a real worker: nothing queued is lost and nothing runs twice.

A private `redis-server` (no persistence, so a restart forgets every queued message: the worst
case) on a free port; a real `manage.py worker` (solo pool) on the test database.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from django.urls import reverse
from runs_testutils import Worker, base_artifact, celery_broker, snapshot_row, wait_for

from annotation.models import Role
from training import runs
from training.engine import read_events
from training.models import ModelArtifact, TrainingRun

pytestmark = [
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


class Redis:
    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log, self.proc = port, log, None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--logfile", str(self.log)],
        )  # fmt: skip

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(up, 20, what="redis-server to listen")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_broker(tmp_path):
    """A private Redis, and this process's Celery app publishing to it."""
    from config.celery import app

    redis = Redis(_free_port(), tmp_path / "redis.log")
    redis.start()
    try:
        with celery_broker(app, redis.url, {"visibility_timeout": 3600}):
            yield redis
    finally:
        if redis.proc.poll() is None:
            redis.kill()


def _starts(run: TrainingRun) -> list[dict]:
    events = read_events(Path(run.output_dir) / "progress.jsonl")
    return [e for e in events if e["event"] == "start"]


def test_it_loses_no_queued_run_and_runs_none_twice_when_the_broker_restarts(
    redis_broker, client, settings, tmp_path, tiny, make_user, project_factory
):
    settings.DATA_DIR = tmp_path / "data"
    engineer = make_user("engineer", is_staff=True)
    project = project_factory("alpha", prompts=1, members=[(engineer, Role.ENGINEER)])
    snapshot = snapshot_row(project, "sft", tiny["snap_sft"])
    parent = base_artifact(tiny["policy"], project=project)

    def launch(max_steps: int, **extra) -> TrainingRun:
        config = {"per_device_train_batch_size": 4, "max_length": 64, "learning_rate": 1e-3,
                  "max_steps": max_steps, **extra}  # fmt: skip
        return runs.run_launch(stage="sft", config=config, snapshots=[snapshot],
                                   parent=parent, user=engineer)  # fmt: skip

    def status(run: TrainingRun, *wanted: str):
        def check():
            fresh = TrainingRun.objects.get(pk=run.pk)
            return fresh if fresh.status in wanted else None

        return check

    worker = Worker(None, tmp_path / "worker.log", env={"CELERY_BROKER_URL": redis_broker.url})
    try:
        worker.wait_ready(timeout=90)
        # A long run keeps the (solo) worker busy; the next run waits in the broker's queue.
        busy = launch(3000, save_steps=1000)
        wait_for(lambda: TrainingRun.objects.get(pk=busy.pk).step >= 3, 90, what="3 steps")
        waiting = launch(3)
        assert TrainingRun.objects.get(pk=waiting.pk).status == "queued"

        redis_broker.kill()  # the queued message of `waiting` is gone with it
        # Launched while the broker is down: saved, not sent (another seed: the same launch
        # as `waiting` would be `waiting`).
        unsent = launch(3, seed=1)
        unsent.refresh_from_db()
        assert unsent.status == "queued" and "broker was unreachable" in unsent.advice
        client.force_login(engineer)
        page = client.get(reverse("training:run", args=[unsent.pk])).content.decode()
        assert "broker was unreachable" in page
        redis_broker.start()  # empty: it remembers nothing

        runs.run_cancel(run=busy)  # frees the worker, which then finds its broker gone
        busy = wait_for(status(busy, "cancelled", "failed", "succeeded"), 60, what="the cancel")
        assert busy.status == "cancelled", (busy.error, worker.tail())

        # The worker reconnects and re-sends what the database still has queued.
        for run in (waiting, unsent):
            run = wait_for(status(run, "succeeded", "failed"), 120, what=f"run {run.pk}")
            assert run.status == "succeeded", (run.error, worker.tail())
            assert run.step == 3 and run.advice == ""
            assert len(_starts(run)) == 1, "a run executed twice"
            assert ModelArtifact.objects.filter(run=run).count() == 1
        assert len(_starts(busy)) == 1
        assert worker.proc.poll() is None, "the worker died instead of reconnecting"
        assert "re-sent queued work" in worker.tail(50_000)
    finally:
        worker.stop()
