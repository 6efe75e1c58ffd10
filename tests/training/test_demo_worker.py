"""The demo and the worker it trains on: it uses a running worker only while that worker is
live, and it never waits for ever on a run that no live worker takes."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection
from runs_testutils import FAST

from training import runs, workers
from training.demo import DemoError
from training.demo.worker import DemoWorker
from training.models import TrainingRun


@pytest.fixture
def queued_run(sft_inputs, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    snapshot, parent = sft_inputs
    return runs.run_launch(stage="sft", config=FAST, snapshots=[snapshot], parent=parent,
                           name="demo sft", enqueue=False)  # fmt: skip


@pytest.fixture
def worker(tmp_path):
    logs: list[str] = []
    worker = DemoWorker(out_dir=tmp_path / "demo", log=logs.append)
    worker.logs = logs
    yield worker
    worker.stop()


def _stopped_worker(hostname: str = "celery@laptop") -> None:
    """A worker stopped a moment ago (Ctrl+C on `make run`): its last heartbeat is recent."""
    workers.worker_heartbeat_record(hostname=hostname, pid=7, queues=["default", "training"])
    assert workers.worker_stopped_record(hostname=hostname, pid=7)


@pytest.mark.django_db(transaction=True)  # whatever the started worker writes is flushed
def test_the_demo_does_not_take_a_stopped_worker_for_a_running_one(worker):
    """The reported case: `make run`, Ctrl+C, `make demo`. Kills mutation: the demo's choice of
    a running worker ignores `stopped_at` (a recent heartbeat is enough)."""
    _stopped_worker()

    worker.ensure()

    proc = worker.proc
    assert proc is not None  # it started its own
    assert not any("using the running worker" in line for line in worker.logs)
    worker.stop()
    assert proc.poll() is not None


@pytest.mark.django_db
def test_the_demo_uses_a_live_worker_of_the_training_queue(worker):
    workers.worker_heartbeat_record(hostname="celery@web-side", pid=8, queues=["default"])
    workers.worker_heartbeat_record(hostname="celery@gpu-box", pid=9, queues=["training"])

    worker.ensure()

    assert worker.proc is None
    assert worker.logs == ["     using the running worker celery@gpu-box"]


def _cancel_later(run: TrainingRun, seconds: float) -> threading.Timer:
    """End the run without the demo after `seconds` (as if its worker took and cancelled it),
    on a connection of its own: the rows must be committed, hence transactional tests."""

    def cancel():
        try:
            runs.run_cancel(run=run)
        finally:
            connection.close()

    timer = threading.Timer(seconds, cancel)
    timer.start()
    return timer


@pytest.mark.django_db(transaction=True)
def test_the_demo_stops_waiting_on_a_run_that_no_live_worker_takes(worker, queued_run):
    """Kills mutations: DemoWorker.wait loops for ever on a queued run when the worker is not its own
    (here a safety net ends the run after 20 s, so the test fails instead of hanging); the
    liveness rule ignores `stopped_at`."""
    _stopped_worker()
    safety_net = _cancel_later(queued_run, 20)
    started = time.monotonic()

    try:
        with pytest.raises(DemoError) as caught:
            worker.wait(queued_run, poll=0.02, unserved_after=0.3)
    finally:
        safety_net.cancel()

    assert 0.3 <= time.monotonic() - started < 30
    message = str(caught.value)
    assert f"training run {queued_run.pk} (demo sft) stayed queued" in message
    assert "no live worker taking the 'training' queue" in message
    assert "python manage.py worker" in message
    # Nobody is left waiting for it: a worker started later does not train it for nothing.
    assert TrainingRun.objects.get(pk=queued_run.pk).status == "cancelled"


@pytest.mark.django_db(transaction=True)
def test_the_demo_keeps_waiting_on_a_queued_run_while_a_live_worker_takes_its_queue(
    worker, queued_run
):
    """A busy worker leaves the run queued for a while; the demo waits on. Kills mutation:
    DemoWorker.wait gives up on any run queued longer than the bound, live worker or not."""
    workers.worker_heartbeat_record(hostname="celery@gpu-box", pid=9, queues=["training"])
    bound = 0.2
    # The run ends only once the demo has waited on it for several times the bound: here the
    # passing of time is what is tested.
    timer = _cancel_later(queued_run, 5 * bound)
    started = time.monotonic()

    try:
        run, artifact = worker.wait(queued_run, poll=0.02, unserved_after=bound)
    finally:
        timer.join(30)

    assert run.status == "cancelled" and artifact is None
    assert time.monotonic() - started >= 5 * bound


@pytest.fixture
def queued_snapshot(data_dir):
    from annotation import services
    from annotation.exports import snapshot_request

    project = services.project_create(name="Demo waits", slug="demo-waits")
    services.prompts_create(project=project, items=[{"text": "Hello!"}])
    return snapshot_request(project=project, kind="prompts", enqueue=False)


@pytest.mark.django_db(transaction=True)
def test_the_demo_stops_waiting_on_a_snapshot_that_no_live_worker_builds(worker, queued_snapshot):
    """The demo's snapshots and rounds are built by the worker's Celery tasks now: waiting on
    one ends as waiting on a run does, naming the job and the queue."""
    _stopped_worker()
    started = time.monotonic()

    with pytest.raises(DemoError) as caught:
        worker.wait_job(queued_snapshot, what="snapshot prompts", poll=0.02, unserved_after=0.3)

    assert 0.3 <= time.monotonic() - started < 30
    message = str(caught.value)
    assert "snapshot prompts stayed queued" in message
    assert "no live worker taking the 'default' queue" in message


@pytest.mark.django_db(transaction=True)
def test_the_demo_returns_a_snapshot_once_a_live_worker_has_built_it(worker, queued_snapshot):
    from annotation.exports import snapshot_build

    workers.worker_heartbeat_record(hostname="celery@box", pid=9, queues=["default"])

    def build():
        try:
            snapshot_build(snapshot=queued_snapshot, worker="celery@box")
        finally:
            connection.close()

    timer = threading.Timer(0.5, build)
    timer.start()
    try:
        snap = worker.wait_job(queued_snapshot, what="snapshot", poll=0.02, unserved_after=0.1)
    finally:
        timer.join(30)

    assert snap.status == "ready" and snap.worker == "celery@box" and snap.row_count == 1
