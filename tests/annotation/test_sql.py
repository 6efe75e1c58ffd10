"""The labeling flow's hand-written statements (annotation/sql.py): each binds exactly the
parameters built with it, and on PostgreSQL they are bound on the server, so that they get
prepared, and still show in Django's query log."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotation import leasing, sql
from annotation.models import Role, TaskKind

NAMED = re.compile(r"%\((\w+)\)s")


@pytest.fixture
def leased(make_user, project_factory):
    alice = make_user("alice")
    project = project_factory(prompts=2, overlap=2, members=[(alice, Role.LABELER)])
    return leasing.next_task_for(project=project, labeler=alice)


def test_every_statement_binds_exactly_the_parameters_built_with_it(leased):
    """A fragment dropped from a statement while its parameter stays, or a parameter named in
    the text but not given, fails here rather than binding wrong values or none."""
    task, alice, now = leased.task, leased.labeler, timezone.now()
    project = task.project
    named = [
        sql.claim(project=project, labeler=alice, now=now),
        sql.slot_free(task=task, now=now),
        sql.task_started(task=task),
        sql.live_lease_of(project=project, labeler=alice, now=now),
        sql.slots_taken_by_others(assignment=leased, now=now),
        sql.task_lock(task_id=task.pk),
        sql.assignment_of(task_id=task.pk, labeler=alice),
        sql.assignment_submitted(assignment=leased, now=now),
        sql.task_counted(task=task),
    ]
    project.task_kinds = [TaskKind.RANK, TaskKind.COMPARE]  # the claim with a list of kinds
    named.append(sql.claim(project=project, labeler=alice, now=now))
    for statement in named:
        assert set(NAMED.findall(statement.sql)) == set(statement.params), statement.sql
    # The scoping statements are positional (the ORM embeds the membership fragment).
    member = sql.member_of(alice, (Role.LABELER, Role.ADMIN))
    positional = [
        member,
        sql.project_row(pk=project.pk, within=member),
        sql.project_row(slug=project.slug, within=None),
        sql.task_row(pk=task.pk, within=member),
    ]
    for statement in positional:
        assert statement.sql.count("%s") == len(statement.params), statement.sql


def test_the_statements_are_logged_as_any_other(leased):
    with CaptureQueriesContext(connection) as queries:
        again = leasing.next_task_for(project=leased.task.project, labeler=leased.labeler)
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
        leasing.next_task_for(project=leased.task.project, labeler=leased.labeler)
    rows = sql.fetch(sql.Statement("SELECT statement FROM pg_prepared_statements"))
    assert any("COALESCE" in statement for (statement,) in rows), rows
