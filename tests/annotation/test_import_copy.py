"""The importer's fast write paths keep its rules: `sql.insert_many` sends the values the fields'
own preparation gives (it skips that preparation where it would return the value unchanged),
and a file of thousands of records whose bad or refused row comes after chunks already loaded
(COPY on PostgreSQL) is still refused whole, that row named by line and field, nothing written.
(That COPY writes the rows INSERT writes: test_import_batched.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.db import connection, models
from psycopg.types.json import Jsonb

from annotation import services, sql
from annotation.imports import import_file
from annotation.imports import service as importer
from annotation.models import (
    Annotation,
    ImportBatch,
    ImportRecord,
    Prompt,
    Response,
    Task,
)

LINES = 2_500  # more than two of the writer's chunks


def _comparable(value):
    return ("jsonb", value.obj) if isinstance(value, Jsonb) else value


@pytest.mark.django_db
@pytest.mark.parametrize("copy", [False, True])
def test_values_are_those_the_fields_prepare(tmp_path, copy):
    """Every field but the creation time (`auto_now_add`: a new time at each call) of every
    kind of row the importer writes, prepared as `save()` prepares it.

    Kills mutations: a JSON value or an integer on PostgreSQL's INSERT sent as it is; NULL
    sent for a field whose pre_save fills it."""
    project = services.project_create(name="Prep", slug="prep")
    rows = [
        {"prompt": "P1", "chosen": "good", "rejected": "bad"},
        {"prompt": [{"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Go away"}]},
    ]  # fmt: skip
    path = tmp_path / "trl.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert import_file(project=project, path=path, format="trl").written
    objects = [
        *Prompt.objects.filter(project=project),
        *Response.objects.filter(prompt__project=project),
        *Task.objects.filter(project=project),
        *Annotation.objects.filter(task__project=project),
    ]
    assert {type(o) for o in objects} == {Prompt, Response, Task, Annotation}
    checked = 0
    for obj in objects:
        plan = sql._preparers(type(obj), connection.vendor, copy)
        got = sql._row_values(connection, obj, plan)
        for (attname, *_, field), value in zip(plan, got, strict=True):
            if isinstance(field, models.DateTimeField) and field.auto_now_add:
                continue
            expected = field.get_db_prep_save(field.pre_save(obj, True), connection)
            assert _comparable(value) == _comparable(expected), (type(obj).__name__, attname)
            if not copy:  # an INSERT binds by type (COPY reads the text by the column's type)
                assert type(value) is type(expected), (type(obj).__name__, attname)
            checked += 1
    assert checked > 40


def _hh(i: int) -> dict:
    return {"chosen": f"\n\nHuman: Question {i}?\n\nAssistant: Good answer {i}.",
            "rejected": f"\n\nHuman: Question {i}?\n\nAssistant: Bad answer {i}."}  # fmt: skip


def _write(path: Path, rows: list) -> Path:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def _nothing_written(project) -> None:
    assert not Prompt.objects.filter(project=project).exists()
    assert not Response.objects.filter(prompt__project=project).exists()
    assert not Task.objects.filter(project=project).exists()
    assert not ImportRecord.objects.filter(project=project).exists()
    assert not ImportBatch.objects.filter(project=project).exists()


@pytest.mark.django_db
def test_a_bad_line_deep_in_a_big_file_is_named_and_nothing_is_written(tmp_path):
    """Malformed input (NaN, not JSON) is all or nothing however far into the file it is."""
    project = services.project_create(name="Big", slug="big")
    rows: list = [_hh(i) for i in range(LINES)]
    rows[2_344] = '{"chosen": "\\n\\nHuman: Hi?\\n\\nAssistant: Yes.", "rejected": NaN}'
    rows[2_399] = "{not json"
    report = import_file(
        project=project, path=_write(tmp_path / "hh.jsonl", rows), format="hh-rlhf"
    )

    assert not report.written
    assert [(e["line"], e["field"]) for e in report.errors] == [(2_345, "rejected"), (2_400, "")]
    assert "NaN is not a JSON number" in report.errors[0]["message"]
    _nothing_written(project)


@pytest.mark.django_db
def test_a_row_refused_when_written_after_loaded_chunks_rolls_the_file_back(tmp_path, monkeypatch):
    """A row the services refuse only when it is written (ten completions: a rank task takes
    2-9), in the third chunk, after two chunks were loaded (with COPY on PostgreSQL, every
    insert of them: `COPY_ROWS = 1`): named by line and field, and the rows already loaded
    are rolled back with the transaction.

    Kills mutation: COPY outside the import's transaction (its rows left behind)."""
    monkeypatch.setattr(sql, "COPY_ROWS", 1)
    project = services.project_create(name="Refused", slug="refused")

    def completion(model: str, text: str, score: int) -> dict:
        return {"model": model, "response": text, "overall_score": score,
                "annotations": {"helpfulness": {"Rating": "4", "Rationale": "r"}}}  # fmt: skip

    rows = [
        {"source": "s", "instruction": f"Q{i}",
         "completions": [completion("a", f"yes {i}", 8), completion("b", f"no {i}", 3)]}
        for i in range(LINES)
    ]  # fmt: skip
    ten = [completion(f"m{j}", f"t{j}", j) for j in range(10)]
    rows[2_222] = {"source": "s", "instruction": "Ten?", "completions": ten}
    path = _write(tmp_path / "uf.jsonl", rows)
    assert 2_222 > 2 * importer.CHUNK_ROWS

    report = import_file(project=project, path=path, format="ultrafeedback")

    assert not report.written and report.counts == {}
    assert [(e["line"], e["field"]) for e in report.errors] == [(2_223, "responses")]
    _nothing_written(project)

    rows[2_222] = {"source": "s", "instruction": "Ten?", "completions": ten[:4]}
    report = import_file(project=project, path=_write(path, rows), format="ultrafeedback")
    assert report.written and report.counts["records"] == LINES
    assert Prompt.objects.filter(project=project).count() == LINES
    assert ImportRecord.objects.filter(project=project).count() == LINES
