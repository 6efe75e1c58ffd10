"""Helpers for the run and worker tests (a unique module name: tests/ dirs share sys.path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.databases import database_url

ROOT = Path(__file__).resolve().parents[2]

# A few optimizer steps of the tiny models: seconds on a CPU.
FAST = {"max_steps": 3, "per_device_train_batch_size": 4, "max_length": 64,
        "learning_rate": 1e-3, "save_steps": 2}  # fmt: skip


def snapshot_row(project, kind: str, path: str):
    """A ready Snapshot row pointing at a directory written in the contract format."""
    from annotation.models import Snapshot

    manifest = json.loads((Path(path) / "manifest.json").read_text())
    return Snapshot.objects.create(
        project=project,
        kind=kind,
        status=Snapshot.Status.READY,
        sha256=manifest["sha256"],
        path=str(path),
        manifest=manifest,
        row_count=sum(s["rows"] for s in manifest["splits"].values()),
    )


def base_artifact(path: str, name: str = "tiny-base", project=None):
    """A registered base model; of `project` (a model of no project: superusers only)."""
    from training.models import ModelArtifact

    return ModelArtifact.objects.create(
        name=name, stage="pretrain", path=str(path), project=project
    )


def checkpoint_write(run, step: int, *, resumable: bool = True) -> Path:
    """A complete checkpoint-<step> in the run's output folder, marked as the engine marks one
    (what a resume looks for on disk; its files are stand-ins)."""
    from training.engine import checkpoints

    path = checkpoints.checkpoint_dir(run.output_dir) / f"checkpoint-{step}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    checkpoints.mark_complete(path, step, resumable=resumable)
    return path


def admin_action(client, changelist: str, action: str, objects):
    """POST an action of an admin changelist (e.g. "training_trainingrun") on `objects`, as the
    action menu above the list does."""
    from django.urls import reverse

    return client.post(
        reverse(f"admin:{changelist}_changelist"),
        {"action": action, "_selected_action": [o.pk for o in objects]},
    )


def messages_of(response) -> list[str]:
    """The messages a response queued for the next page (flash messages)."""
    from django.contrib.messages import get_messages

    return [str(m) for m in get_messages(response.wsgi_request)]


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# Celery's `conf.broker_url` returns the CELERY_BROKER_URL environment variable whenever it is set,
# before any configured value (celery/app/utils.py `Settings.broker_url`; the read and write URLs
# likewise prefer CELERY_BROKER_READ_URL / CELERY_BROKER_WRITE_URL, then fall back to it).
_BROKER_ENV = ("CELERY_BROKER_URL", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL")


def celery_pools_reset(app) -> None:
    """Drop this process's broker connections and producers: the next publish reconnects with
    the app's current configuration (the pools are built once and keyed on the old one)."""
    from kombu import pools

    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@contextmanager
def celery_broker(app, url: str, transport_options: dict) -> Iterator[None]:
    """Make this process publish to the broker at `url`, then restore what was there.

    Assigning `app.conf.broker_url` alone is silently ignored where CELERY_BROKER_URL is set
    (CI's Redis pass): Celery reads the variable first. So the variable is pointed at `url`
    too (and the read/write variants, which would win over both, are cleared) for as long as
    the block lasts; a worker subprocess started meanwhile inherits the same broker.
    """
    old_env = {name: os.environ.get(name) for name in _BROKER_ENV}
    old_conf = app.conf.broker_url, app.conf.broker_transport_options
    for name in _BROKER_ENV:
        os.environ.pop(name, None)
    os.environ["CELERY_BROKER_URL"] = url
    app.conf.broker_url, app.conf.broker_transport_options = url, transport_options
    celery_pools_reset(app)
    try:
        yield
    finally:
        for name, value in old_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        app.conf.broker_url, app.conf.broker_transport_options = old_conf
        celery_pools_reset(app)


class Worker:
    """A real `manage.py worker` process on the test database and an isolated broker."""

    def __init__(
        self,
        broker_dir: Path | None,
        log_path: Path,
        env: dict | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.name = f"test-{uuid.uuid4().hex[:8]}"
        self.log_path = log_path
        full_env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "DJANGO_DEBUG": "1",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TRAINING_HEARTBEAT_SECONDS": "1",
            "TRAINING_STALE_AFTER_SECONDS": "6",
            **(env or {}),
        }
        if broker_dir is not None:
            full_env["CELERY_BROKER_DIR"] = str(broker_dir)
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "worker",
                "-Q",
                "default,training",
                "-c",
                "1",
                "-P",
                "solo",
                "-l",
                "INFO",
                "-n",
                f"{self.name}@%h",
                *args,
            ],  # fmt: skip
            cwd=ROOT,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        from training.models import WorkerHeartbeat

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.tail()}")
            return WorkerHeartbeat.objects.filter(hostname__startswith=self.name).exists()

        wait_for(ready, timeout, 0.3, "the worker to start")

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def worker_started(broker_dir: Path | None, log_path: Path, db_blocker, *, timeout: float = 90,
                   **options) -> Worker:  # fmt: skip
    """A `Worker` that has sent its first heartbeat (stopped again if it never does)."""
    proc = Worker(broker_dir, log_path, **options)
    with db_blocker.unblock():
        try:
            proc.wait_ready(timeout=timeout)
        except AssertionError:
            proc.stop()
            raise
    return proc


@contextmanager
def filesystem_broker(tmp_path_factory) -> Iterator[Path | None]:
    """Point this process's Celery app at a private filesystem broker for as long as the block
    lasts, yielding its folder for the workers; with Redis (CI's PostgreSQL pass) nothing
    changes and the block yields None."""
    from config.celery import app

    if not app.conf.broker_url.startswith("filesystem"):
        yield None
        return
    root = tmp_path_factory.mktemp("broker")
    for sub in ("queue", "processed"):
        (root / sub).mkdir()
    old = app.conf.broker_transport_options
    app.conf.broker_transport_options = {
        "data_folder_in": str(root / "queue"),
        "data_folder_out": str(root / "queue"),
        "processed_folder": str(root / "processed"),
        "store_processed": False,
    }
    celery_pools_reset(app)
    try:
        yield root
    finally:
        app.conf.broker_transport_options = old
        celery_pools_reset(app)
