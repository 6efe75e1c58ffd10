"""One worker, one pid on every page: a job's worker names the main pid that the worker's
heartbeat (the workers page) records, with its pool process beside it (a prefork worker ran
jobs under the child's pid, which no other page showed)."""

from __future__ import annotations

import pytest
from django.urls import reverse
from runs_testutils import Worker, wait_for

from annotation import leasing, services
from annotation.exports import snapshot_request
from annotation.models import Role, Snapshot, TaskKind
from training.models import WorkerHeartbeat

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_job_names_the_pid_the_workers_page_shows(
    broker_dir,  # noqa: F811
    tmp_path,
    settings,
    client,
    make_user,
    project_factory,
):
    settings.DATA_DIR = tmp_path / "data"
    engineer, writer = make_user("engineer", is_staff=True), make_user("writer")
    project = project_factory(
        "alpha",
        prompts=1,
        kinds=(TaskKind.DEMONSTRATION,),
        members=[(engineer, Role.ENGINEER), (writer, Role.LABELER)],
    )
    task = project.tasks.get()
    leasing.next_task_for(project=project, labeler=writer)
    services.annotation_submit(task=task, labeler=writer, payload={"text": "Hi!"})
    worker = Worker(broker_dir, tmp_path / "worker.log", args=("-P", "prefork"))
    try:
        worker.wait_ready(timeout=90)
        snapshot = snapshot_request(project=project, kind="sft", filters={"test_size": 0})

        def built():
            row = Snapshot.objects.get(pk=snapshot.pk)
            return row if row.status in {"ready", "failed"} else None

        snapshot = wait_for(built, 120, what="the snapshot build")
    finally:
        worker.stop()
    assert snapshot.status == "ready", (snapshot.error, worker.tail())
    heartbeat = WorkerHeartbeat.objects.get(hostname__startswith=worker.name)
    assert snapshot.worker.startswith(f"{heartbeat.hostname} pid {heartbeat.pid} (task process ")
    client.force_login(engineer)
    workers_page = client.get(reverse("training:workers")).content.decode()
    assert f"pid {heartbeat.pid} (main process" in workers_page
