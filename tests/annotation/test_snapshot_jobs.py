"""A snapshot build is a job like a training run: one per request while it is unfinished,
claimed once, kept alive by a heartbeat, and failed with what to do when its worker is lost."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from annotation import services
from annotation.exports import snapshot_build, snapshot_request
from annotation.exports import snapshots as snapshots_module
from annotation.models import Snapshot
from core.jobs import jobs_reap_stale


@pytest.fixture
def project(db):
    project = services.project_create(name="Jobs", slug="jobs")
    services.prompts_create(project=project, items=[{"text": f"Prompt {i}"} for i in range(3)])
    return project


def request(project, **filters):
    return snapshot_request(
        project=project, kind="prompts", filters={"test_size": 0, **filters}, enqueue=False
    )


def test_a_snapshot_left_building_by_a_lost_worker_is_failed_with_what_to_do(project):
    """Kills mutations: the sweep skipping snapshots (their kind not registered), or reaping a
    build whose heartbeat is fresh."""
    lost, alive = request(project, seed="1"), request(project, seed="2")
    old = timezone.now() - timedelta(seconds=120)
    Snapshot.objects.filter(pk=lost.pk).update(
        status="building", worker="cpu-1 pid 5", started_at=old, heartbeat_at=old
    )
    Snapshot.objects.filter(pk=alive.pk).update(
        status="building", worker="cpu-2 pid 6", started_at=old, heartbeat_at=timezone.now()
    )

    assert jobs_reap_stale(stale_after=60) == 1

    lost.refresh_from_db()
    assert lost.status == Snapshot.Status.FAILED and lost.finished_at is not None
    assert "Worker lost" in lost.error and "cpu-1 pid 5" in lost.error
    assert "build the snapshot again" in lost.error
    assert Snapshot.objects.get(pk=alive.pk).status == Snapshot.Status.BUILDING
    assert jobs_reap_stale(stale_after=60) == 0


@pytest.mark.django_db(transaction=True)
def test_a_build_keeps_its_heartbeat_fresh_while_it_writes(project, settings, monkeypatch):
    """The heartbeat is refreshed while the files are written, so the sweep never takes a long
    build for a lost one. Kills mutation: snapshot_build without its heartbeat."""
    settings.TRAINING_HEARTBEAT_SECONDS = 1
    real = snapshots_module.build_directory
    beats = []

    def slow_build(**kwargs):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = Snapshot.objects.get(pk=snapshot.pk)
            if row.heartbeat_at > row.started_at:
                beats.append(row.heartbeat_at)
                break
            time.sleep(0.1)
        return real(**kwargs)

    monkeypatch.setattr(snapshots_module, "build_directory", slow_build)
    snapshot = request(project)
    snapshot_build(snapshot=snapshot, worker="cpu-1 pid 5")

    snapshot.refresh_from_db()
    assert beats, "no heartbeat within 10 s"
    assert snapshot.status == Snapshot.Status.READY and snapshot.worker == "cpu-1 pid 5"


def test_the_same_request_while_unfinished_is_the_same_snapshot(project):
    """Kills mutation: job_get_or_create always creating."""
    first = request(project)
    again = snapshot_request(  # the same request, a default spelled out
        project=project, kind="prompts", filters={"test_size": 0.0, "seed": "0"}, enqueue=False
    )
    assert again.pk == first.pk and again.reused and not first.reused
    other = request(project, seed="1")
    assert other.pk != first.pk and not other.reused

    snapshot_build(snapshot=first)
    after = request(project)  # finished: a new request builds from today's data
    assert after.pk not in (first.pk, other.pk) and not after.reused
    assert Snapshot.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_requests_make_one_snapshot(project):
    """Both requests miss the other's row when they read; the database lets one insert win and
    the other answers with its row. Forced: the second request inserts while the first has
    inserted and not committed.

    Kills mutation: the constraint among unfinished snapshots dropped (two rows)."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serializes writers: the second request reads after the first commits")
    inserted, release, results, errors = threading.Event(), threading.Event(), {}, []

    def first():
        try:
            with transaction.atomic():
                results["first"] = request(project)
                inserted.set()
                release.wait(30)
        except Exception as error:  # noqa: BLE001 - asserted below
            errors.append(repr(error))
        finally:
            inserted.set()
            connection.close()

    def second():
        try:
            results["second"] = request(project)
        except Exception as error:  # noqa: BLE001 - asserted below
            errors.append(repr(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    inserted.wait(30)
    threads[1].start()
    _until(_someone_waits_on_a_lock, 10)  # the second insert, on the first's row
    release.set()
    for thread in threads:
        thread.join(30)

    assert not errors, errors
    assert results["second"].pk == results["first"].pk and results["second"].reused
    assert Snapshot.objects.count() == 1


def _someone_waits_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def _until(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_a_worker_never_reaps_a_job_it_is_running_itself(project, settings):
    """A worker's sweep runs in the process that runs its jobs. On a starved machine the job's
    own heartbeat can fall behind the stale bound while the job still works; the sweep in that
    process knows the job is alive and leaves it to finish (other workers' sweeps, which cannot
    know, still reap it once its process is gone). Seen in a full test run under load: a worker
    failed its own run as 'Worker lost' and the run's finish was then refused."""
    from core.jobs import job_heartbeat

    settings.TRAINING_HEARTBEAT_SECONDS = 3600  # the job's own beat never comes in this test
    mine, lost = request(project, seed="1"), request(project, seed="2")
    old = timezone.now() - timedelta(seconds=120)
    for snap, worker in ((mine, "cpu-1 pid 5"), (lost, "cpu-2 pid 6")):
        Snapshot.objects.filter(pk=snap.pk).update(
            status="building", worker=worker, started_at=old, heartbeat_at=old
        )

    with job_heartbeat(Snapshot, mine.pk, worker="cpu-1 pid 5"):
        assert jobs_reap_stale(stale_after=60) == 1
    assert Snapshot.objects.get(pk=mine.pk).status == Snapshot.Status.BUILDING
    assert Snapshot.objects.get(pk=lost.pk).status == Snapshot.Status.FAILED
    # Once the job's block has ended in this process, nothing here vouches for it any more.
    assert jobs_reap_stale(stale_after=60) == 1
    assert Snapshot.objects.get(pk=mine.pk).status == Snapshot.Status.FAILED
