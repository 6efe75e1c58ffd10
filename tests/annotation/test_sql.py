"""The labeling flow's hand-written statements (annotation/sql.py): on PostgreSQL they are bound
on the server, so that they get prepared, and still show in Django's query log."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotation import services, sql
from annotation.models import Role


@pytest.fixture
def leased(make_user, project_factory):
    alice = make_user("alice")
    project = project_factory(prompts=2, overlap=2, members=[(alice, Role.LABELER)])
    return services.next_task_for(project=project, labeler=alice)


def test_the_statements_are_logged_as_any_other(leased):
    with CaptureQueriesContext(connection) as queries:
        again = services.next_task_for(project=leased.task.project, labeler=leased.labeler)
    assert again.pk == leased.pk
    (claim,) = [q["sql"] for q in queries.captured_queries if "COALESCE" in q["sql"]]
    assert claim.startswith("SELECT")


def test_on_postgresql_the_statements_are_prepared_after_the_threshold(leased):
    """The speed of the hot paths rests on psycopg preparing these statements (bench/README.md):
    they bind on the server, which Django's own cursor does not."""
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    threshold = connection.settings_dict["OPTIONS"]["prepare_threshold"]
    assert threshold is not None
    for _ in range(threshold + 1):
        services.next_task_for(project=leased.task.project, labeler=leased.labeler)
    rows = sql.fetch("SELECT statement FROM pg_prepared_statements")
    assert any("COALESCE" in statement for (statement,) in rows), rows
