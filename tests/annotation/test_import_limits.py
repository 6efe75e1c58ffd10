"""Upload size and type limits on the import API: refused before parsing, the file named."""

from __future__ import annotations

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from annotation import services
from annotation.models import ImportBatch, Prompt, Role


@pytest.fixture
def curator_api(make_user):
    curator = make_user("curator")
    project = services.project_create(name="Limits", slug="limits")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    api = APIClient()
    api.force_authenticate(curator)
    return project, api


def post(api, project, name, body: bytes):
    upload = SimpleUploadedFile(name, body, content_type="application/octet-stream")
    return api.post("/api/v1/imports/", {"project": project.pk, "file": upload}, format="multipart")


JSONL = b"".join(json.dumps({"prompt": f"P{i}"}).encode() + b"\n" for i in range(3))


def test_it_accepts_each_allowed_type(curator_api):
    import pyarrow as pa
    import pyarrow.parquet as pq

    project, api = curator_api
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"prompt": "From parquet"}]), buffer)
    bodies = {
        "a.jsonl": JSONL,
        "b.json": json.dumps([{"prompt": "From json"}]).encode(),
        "c.csv": b"prompt\nFrom csv\n",
        "d.parquet": buffer.getvalue(),
    }
    for name, body in bodies.items():
        response = post(api, project, name, body)
        assert response.status_code == 201, (name, response.json())
    assert Prompt.objects.filter(project=project).count() == 6


def test_it_refuses_an_upload_over_the_limit_with_413(curator_api, settings):
    project, api = curator_api
    settings.IMPORT_MAX_BYTES = 2048
    response = post(api, project, "big.jsonl", JSONL * 200)
    assert response.status_code == 413
    assert "IMPORT_MAX_BYTES" in response.json()["detail"]
    assert "Split the file" in response.json()["detail"]
    assert not Prompt.objects.exists() and not ImportBatch.objects.exists()


def test_a_body_over_upload_max_bytes_is_refused_naming_it_but_an_import_file_is_not(
    curator_api, settings, client
):
    """UPLOAD_MAX_BYTES (README): the largest request body outside imports. Over it, the
    answer is a 413 that names the variable, on the API and on a page; an import file larger
    than it is still taken (only IMPORT_MAX_BYTES holds files).

    Kills mutation: platform/core/middleware.py bad_request `isinstance(exception,
    RequestDataTooBig)` -> `False` (a bare "Bad Request (400)" page)."""
    project, api = curator_api
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048  # what UPLOAD_MAX_BYTES=2048 sets
    body = {"project": project.pk, "format": "auto", "note": "x" * 4000}
    response = api.post("/api/v1/imports/", body, format="json")
    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    assert "over 2048 bytes (UPLOAD_MAX_BYTES)" in response.json()["detail"]
    page = client.post("/accounts/login/", {"username": "x" * 4000, "password": "pw"})
    assert page.status_code == 413 and b"(UPLOAD_MAX_BYTES)" in page.content
    assert not ImportBatch.objects.exists()

    big_file = JSONL * 100  # 6 KB: over UPLOAD_MAX_BYTES, under IMPORT_MAX_BYTES
    assert post(api, project, "big.jsonl", big_file).status_code == 201
    assert Prompt.objects.filter(project=project).count() == 3


@pytest.mark.parametrize(
    ("name", "body", "says"),
    [
        ("payload.exe", b"MZ\x90\x00", "payload.exe: .exe is not an accepted type"),
        ("noext", JSONL, "noext: no extension is not an accepted type"),
        ("zipped.jsonl", b"PK\x03\x04rest", "zipped.jsonl: the content is a zip archive"),
        ("gz.csv", b"\x1f\x8b\x08\x00", "gz.csv: the content is a gzip archive"),
        ("fake.parquet", JSONL, "fake.parquet: not a Parquet file"),
        ("bin.jsonl", b'{"prompt": "x"}\n\x00\x01\x02', "bin.jsonl: binary content"),
        ("latin.csv", "prompt\ncaf\xe9\n".encode("latin-1"), "latin.csv: not UTF-8 text"),
        ("page.json", b"<html><script>alert(1)</script>", "page.json: a .json file must start"),
    ],
)
def test_it_refuses_a_file_of_the_wrong_type_naming_it(curator_api, name, body, says):
    project, api = curator_api
    response = post(api, project, name, body)
    assert response.status_code == 415, response.json()
    assert says in response.json()["detail"]
    assert not Prompt.objects.exists() and not ImportBatch.objects.exists()


def test_a_multibyte_character_cut_at_the_sniff_boundary_is_still_utf8(curator_api):
    project, api = curator_api
    line = json.dumps({"prompt": "é" * 5000}, ensure_ascii=False).encode() + b"\n"
    # `{"prompt": "` is 12 bytes: the 8 KiB window ends on the first byte of an "é".
    body = b" " * (8192 - 12 - 1) + line
    assert post(api, project, "wide.jsonl", body).status_code == 201
