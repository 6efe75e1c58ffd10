"""Imports as jobs (annotation.imports.jobs): an upload answers 202 at once and a worker imports
it under the one job lifecycle; its progress shows while it runs, its report once done; a job
whose worker is killed is reaped and wrote nothing. The API, the curate pages, curators only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from annotation import services, tasks
from annotation.imports import jobs as jobs_module
from annotation.imports.jobs import import_job_run, import_request, imports_root
from annotation.models import ImportBatch, ImportJob, Prompt, Role
from core.databases import database_url
from core.jobs import JobNotQueued, jobs_reap_stale

ROOT = Path(__file__).resolve().parents[2]
GOOD = [{"prompt": f"Prompt {i}", "chosen": "Good.", "rejected": "Bad."} for i in range(3)]
BAD_ROW = {"prompt": "Broken", "chosen": 7, "rejected": "Bad."}


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(rows, name="pairs.jsonl") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, jsonl(rows), content_type="application/octet-stream")


def stored_files() -> list[Path]:
    root = imports_root()
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def world(make_user):
    curator, labeler, outsider = make_user("curator"), make_user("labeler"), make_user("outsider")
    project = services.project_create(name="Uploads", slug="uploads")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    services.membership_set(project=project, user=labeler, role=Role.LABELER)
    return {"project": project, "curator": curator, "labeler": labeler, "outsider": outsider}


def api_for(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


# --- The API ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_answers_202_and_the_worker_imports_the_file(
    world, django_capture_on_commit_callbacks
):
    """POST answers 202 with a queued job (nothing imported yet, the upload stored); the same
    file posted again while it is queued answers 200 with the same job; the worker's task
    imports it, the job shows the report and the batch, and the upload is gone. A retry of the
    finished job is refused."""
    api, project = api_for(world["curator"]), world["project"]
    body = {"project": project.pk, "format": "trl"}
    with django_capture_on_commit_callbacks() as sent:
        queued = api.post("/api/v1/imports/", {**body, "file": upload(GOOD)}, format="multipart")
    assert queued.status_code == 202, queued.json()
    job = queued.json()
    assert job["status"] == "queued" and job["file_name"] == "pairs.jsonl" and job["report"] == {}
    assert queued["Location"] == f"/api/v1/import-jobs/{job['id']}/"
    assert len(sent) == 1 and not Prompt.objects.exists()
    assert [p.name for p in stored_files()] == ["upload.jsonl"]

    again = api.post("/api/v1/imports/", {**body, "file": upload(GOOD)}, format="multipart")
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert len(stored_files()) == 1  # the second copy was not kept

    said = tasks.import_run(job["id"])  # what the worker runs
    assert said == f"done: batch {ImportBatch.objects.get().pk}"
    done = api.get(f"/api/v1/import-jobs/{job['id']}/").json()
    assert done["status"] == "done" and done["error"] == "" and done["percent"] == 100
    assert done["records_read"] == 3 and done["records_total"] == 3
    batch = ImportBatch.objects.get()
    assert done["batch"] == batch.pk and batch.job_id == job["id"]
    report = done["report"]
    assert report["written"] and report["format"] == "trl" and report["error_count"] == 0
    assert report["counts"]["pairs"] == 3 and report["counts"]["prompts"] == 3
    assert Prompt.objects.filter(project=project).count() == 3
    assert stored_files() == []
    assert tasks.import_run(job["id"]) == "skipped: not queued"
    listed = api.get("/api/v1/import-jobs/", {"project": project.pk}).json()
    assert [j["id"] for j in listed["results"]] == [job["id"]]

    # Once finished, the same file again is a new job, which imports nothing twice.
    with django_capture_on_commit_callbacks():
        anew = api.post("/api/v1/imports/", {**body, "file": upload(GOOD)}, format="multipart")
    assert anew.status_code == 202 and anew.json()["id"] != job["id"]
    tasks.import_run(anew.json()["id"])
    assert ImportJob.objects.get(pk=anew.json()["id"]).report["counts"]["already_imported"] == 3
    assert Prompt.objects.filter(project=project).count() == 3


@pytest.mark.django_db
def test_a_refused_file_fails_its_job_naming_line_and_field_and_writes_nothing(world):
    job = import_request(project=world["project"], upload=upload([*GOOD, BAD_ROW]), enqueue=False)
    assert tasks.import_run(job.pk).startswith("failed: 1 bad row(s); nothing was imported")
    job.refresh_from_db()
    assert job.status == ImportJob.Status.FAILED and job.stage == ImportJob.Stage.CHECKING
    assert job.report["errors"] == [
        {"line": 4, "field": "chosen", "message": "expected text or a list of messages, got int"}
    ]
    assert not job.report["written"] and job.records_read == 4
    assert not Prompt.objects.exists() and not ImportBatch.objects.exists()
    assert stored_files() == []


@pytest.mark.django_db
def test_skip_invalid_imports_the_good_rows_and_keeps_a_reject_file(world, client):
    job = import_request(
        project=world["project"], upload=upload([BAD_ROW, *GOOD]), skip_invalid=True,
        enqueue=False,
    )  # fmt: skip
    import_job_run(job=job)
    assert job.status == ImportJob.Status.DONE and job.report["counts"]["rejected"] == 1
    assert Prompt.objects.count() == 3
    (rejects,) = stored_files()  # the upload is gone, the reject file stays
    assert rejects.name == "rejects.jsonl" and job.upload == ""
    client.force_login(world["curator"])
    got = client.get(f"/curate/uploads/import-jobs/{job.pk}/rejects/")
    assert got.status_code == 200 and "attachment" in got["Content-Disposition"]
    assert json.loads(b"".join(got.streaming_content)) == {
        "line": 1, "field": "chosen", "message": "expected text or a list of messages, got int"
    }  # fmt: skip


@pytest.mark.django_db
def test_a_dry_run_counts_and_writes_nothing(world):
    job = import_request(project=world["project"], upload=upload(GOOD), dry_run=True,
                         enqueue=False)  # fmt: skip
    import_job_run(job=job)
    assert job.status == ImportJob.Status.DONE and not job.report["written"]
    assert job.report["counts"]["pairs"] == 3 and job.report["batch_id"] is None
    assert not Prompt.objects.exists() and not ImportBatch.objects.exists()
    assert stored_files() == []


@pytest.mark.django_db
def test_a_job_that_is_not_queued_is_not_run(world):
    job = import_request(project=world["project"], upload=upload(GOOD), enqueue=False)
    ImportJob.objects.filter(pk=job.pk).update(status=ImportJob.Status.RUNNING)
    with pytest.raises(JobNotQueued):
        import_job_run(job=job)
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_the_api_refuses_labelers_and_outsiders_and_stores_nothing(world):
    body = {"project": world["project"].pk}
    refused = api_for(world["labeler"]).post(
        "/api/v1/imports/", {**body, "file": upload(GOOD)}, format="multipart"
    )
    assert refused.status_code == 403
    hidden = api_for(world["outsider"]).post(
        "/api/v1/imports/", {**body, "file": upload(GOOD)}, format="multipart"
    )
    assert hidden.status_code == 404
    assert not ImportJob.objects.exists() and stored_files() == []
    job = import_request(project=world["project"], upload=upload(GOOD), enqueue=False)
    assert api_for(world["labeler"]).get("/api/v1/import-jobs/").json()["results"] == []
    assert api_for(world["outsider"]).get(f"/api/v1/import-jobs/{job.pk}/").status_code == 404


@pytest.mark.django_db
def test_the_command_line_import_stays_synchronous(world, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl(GOOD))
    call_command("import_data", "uploads", str(path))
    assert Prompt.objects.count() == 3 and not ImportJob.objects.exists()
    assert ImportBatch.objects.get().job is None


# --- Progress, and a worker lost -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_its_progress_shows_while_it_runs(world, settings, monkeypatch):
    """Another connection (the page's) sees the records read grow while the worker checks the
    file; on PostgreSQL also while it writes them in its one transaction (the heartbeat's own
    connection writes the progress; SQLite holds every writer off until the commit).

    Kills mutation: job_heartbeat without `progress`."""
    settings.TRAINING_HEARTBEAT_SECONDS = 30  # only the progress makes the row change
    real = jobs_module._Progress.__call__

    def slow(self, stage, records):  # a large file, read slowly
        time.sleep(0.004)
        real(self, stage, records)

    monkeypatch.setattr(jobs_module._Progress, "__call__", slow)
    rows = [{"prompt": f"Prompt {i}", "chosen": "Good.", "rejected": "Bad."} for i in range(800)]
    job = import_request(project=world["project"], upload=upload(rows), enqueue=False)
    seen: dict[str, set[int]] = {"checking": set(), "writing": set()}
    worker = threading.Thread(target=lambda: (import_job_run(job=job), _close()))
    worker.start()
    try:
        while worker.is_alive():
            row = ImportJob.objects.get(pk=job.pk)
            if row.status == ImportJob.Status.RUNNING and row.stage:
                seen[row.stage].add(row.records_read)
            time.sleep(0.1)
    finally:
        worker.join(60)
    job.refresh_from_db()
    assert job.status == ImportJob.Status.DONE and job.report["counts"]["pairs"] == 800
    assert len({n for n in seen["checking"] if 0 < n < 800}) >= 2, seen
    from django.db import connection

    if connection.vendor == "postgresql":
        assert {n for n in seen["writing"] if 0 < n < 800}, seen


def _close() -> None:
    from django.db import connection

    connection.close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_is_reaped_and_nothing_is_half_imported(world, settings, tmp_path):
    """A real process runs the worker's task and is killed (SIGKILL) while it writes: the job
    is reaped with what to do, nothing of the file is in the database, and the same upload
    imports whole afterwards."""
    # Enough rows that the set-wise write is still under way when the worker is killed.
    rows = [{"prompt": f"Prompt {i}", "chosen": "Good.", "rejected": "Bad."} for i in range(40000)]
    job = import_request(project=world["project"], upload=upload(rows), enqueue=False)
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_DEBUG": "1",
           "PLATFORM_DATA_DIR": str(settings.DATA_DIR), "TRAINING_HEARTBEAT_SECONDS": "1"}  # fmt: skip
    code = f"from annotation import tasks; tasks.import_run({job.pk})"
    proc = subprocess.Popen(  # noqa: S603 - our own manage.py
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        from django.db import connection

        def writing() -> bool:
            row = ImportJob.objects.get(pk=job.pk)
            assert row.status in ImportJob.unfinished(), (row.status, row.error)
            if connection.vendor == "postgresql":  # the write's progress is seen: mid-write
                return row.stage == ImportJob.Stage.WRITING and row.records_read > 0
            return row.stage == ImportJob.Stage.WRITING

        deadline = time.monotonic() + 120
        while not writing():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the import never started writing"
            time.sleep(0.1)
        time.sleep(0.5)  # well into the write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    row = ImportJob.objects.get(pk=job.pk)
    assert row.status == ImportJob.Status.RUNNING  # killed before it could finish
    assert not Prompt.objects.exists() and not ImportBatch.objects.exists()

    later = timezone.now() + timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS + 1)
    assert jobs_reap_stale(models=[ImportJob], now=later) == 1
    row.refresh_from_db()
    assert row.status == ImportJob.Status.FAILED and "Worker lost" in row.error
    assert "Nothing of this file was written" in row.error and "upload it again" in row.error

    again = import_request(project=world["project"], upload=upload(rows), enqueue=False)
    assert again.pk != job.pk
    assert not Path(row.upload).exists()  # the lost job's upload, tidied by the next request
    import_job_run(job=again)
    assert again.status == ImportJob.Status.DONE
    assert Prompt.objects.count() == len(rows) and ImportBatch.objects.count() == 1


@pytest.mark.django_db
def test_a_job_lost_after_its_write_committed_is_reaped_as_done(world):
    """The worker died between the commit and recording the outcome: the batch is there, whole,
    and the reaper says so rather than "nothing was written"."""
    job = import_request(project=world["project"], upload=upload(GOOD), enqueue=False)
    import_job_run(job=job)
    old = timezone.now() - timedelta(seconds=600)
    ImportJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=old, report={})
    assert jobs_reap_stale(models=[ImportJob]) == 1
    job.refresh_from_db()
    batch = ImportBatch.objects.get()
    assert job.status == ImportJob.Status.DONE and f"import batch #{batch.pk}" in job.error
    assert job.report["written"] and job.report["batch_id"] == batch.pk


# --- The pages -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_curator_uploads_from_the_curate_page_and_follows_the_job(world, client):
    client.force_login(world["curator"])
    curate = client.get("/curate/uploads/").content.decode()
    assert 'href="/curate/uploads/imports/"' in curate
    page = client.get("/curate/uploads/imports/")
    assert page.status_code == 200 and "Import a file into Uploads" in page.text
    posted = client.post(
        "/curate/uploads/imports/",
        {"file": upload([*GOOD, BAD_ROW]), "format": "auto", "skip_invalid": "1"},
    )
    assert posted.status_code == 302
    job = ImportJob.objects.get()
    assert posted.url == f"/curate/uploads/import-jobs/{job.pk}/"
    assert job.skip_invalid and not job.dry_run and job.format == "auto"
    queued = client.get(posted.url).text
    assert "Queued" in queued and 'hx-trigger="every 1s"' in queued

    tasks.import_run(job.pk)
    shown = client.get(posted.url, headers={"HX-Request": "true"}).text
    assert "Done" in shown and "hx-trigger" not in shown
    assert "<dt>pairs</dt><dd>3</dd>" in shown and "<dt>rejected</dt><dd>1</dd>" in shown
    assert "<td>line 4</td><td>chosen</td><td>expected text or a list of messages" in shown
    assert f'href="/curate/uploads/import-jobs/{job.pk}/rejects/"' in shown
    assert f"#{job.pk}" in client.get("/curate/uploads/imports/").text


@pytest.mark.django_db
def test_the_job_page_shows_every_count_and_notice_it_is_given(world, client):
    """Counts and notices are rendered whatever their names (the importer adds its own); a
    record of a JSON array is placed by its index."""
    job = ImportJob.objects.create(
        project=world["project"], file_name="x.jsonl", status=ImportJob.Status.DONE,
        report={"format": "hh-rlhf", "written": True, "batch_id": 9, "error_count": 0,
                "counts": {"records": 5, "a_new_count": 2},
                "notices": {"tie_identical_responses": 3, "cancelled_annotation": 1},
                "notice_examples": [{"index": 3, "field": "chosen", "message": "equal sides",
                                     "reason": "tie_identical_responses"}],
                "errors": [{"index": 5, "field": "rejected", "message": "expected text"}]},
    )  # fmt: skip
    client.force_login(world["curator"])
    shown = client.get(f"/curate/uploads/import-jobs/{job.pk}/").text
    for name, n in (("a_new_count", 2), ("tie_identical_responses", 3),
                    ("cancelled_annotation", 1)):  # fmt: skip
        assert f"<dt>{name}</dt><dd>{n}</dd>" in shown
    assert "<li>tie_identical_responses: index 3, field chosen: equal sides</li>" in shown
    assert "<td>index 5</td><td>rejected</td><td>expected text</td>" in shown


@pytest.mark.django_db
def test_the_upload_page_names_a_refused_file(world, client):
    client.force_login(world["curator"])
    page = client.post("/curate/uploads/imports/", {"file": upload(GOOD, name="data.exe")})
    assert page.status_code == 415 and "data.exe: .exe is not an accepted type" in page.text
    page = client.post("/curate/uploads/imports/", {"format": "auto"})
    assert page.status_code == 400 and "file: choose a file to import." in page.text
    page = client.post("/curate/uploads/imports/", {"file": upload(GOOD), "format": "nope"})
    assert page.status_code == 400 and "format: &#x27;nope&#x27; is not one of" in page.text
    assert not ImportJob.objects.exists() and stored_files() == []


@pytest.mark.django_db
def test_the_pages_refuse_labelers_and_outsiders(world, client):
    job = import_request(project=world["project"], upload=upload(GOOD), enqueue=False)
    urls = ["/curate/uploads/imports/", f"/curate/uploads/import-jobs/{job.pk}/",
            f"/curate/uploads/import-jobs/{job.pk}/rejects/"]  # fmt: skip
    for who, code in (("labeler", 403), ("outsider", 404)):
        client.force_login(world[who])
        for url in urls:
            assert client.get(url).status_code == code, (who, url)
        posted = client.post(urls[0], {"file": upload(GOOD, name="other.jsonl")})
        assert posted.status_code == code
    assert ImportJob.objects.count() == 1


@pytest.mark.django_db
def test_import_jobs_are_a_kind_of_job_on_the_default_queue(world):
    """Registered with the lifecycle (every worker's sweep reaps them, a broker outage resends
    them), and routed to the light workers."""
    from core.jobs import job_kind
    from training.selectors import task_queue

    kind = job_kind(ImportJob)
    assert kind.task == "annotation.tasks.import_run" and task_queue(kind.task) == "default"
    job = import_request(project=world["project"], upload=upload(GOOD), enqueue=False)
    old = timezone.now() - timedelta(seconds=600)
    ImportJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=old)
    assert jobs_reap_stale() == 1  # every kind, imports among them


@pytest.mark.django_db
def test_the_openapi_schema_documents_import_jobs(world):
    schema = api_for(world["curator"]).get("/api/schema/", {"format": "json"}).json()
    post = schema["paths"]["/api/v1/imports/"]["post"]
    assert {"202", "200", "400", "403", "413", "415"} <= set(post["responses"])
    answer = post["responses"]["202"]["content"]["application/json"]["schema"]["$ref"]
    assert answer.endswith("/ImportJob")
    job = schema["components"]["schemas"]["ImportJob"]["properties"]
    assert {"status", "stage", "records_read", "records_total", "report", "batch"} <= set(job)
    assert "get" in schema["paths"]["/api/v1/import-jobs/{id}/"]
