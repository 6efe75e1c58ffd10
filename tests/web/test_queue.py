"""Background work is sent only when its transaction commits, on the real broker."""

from __future__ import annotations

import pytest
from django.db import transaction
from kombu import pools

from core.queue import enqueue_on_commit
from annotation.tasks import leases_expire
from config.celery import app


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
    its default queue emptied."""
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
        conn.default_channel.queue_declare(queue="default", durable=True, auto_delete=False)
        conn.default_channel.queue_purge("default")
    yield
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge("default")
    app.conf.broker_transport_options = old
    _reconnect()


@pytest.mark.django_db(transaction=True)
def test_a_task_enqueued_in_a_rolled_back_transaction_is_never_sent(empty_queue):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            enqueue_on_commit(leases_expire)
            raise RuntimeError("roll back")
    assert queued() == 0


@pytest.mark.django_db(transaction=True)
def test_a_task_enqueued_in_a_committed_transaction_is_sent_once(empty_queue):
    with transaction.atomic():
        enqueue_on_commit(leases_expire)
        assert queued() == 0  # not before the commit
    assert queued() == 1
