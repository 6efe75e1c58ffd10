"""Upload size and type limits on the import API: refused before parsing, the file named (413,
415); what a file may decode to: refused by its import job, naming the line and field."""

from __future__ import annotations

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from annotation import services, tasks
from annotation.models import ImportBatch, Prompt, Role


@pytest.fixture
def curator_api(make_user):
    curator = make_user("curator")
    project = services.project_create(name="Limits", slug="limits")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    api = APIClient()
    api.force_authenticate(curator)
    return project, api


def post(api, project, name, body: bytes, **fields):
    upload = SimpleUploadedFile(name, body, content_type="application/octet-stream")
    return api.post(
        "/api/v1/imports/", {"project": project.pk, "file": upload, **fields}, format="multipart"
    )


def imported(api, project, name, body: bytes, **fields) -> dict:
    """The upload's import job once the worker's task has run it, as the API shows it."""
    response = post(api, project, name, body, **fields)
    assert response.status_code == 202, response.json()
    tasks.import_run(response.json()["id"])
    return api.get(f"/api/v1/import-jobs/{response.json()['id']}/").json()


def refused(api, project, name, body: bytes) -> list[dict]:
    """The bad rows of an upload whose import job refused it, writing nothing."""
    job = imported(api, project, name, body)
    assert job["status"] == "failed" and not job["report"]["written"], job
    return job["report"]["errors"]


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
        job = imported(api, project, name, body)
        assert job["status"] == "done" and job["report"]["written"], (name, job)
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
    assert imported(api, project, "big.jsonl", big_file)["status"] == "done"
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
    assert imported(api, project, "wide.jsonl", body)["status"] == "done"


# --- What a small file may decode to ---------------------------------------------------------


def dictionary_bomb(rows: int, width: int) -> bytes:
    """A Parquet file of a few hundred bytes whose one column repeats a `width`-character
    value `rows` times: dictionary-encoded, it costs a bit per row on disk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.array(["x" * width]).take(pa.array([0] * rows))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"prompt": column}), buffer, compression="zstd", row_group_size=rows)
    return buffer.getvalue()


def test_a_small_parquet_file_that_decodes_to_a_gigabyte_is_refused_unread(curator_api):
    """A 1 KB file of 200,000 rows of a 5,000-character value (1 GB decoded) is refused by the
    default IMPORT_MAX_DECODED_BYTES on a dry run, naming the row and column, before a row is
    turned into Python; nothing is written."""
    project, api = curator_api
    body = dictionary_bomb(200_000, 5000)
    assert len(body) < 2048
    job = imported(api, project, "bomb.parquet", body, dry_run=True)
    assert not job["report"]["written"], job
    (error,) = job["report"]["errors"]
    assert error["field"] == "prompt" and error["line"] > 1
    assert "decodes to more than 512 MB (IMPORT_MAX_DECODED_BYTES)" in error["message"]
    assert not Prompt.objects.exists() and not ImportBatch.objects.exists()


def test_parquet_with_more_values_than_the_bound_allows_is_refused_from_its_metadata(
    curator_api, settings
):
    project, api = curator_api
    settings.IMPORT_MAX_DECODED_BYTES = 100_000
    (error,) = refused(api, project, "rows.parquet", dictionary_bomb(20_000, 1))
    assert error["line"] == 1
    assert (
        "20,000 rows decode to more than 100000 bytes (IMPORT_MAX_DECODED_BYTES)"
        in (error["message"])
    )


def test_parquet_under_the_decoded_bound_is_imported(curator_api, settings):
    project, api = curator_api
    settings.IMPORT_MAX_DECODED_BYTES = 1024 * 1024
    assert imported(api, project, "ok.parquet", dictionary_bomb(3, 100))["status"] == "done"
    assert Prompt.objects.filter(project=project).count() == 1  # three equal rows, one prompt


def test_json_nested_too_deep_is_refused_naming_the_line(curator_api):
    """Nesting deep enough to exhaust the parser's recursion was a RecursionError (500)."""
    project, api = curator_api
    deep = '{"prompt": "P", "meta": ' + "[" * 5000 + "]" * 5000 + "}"
    assert refused(api, project, "deep.jsonl", JSONL + deep.encode() + b"\n") == [
        {"line": 4, "field": "", "message": "nested deeper than 100 levels of arrays and objects"}
    ]
    body = b'[{"prompt": "P"},\n' + deep.encode() + b"]"
    (error,) = refused(api, project, "deep.json", body)
    assert error["line"] == 2 and "nested deeper than 100 levels" in error["message"]
    moderate = '{"prompt": "P", "meta": ' + "[" * 150 + "]" * 150 + "}"
    errors = refused(api, project, "moderate.jsonl", moderate.encode() + b"\n")
    assert errors[0]["message"].startswith("nested deeper than 100")
    assert not Prompt.objects.exists()


def test_a_csv_cell_over_the_parsers_limit_is_a_row_error_naming_the_line(curator_api):
    """A cell over 131,072 characters was a bare _csv.Error (500): one up to CSV_MAX_CELL_CHARS
    is read and refused by the text limit with its column named; a longer one stops the file
    with an error naming its line and saying the field is too large."""
    project, api = curator_api
    body = b"prompt\nshort\n" + b"x" * 200_000 + b"\n"
    assert refused(api, project, "wide.csv", body) == [
        {"line": 3, "field": "prompt", "message": "is 200,000 characters; the limit is 100,000."}
    ]
    body = b"prompt\nshort\n" + b"x" * 1_000_001 + b"\n"
    (error,) = refused(api, project, "wider.csv", body)
    assert error["line"] == 3
    assert error["message"].startswith("a field is too large: over 1,000,000 characters")
    assert not Prompt.objects.exists() and not ImportBatch.objects.exists()
