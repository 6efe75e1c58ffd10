"""Snapshots, imports and quality over the API: curators of the project only."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from annotation import services, tasks
from annotation.models import ImportBatch, Prompt, Role, Snapshot


@pytest.fixture
def world(make_user):
    owner, member, outsider = make_user("owner"), make_user("member"), make_user("outsider")
    project = services.project_create(name="Api", slug="api")
    services.membership_set(project=project, user=owner, role=Role.CURATOR)
    services.membership_set(project=project, user=member, role=Role.LABELER)
    return project, owner, member, outsider


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def upload(rows, name="data.jsonl"):
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return SimpleUploadedFile(name, body, content_type="application/octet-stream")


def test_it_imports_then_snapshots_over_the_api(world, django_capture_on_commit_callbacks):
    project, owner, _, _ = world
    api = client_for(owner)
    rows = [{"prompt": f"P{i}", "chosen": "good", "rejected": "bad"} for i in range(3)]

    with django_capture_on_commit_callbacks():
        posted = api.post(
            "/api/v1/imports/", {"project": project.pk, "file": upload(rows)}, format="multipart"
        )
    assert posted.status_code == 202, posted.json()
    tasks.import_run(posted.json()["id"])  # what the worker runs
    imported = api.get(f"/api/v1/import-jobs/{posted.json()['id']}/").json()
    assert imported["status"] == "done" and imported["report"]["counts"]["pairs"] == 3

    with django_capture_on_commit_callbacks():
        queued = api.post(
            "/api/v1/snapshots/",
            {"project": project.pk, "kind": "preference", "filters": {"test_size": 0}},
            format="json",
        )
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    tasks.snapshot_build(queued.json()["id"])  # what the worker runs

    got = api.get(f"/api/v1/snapshots/{queued.json()['id']}/").json()
    assert got["status"] == "ready" and got["row_count"] == 3 and len(got["sha256"]) == 64
    quality = api.get(f"/api/v1/quality/{project.pk}/").json()
    assert quality["diversity"]["prompts"] == 3


def test_a_double_post_makes_one_snapshot_build(world, django_capture_on_commit_callbacks):
    """The second POST of the same request answers 200 with the snapshot the first queued; once
    that one is finished, the same request builds anew (202)."""
    project, owner, _, _ = world
    services.prompts_create(project=project, items=[{"text": "P"}])
    api = client_for(owner)
    body = {"project": project.pk, "kind": "prompts", "filters": {"test_size": 0}}

    with django_capture_on_commit_callbacks() as callbacks:
        first = api.post("/api/v1/snapshots/", body, format="json")
        again = api.post("/api/v1/snapshots/", body, format="json")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["status"] == "queued"
    assert len(callbacks) == 1 and Snapshot.objects.count() == 1

    tasks.snapshot_build(first.json()["id"])
    with django_capture_on_commit_callbacks() as callbacks:
        later = api.post("/api/v1/snapshots/", body, format="json")
    assert later.status_code == 202 and later.json()["id"] != first.json()["id"]
    assert len(callbacks) == 1 and Snapshot.objects.count() == 2


def test_it_reports_bad_rows_with_line_and_field_and_writes_nothing(world):
    project, owner, _, _ = world
    rows = [
        {"prompt": "ok", "chosen": "a", "rejected": "b"},
        {"prompt": "x", "chosen": 1, "rejected": "b"},
    ]

    api = client_for(owner)
    posted = api.post(
        "/api/v1/imports/", {"project": project.pk, "file": upload(rows)}, format="multipart"
    )
    assert posted.status_code == 202
    assert tasks.import_run(posted.json()["id"]).startswith("failed: 1 bad row(s)")

    job = api.get(f"/api/v1/import-jobs/{posted.json()['id']}/").json()
    assert job["status"] == "failed" and not job["report"]["written"]
    assert job["report"]["errors"] == [
        {"line": 2, "field": "chosen", "message": "expected text or a list of messages, got int"}
    ]
    assert not Prompt.objects.exists() and not ImportBatch.objects.exists()


def test_it_rejects_bad_snapshot_filters(world):
    project, owner, _, _ = world
    response = client_for(owner).post(
        "/api/v1/snapshots/",
        {"project": project.pk, "kind": "sft", "filters": {"nope": 1}},
        format="json",
    )
    assert response.status_code == 400 and "filters.nope" in response.json()


def test_labelers_and_outsiders_cannot_import_or_snapshot(world):
    project, _, member, outsider = world
    body = {"project": project.pk, "kind": "sft"}
    assert client_for(member).post("/api/v1/snapshots/", body, format="json").status_code == 403
    assert client_for(outsider).post("/api/v1/snapshots/", body, format="json").status_code == 404
    files = {"project": project.pk, "file": upload([{"prompt": "p"}])}
    assert client_for(member).post("/api/v1/imports/", files, format="multipart").status_code == 403
    assert client_for(outsider).get(f"/api/v1/quality/{project.pk}/").status_code == 404
    Snapshot.objects.create(project=project, kind="sft")
    assert client_for(outsider).get("/api/v1/snapshots/").json()["results"] == []
    assert client_for(member).get("/api/v1/snapshots/").json()["results"] == []
