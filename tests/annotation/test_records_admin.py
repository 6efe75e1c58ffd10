"""Imports and consensus versions in the admin: read-only records, scoped to the curator's
projects, untrusted text escaped."""

from __future__ import annotations

import json

import pytest
from django.utils.html import escape

from annotation import services
from annotation.imports import import_file
from annotation.models import ConsensusJob, ImportBatch, ImportJob, Role, TaskBatch, TaskKind
from annotation.quality import consensus_compute

pytestmark = pytest.mark.django_db

NAME = '<script>alert("x")</script>.jsonl'


@pytest.fixture
def world(make_user, tmp_path):
    curator, outsider, labeler = make_user("curator"), make_user("outsider"), make_user("lab")
    project = services.project_create(name="Records", slug="records")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    services.membership_set(project=project, user=labeler, role=Role.LABELER)
    other = services.project_create(name="Other", slug="other")
    services.membership_set(project=other, user=outsider, role=Role.CURATOR)
    lines = [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."},
             {"prompt": "Say bye", "chosen": 7, "rejected": "No."}]  # fmt: skip
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    report = import_file(project=project, path=path, format="trl", skip_invalid=True,
                         reject_path=tmp_path / "rejects.jsonl", user=curator,
                         file_name=NAME)  # fmt: skip
    batch = ImportBatch.objects.get(pk=report.batch_id)
    consensus = consensus_compute(project=project)
    return {"curator": curator, "outsider": outsider, "labeler": labeler, "batch": batch,
            "consensus": consensus}  # fmt: skip


def test_a_curator_reads_the_imports_of_their_project(client, world):
    client.force_login(world["curator"])
    listing = client.get("/admin/annotation/importbatch/").content.decode()
    assert escape(NAME) in listing and NAME not in listing
    assert "pairs 1" in listing and "rejected 1" in listing

    page = client.get(f"/admin/annotation/importbatch/{world['batch'].pk}/change/")
    text = page.content.decode()
    assert page.status_code == 200
    assert "line 2, field chosen" in text  # the bad row, named
    assert 'name="_save"' not in text and "Delete" not in text  # a record, not a form


def test_a_curator_reads_the_import_jobs_of_their_project(client, world):
    job = ImportJob.objects.create(
        project=world["batch"].project, file_name=NAME, status=ImportJob.Status.RUNNING,
        stage=ImportJob.Stage.WRITING, records_read=40, records_total=100,
        report={"notices": {"deleted_message": 3},
                "errors": [{"line": 7, "field": "chosen", "message": "expected text"}]},
    )  # fmt: skip
    client.force_login(world["curator"])
    listing = client.get("/admin/annotation/importjob/").content.decode()
    assert "40 of 100 records (writing)" in listing and escape(NAME) in listing
    page = client.get(f"/admin/annotation/importjob/{job.pk}/change/").content.decode()
    assert "deleted_message 3" in page and 'name="_save"' not in page
    assert "line 7, field chosen: expected text" in page
    client.force_login(world["outsider"])
    assert client.get(f"/admin/annotation/importjob/{job.pk}/change/").status_code in (302, 404)


def test_a_curator_reads_the_consensus_versions(client, world):
    client.force_login(world["curator"])
    listing = client.get("/admin/annotation/consensus/").content.decode()
    assert "Records" in listing and world["consensus"].method in listing
    page = client.get(f"/admin/annotation/consensus/{world['consensus'].pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()


def test_others_see_no_record_of_the_project(client, world):
    client.force_login(world["outsider"])
    assert client.get("/admin/annotation/importbatch/").status_code == 200
    assert escape(NAME) not in client.get("/admin/annotation/importbatch/").content.decode()
    for url in (f"/admin/annotation/importbatch/{world['batch'].pk}/change/",
                f"/admin/annotation/consensus/{world['consensus'].pk}/change/"):  # fmt: skip
        assert client.get(url).status_code in (302, 404)
    client.force_login(world["labeler"])
    assert client.get("/admin/annotation/importbatch/").status_code in (302, 403)


@pytest.fixture
def jobs(world, make_user):
    project = world["batch"].project
    batch = TaskBatch.objects.create(
        project=project, kind=TaskKind.RANK, required=2, selection={"tags": ["x"]},
        status=TaskBatch.Status.FAILED, prompts_total=40, prompts_done=10,
        counts={"created": 7, "already_there": 3, "skipped_prompt_ids": [1]},
        error=f"the worker died {NAME}", created_by=world["curator"],
    )  # fmt: skip
    job = ConsensusJob.objects.create(
        project=project, status=ConsensusJob.Status.DONE, consensus=world["consensus"],
        created_by=world["curator"],
    )  # fmt: skip
    return batch, job


def test_a_curator_reads_the_task_batches_of_their_project(client, world, jobs):
    """The bulk-creation jobs have an admin page: status, progress, counts, the error (escaped)
    and who asked, read-only. Before: no page (404)."""
    batch, _ = jobs
    client.force_login(world["curator"])
    listing = client.get("/admin/annotation/taskbatch/")
    text = listing.content.decode()
    assert listing.status_code == 200
    assert "10 of 40 prompts (25%)" in text and "Failed" in text and "curator" in text
    assert escape(NAME) in text and NAME not in text
    page = client.get(f"/admin/annotation/taskbatch/{batch.pk}/change/").content.decode()
    assert "already_there 3, created 7" in page and "the worker died" in page
    assert 'name="_save"' not in page and "Delete" not in page
    assert client.get("/admin/annotation/taskbatch/add/").status_code == 403


def test_a_curator_reads_the_consensus_jobs_of_their_project(client, world, jobs):
    _, job = jobs
    client.force_login(world["curator"])
    listing = client.get("/admin/annotation/consensusjob/").content.decode()
    assert "Done" in listing and str(world["consensus"]) in listing
    page = client.get(f"/admin/annotation/consensusjob/{job.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert client.post(f"/admin/annotation/consensusjob/{job.pk}/delete/").status_code == 403


def test_others_see_no_job_of_the_project(client, world, jobs):
    batch, job = jobs
    client.force_login(world["outsider"])
    assert "the worker died" not in client.get("/admin/annotation/taskbatch/").content.decode()
    for url in (f"/admin/annotation/taskbatch/{batch.pk}/change/",
                f"/admin/annotation/consensusjob/{job.pk}/change/"):  # fmt: skip
        assert client.get(url).status_code in (302, 404)
    client.force_login(world["labeler"])
    for url in ("/admin/annotation/taskbatch/", "/admin/annotation/consensusjob/"):
        assert client.get(url).status_code in (302, 403)
