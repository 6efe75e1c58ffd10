"""The two threads beside a snapshot build: a failure on either is the build's failure, and the
database connection is handed back before the build records it."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from snapshot_testutils import judge, prompt_with

from annotation import services
from annotation.exports import rows as rows_module
from annotation.exports import snapshot_build, snapshot_request, snapshots_root
from annotation.exports.threads import Background, prefetched
from annotation.models import Snapshot, TaskKind


def test_prefetched_gives_the_items_in_order_and_raises_their_error(db):
    def items():
        yield from range(5)
        raise ValueError("read failed")

    seen = []
    with pytest.raises(ValueError, match="read failed"):
        for item in prefetched(items(), connection):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_closing_prefetched_early_stops_the_thread_and_closes_the_items(db):
    closed = threading.Event()

    def items():
        try:
            yield from range(1000)
        finally:
            closed.set()

    reads = prefetched(items(), connection, depth=1)
    assert next(reads) == 0
    reads.close()
    assert closed.is_set()
    assert not any(t.name == "snapshot-reader" for t in threading.enumerate())


def test_background_runs_jobs_in_order_and_raises_the_first_error():
    done = []
    background = Background(depth=2)
    for i in range(10):
        background.submit(lambda i=i: done.append(i))
    background.submit(lambda: 1 / 0)
    background.submit(lambda: done.append("after the error"))
    with pytest.raises(ZeroDivisionError):
        background.close()
    assert done == list(range(10))


def _broken_texts(queryset, connection=None, quoted=False):
    raise RuntimeError("the database went away")


def _broken_after_one(function):
    calls = []

    def broken(*args):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("the database went away")
        return function(*args)

    return broken


@pytest.mark.parametrize(
    "broken",
    [
        # On the reading thread, whose error the build raises.
        lambda: ("texts_by_id", _broken_texts),
        # On the building thread, in the middle of the rows: the reading thread is stopped.
        lambda: ("_loads", _broken_after_one(rows_module._loads)),
    ],
)
def test_a_failed_read_fails_the_snapshot_and_keeps_nothing(make_user, monkeypatch, broken):
    labeler = make_user("lab")
    project = services.project_create(name="Threads", slug="threads")
    for i in range(3):
        _, (a, b), task = prompt_with(project, f"P{i}", [f"a{i}", f"b{i}"], kind=TaskKind.COMPARE)
        judge(task, labeler, {"winner": a.pk})

    monkeypatch.setattr(rows_module, *broken())
    snapshot = snapshot_request(project=project, kind="preference", enqueue=False)
    with pytest.raises(RuntimeError, match="went away"):
        snapshot_build(snapshot=snapshot)

    snapshot.refresh_from_db()  # the connection is usable on this thread again
    assert snapshot.status == Snapshot.Status.FAILED
    assert "the database went away" in snapshot.error
    assert [p.name for p in snapshots_root().iterdir()] == []


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the reads' transaction is PostgreSQL's"
)
@pytest.mark.django_db(transaction=True)
def test_a_build_leaves_the_connection_as_it_found_it(make_user):
    """The reads run in a transaction of their own with more sort memory and no JIT (`SET
    LOCAL`): the connection a Celery worker keeps goes back to autocommit and to its own
    `work_mem` and `jit`."""
    labeler = make_user("lab")
    project = services.project_create(name="Settings", slug="settings")
    for i in range(3):
        _, (a, b), task = prompt_with(project, f"P{i}", [f"a{i}", f"b{i}"], kind=TaskKind.COMPARE)
        judge(task, labeler, {"winner": a.pk})

    def settings():
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('work_mem'), current_setting('jit')")
            return cursor.fetchone()

    before = settings()

    snapshot = snapshot_build(
        snapshot=snapshot_request(project=project, kind="preference", enqueue=False)
    )

    assert snapshot.status == Snapshot.Status.READY
    assert connection.get_autocommit() and not connection.in_atomic_block
    assert settings() == before
    assert before[0] != "64MB" and before[1] == "on"  # PostgreSQL's defaults: the test can fail
