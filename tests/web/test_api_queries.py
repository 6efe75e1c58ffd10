"""The labeling hot paths (lease the next task, submit a judgment) run a fixed, small number of
SQL statements, whatever the size of the project. `bench/labelers.py` measures them under load;
these tests pin the statement counts so a later change cannot silently add queries to them.

Transaction control (BEGIN, COMMIT, SAVEPOINT) is left out of the count: SQLite sends it as
statements and PostgreSQL does not, so the same limits hold on both backends. The tests run
outside a test transaction (`transaction=True`), as requests do in production, so the
services' own `atomic()` blocks are real transactions rather than savepoints.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Annotation, Assignment, Role, Task

# Statements per call, for a client whose token is cached (platform/core/authentication.py; the
# first request of a token reads it: one more). Lease: project scope, the labeler's membership row
# locked and read (paused? the gold draw; it serializes one labeler's own leases so the eligibility
# rules hold, issue 20), the claim (the live lease or the next task, with its prompt and
# candidates, in one statement), the insert that re-counts the taken slots (+ the item's `started`
# flag when it is a fresh one). Held again: scope, membership and claim. Submit: task scope, task
# lock with candidates and guideline version, assignment, insert, assignment state, task counter
# and status. A retry: scope, lock, assignment, the first annotation.
LEASE_FRESH_ITEM = 5
LEASE_STARTED_ITEM = 4
LEASE_HELD_AGAIN = 3
SUBMIT = 6
SUBMIT_RETRY = 4
TOKEN_READ = 1

TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")


class QueryCount(CaptureQueriesContext):
    @property
    def statements(self) -> list[str]:
        return [
            q["sql"]
            for q in self.captured_queries
            if not q["sql"].upper().startswith(TRANSACTION_CONTROL)
        ]

    def assert_at_most(self, limit: int) -> None:
        statements = self.statements
        listing = "\n".join(f"  {i + 1}. {sql[:200]}" for i, sql in enumerate(statements))
        assert len(statements) <= limit, (
            f"{len(statements)} statements, at most {limit} expected:\n{listing}"
        )


def _client(user, *, warm: bool = True) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    if warm:  # the steady state of a labeler's client: its token is cached
        assert client.get("/api/v1/projects/").status_code == 200
    return client


def _lease(client, project, limit):
    with QueryCount(connection) as queries:
        response = client.post(f"/api/v1/projects/{project.pk}/tasks/next/")
    assert response.status_code == 200, response.content
    queries.assert_at_most(limit)
    return response.json()


def _submit(client, lease, limit, key):
    with QueryCount(connection) as queries:
        response = client.post(
            f"/api/v1/tasks/{lease['task']['id']}/annotations/",
            {"payload": {"ranking": [[i] for i in lease["shown_order"]]}},
            format="json",
            HTTP_IDEMPOTENCY_KEY=key,
        )
    queries.assert_at_most(limit)
    return response


@pytest.fixture
def labelers(make_user):
    return [make_user(f"labeler{i}") for i in range(3)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prompts", [2, 12])
def test_it_leases_and_submits_in_a_fixed_number_of_queries(labelers, project_factory, prompts):
    project = project_factory(
        prompts=prompts, overlap=3, members=[(u, Role.LABELER) for u in labelers]
    )
    first, second = _client(labelers[0]), _client(labelers[1])

    lease = _lease(first, project, LEASE_FRESH_ITEM)
    # The rendered lease is complete: prompt and candidates in the labeler's shuffled order.
    assert lease["task"]["prompt"]["text"]
    assert [c["id"] for c in lease["task"]["candidates"]] == lease["shown_order"]
    assert len(lease["shown_order"]) == 4

    assert _lease(first, project, LEASE_HELD_AGAIN) == lease
    other = _lease(second, project, LEASE_STARTED_ITEM)
    assert other["task"]["id"] == lease["task"]["id"]  # started items are finished first
    assert [c["id"] for c in other["task"]["candidates"]] == other["shown_order"]

    response = _submit(first, lease, SUBMIT, key="first-try")
    assert response.status_code == 201
    retry = _submit(first, lease, SUBMIT_RETRY, key="first-try")
    assert retry.status_code == 200 and retry.json() == response.json()

    annotation = Annotation.objects.get()
    assert annotation.guideline_version == project.current_guideline().version
    assert Assignment.objects.get(labeler=labelers[0]).state == Assignment.State.SUBMITTED
    assert Task.objects.get(pk=lease["task"]["id"]).done == 1


@pytest.mark.django_db(transaction=True)
def test_the_last_needed_judgment_closes_the_item_in_the_same_update(labelers, project_factory):
    project = project_factory(prompts=1, overlap=3, members=[(u, Role.LABELER) for u in labelers])
    for n, user in enumerate(labelers):
        client = _client(user)
        lease = _lease(client, project, LEASE_STARTED_ITEM if n else LEASE_FRESH_ITEM)
        assert _submit(client, lease, SUBMIT, key=f"k{n}").status_code == 201
        task = Task.objects.get(pk=lease["task"]["id"])
        assert task.done == n + 1
        assert task.status == (Task.Status.COMPLETE if n == 2 else Task.Status.OPEN)


@pytest.mark.django_db(transaction=True)
def test_a_token_is_read_once_then_remembered(labelers, project_factory):
    project = project_factory(prompts=2, overlap=3, members=[(u, Role.LABELER) for u in labelers])
    cold = _client(labelers[0], warm=False)
    lease = _lease(cold, project, TOKEN_READ + LEASE_FRESH_ITEM)
    assert _lease(cold, project, LEASE_HELD_AGAIN) == lease
