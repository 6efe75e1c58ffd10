"""An import's lookups of what its project holds already (prompts by content hash, import
records by key) read the rows they find, not the project: their cost per chunk stays flat
however much the import (or anything else) wrote before it, so an import's cost grows
linearly with its file (issue 19: 160,000 HH-RLHF lines took 18x the database CPU of 20,000)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotation import services, sql
from annotation.models import ImportBatch, ImportRecord, Prompt

HELD = 3_000  # rows of the project before the lookup
ASKED = 20


def _rows_read(table: str) -> int:
    """Rows of `table` this transaction has read so far (by scans and index fetches)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_xact_user_tables WHERE relname = %s",
            [table],
        )
        return cursor.fetchone()[0]


def _project_with_prompts(slug: str, texts: list[str]):
    project = services.project_create(name=slug, slug=slug)
    for start in range(0, len(texts), 1000):
        services.prompts_get_or_create(
            project=project, items=[{"text": t} for t in texts[start : start + 1000]]
        )
    return project


@pytest.mark.django_db
def test_it_finds_the_projects_rows_of_these_keys_only():
    """The lookup finds the project's stored rows of the keys asked, none of another project
    with the same content, and nothing for keys it does not hold."""
    texts = [f"prompt {i}" for i in range(30)]
    mine = _project_with_prompts("mine", texts[:20])
    other = _project_with_prompts("other", texts)
    pairs = services.prompts_get_or_create(project=mine, items=[{"text": t} for t in texts])
    assert [created for _, created in pairs] == [False] * 20 + [True] * 10
    stored = {p.text: p.pk for p in Prompt.objects.filter(project=mine)}
    assert {p.text: p.pk for p, _ in pairs} == stored
    assert Prompt.objects.filter(project=other).count() == 30

    batch = ImportBatch.objects.create(project=mine, file_name="f", format="trl")
    prompt = Prompt.objects.filter(project=mine).first()
    for key in ("a" * 64, "b" * 64):
        ImportRecord.objects.create(project=mine, key=key, batch=batch, line=1, prompt=prompt)
    found = sql.project_rows_by_key(
        ImportRecord, project_id=mine.pk, field="key", keys=["a" * 64, "c" * 64]
    )
    assert [r.key for r in found] == ["a" * 64]
    assert (
        sql.project_rows_by_key(ImportRecord, project_id=other.pk, field="key", keys=["a" * 64])
        == []
    )


@pytest.mark.django_db
def test_it_reads_only_the_rows_it_looks_up_however_full_the_project():
    """PostgreSQL: a chunk's prompt lookup in a project holding 3,000 prompts written in the
    same transaction (as an import writes them; no statistics see them) reads about as many
    rows as it asks for. Before: the planner scanned the whole project, filtered (3,000 rows
    read for 20 asked; an import's chunk read every row written before it)."""
    if connection.vendor != "postgresql":
        pytest.skip("counts the rows PostgreSQL reads (SQLite: the test below)")
    project = _project_with_prompts("full", [f"held {i}" for i in range(HELD)])
    asked = [{"text": f"held {i}"} for i in range(0, HELD, HELD // ASKED)] + [
        {"text": f"new {i}"} for i in range(ASKED)
    ]
    before = _rows_read("annotation_prompt")
    pairs = services.prompts_get_or_create(project=project, items=asked)
    read = _rows_read("annotation_prompt") - before
    assert sum(not created for _, created in pairs) == ASKED
    assert read <= 2 * ASKED, f"the lookup read {read} rows of the project for {len(asked)} asked"


@pytest.mark.django_db
def test_it_probes_the_unique_index_on_sqlite():
    """SQLite: the prompt lookup searches the (project, content hash) index by both columns.
    Before: ordered by id (the model's ordering), it walked the project's `project_id` index,
    reading every prompt of the project."""
    if connection.vendor != "sqlite":
        pytest.skip("reads SQLite's plan (PostgreSQL: the test above)")
    project = _project_with_prompts("plan", [f"held {i}" for i in range(50)])
    with CaptureQueriesContext(connection) as queries:
        services.prompts_get_or_create(
            project=project, items=[{"text": f"held {i}"} for i in range(0, 50, 5)]
        )
    (lookup,) = [q["sql"] for q in queries if q["sql"].startswith("SELECT")]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + lookup)
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert "project_id=? AND content_hash=?" in plan, plan
