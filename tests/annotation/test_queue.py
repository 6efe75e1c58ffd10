"""Background work is sent only when its transaction commits, on the real broker."""

from __future__ import annotations

import pytest
from django.db import transaction

from annotation.queue import enqueue_on_commit
from annotation.tasks import leases_expire
from config.celery import app


def queued(queue: str = "default") -> int:
    with app.connection_for_write() as conn:
        return conn.default_channel.queue_declare(
            queue=queue, passive=False, durable=True, auto_delete=False
        ).message_count


@pytest.fixture
def empty_queue():
    with app.connection_for_write() as conn:
        conn.default_channel.queue_declare(queue="default", durable=True, auto_delete=False)
        conn.default_channel.queue_purge("default")
    yield
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge("default")


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
