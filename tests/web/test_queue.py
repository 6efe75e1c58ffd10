"""Background work is sent only when its transaction commits, on the real broker, by name."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from celery.exceptions import NotRegistered
from django.db import transaction
from kombu import pools

from config.celery import app
from core.queue import enqueue_on_commit, task_named

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ("default", "training")


def queued(queue: str = "default") -> int:
    with app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(
            queue=queue, passive=False, durable=True, auto_delete=False
        ).message_count


def _reconnect() -> None:
    # The connection and producer pools are built once, with the broker options of that moment.
    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def empty_queue(tmp_path):
    """The embedded broker in this test's own folder, so the queue counted (and purged) here is
    never the one a developer's running platform uses; Redis: the test run's configured broker,
    its default and training queues emptied."""
    old = app.conf.broker_transport_options
    if app.conf.broker_url.startswith("filesystem"):
        folder = tmp_path / "broker"
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True)
        app.conf.broker_transport_options = {
            **old,
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
        }
        _reconnect()
    with app.connection_for_write() as conn:
        for queue in QUEUES:
            conn.default_channel.queue_declare(queue=queue, durable=True, auto_delete=False)
            conn.default_channel.queue_purge(queue)
    yield
    with app.connection_for_write() as conn:
        for queue in QUEUES:
            conn.default_channel.queue_purge(queue)
    app.conf.broker_transport_options = old
    _reconnect()


@pytest.mark.django_db(transaction=True)
def test_a_task_enqueued_in_a_rolled_back_transaction_is_never_sent(empty_queue):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            enqueue_on_commit("annotation.tasks.leases_expire")
            raise RuntimeError("roll back")
    assert queued() == 0


@pytest.mark.django_db(transaction=True)
def test_a_task_enqueued_in_a_committed_transaction_is_sent_once(empty_queue):
    with transaction.atomic():
        enqueue_on_commit("annotation.tasks.leases_expire")
        assert queued() == 0  # not before the commit
    assert queued() == 1


@pytest.mark.django_db(transaction=True)
def test_a_task_sent_by_name_follows_the_routes_in_settings(empty_queue):
    """`training.tasks.*` goes to the training queue, the light training tasks to default."""
    with transaction.atomic():
        enqueue_on_commit("training.tasks.run_train", 0)
        enqueue_on_commit("training.tasks.generation_run", 0)
    assert (queued("training"), queued("default")) == (1, 1)


@pytest.mark.django_db(transaction=True)
def test_an_unknown_task_name_fails_inside_the_transaction_and_sends_nothing(empty_queue):
    with pytest.raises(NotRegistered):
        with transaction.atomic():
            enqueue_on_commit("training.tasks.no_such_task", 0)
    assert queued() == 0


def test_every_thread_finds_the_task_in_the_project_app():
    """A web request or a service's own thread has no Celery app of its own: it must publish
    through the project's app (its broker and routes), not Celery's built-in fallback."""
    found = []
    thread = threading.Thread(target=lambda: found.append(task_named("training.tasks.run_train")))
    thread.start()
    thread.join()
    assert found[0].app is app


def test_a_process_that_never_imported_a_tasks_module_finds_its_task_by_name():
    """The web process publishes tasks whose module no code of it imports."""
    code = (
        "import sys, django; django.setup();"
        "from core.queue import task_named;"
        "assert 'training.tasks' not in sys.modules, 'imported at start-up';"
        "print(task_named('training.tasks.run_train').name)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "training.tasks.run_train"
