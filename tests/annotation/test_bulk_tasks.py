"""Tasks created at scale (annotation.bulk): every kind from every selection, idempotent, the
prompts with too few responses skipped and counted, curators only; the page, the API and the
command."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from annotation import services, tasks
from annotation.bulk import task_batch_request, task_batch_run
from annotation.exports import snapshot_build, snapshot_request
from annotation.imports import import_file
from annotation.models import Role, Source, Task, TaskBatch, TaskKind

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(make_user, tmp_path):
    """A project ranking K=3 responses. Prompts A (3 responses) and B (1 response) come from one
    import batch, are tagged `x` and have no demonstration; C (3 responses and a demonstration)
    and a document tagged `x` must never be selected."""
    curator, labeler, outsider = make_user("curator"), make_user("labeler"), make_user("outsider")
    project = services.project_create(name="Bulk", slug="bulk", k_responses=3, overlap=2)
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    services.membership_set(project=project, user=labeler, role=Role.LABELER)
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Prompt A", "tags": ["x"]}, {"prompt": "Prompt B", "tags": ["x"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = import_file(project=project, path=path)
    assert report.written, report.errors
    a, b = project.prompts.order_by("id")
    (c, _), (document, _) = services.prompts_get_or_create(
        project=project,
        items=[
            {"text": "Prompt C"},
            {"text": "A document", "tags": ["x"], "metadata": {"document": True}},
        ],  # fmt: skip
    )
    for prompt, n in ((a, 3), (b, 1), (c, 2), (document, 3)):
        for i in range(n):
            services.response_create(prompt=prompt, text=f"{prompt.text} reply {i}", origin="model")
    services.task_import(
        project=project,
        kind=TaskKind.DEMONSTRATION,
        prompt=c,
        judgments=[{"payload": {"text": "C written by hand"}}],
    )  # C's third response, and its demonstration
    return {
        "project": project,
        "curator": curator,
        "labeler": labeler,
        "outsider": outsider,
        "batch": report.batch_id,
        "a": a,
        "b": b,
        "c": c,
    }


def _prompts_snapshot(project) -> int:
    snapshot = snapshot_request(
        project=project, kind="prompts", filters={"tags": ["x"], "test_size": 0}, enqueue=False
    )
    snapshot_build(snapshot=snapshot)
    return snapshot.pk


SELECTIONS = {
    "batch": lambda w: {"batch": w["batch"]},
    "tags": lambda w: {"tags": ["x"]},
    "snapshot": lambda w: {"snapshot": _prompts_snapshot(w["project"])},
    "without_demonstrations": lambda w: {"without_demonstrations": 1},
}


def _run(world, kind, selection, **settings) -> TaskBatch:
    batch = task_batch_request(
        project=world["project"], kind=kind, selection=selection, enqueue=False, **settings
    )
    return task_batch_run(batch=batch)


def _tasks(project, kind) -> set[tuple[int, tuple[int, ...]]]:
    return {
        (task.prompt_id, tuple(task.candidate_ids()))
        for task in Task.objects.filter(project=project, kind=kind)
    }


def _replies(prompt) -> list[int]:
    return list(prompt.responses.filter(origin=Source.MODEL).values_list("id", flat=True))


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("kind", ["demonstration", "rank", "compare", "rate"])
def test_it_creates_each_kind_from_each_selection(world, kind, selection):
    """Each selection names A and B only (never C, never the document); each kind gets the
    candidates its rules take, B skipped and counted where one response is too few."""
    a, b = world["a"], world["b"]
    (a1, a2, a3), (b1,) = _replies(a), _replies(b)
    expected = {
        "demonstration": {(a.pk, ()), (b.pk, ())},
        "rank": {(a.pk, (a1, a2, a3))},
        "compare": {(a.pk, (a1, a2)), (a.pk, (a1, a3)), (a.pk, (a2, a3))},
        "rate": {(a.pk, (a1,)), (a.pk, (a2,)), (a.pk, (a3,)), (b.pk, (b1,))},
    }[kind]
    skipped = [] if kind in ("demonstration", "rate") else [b.pk]
    before = _tasks(world["project"], kind)

    batch = _run(world, kind, SELECTIONS[selection](world), required=3, priority=5,
                 instructions="Be terse.")  # fmt: skip

    assert batch.status == TaskBatch.Status.DONE and batch.error == ""
    assert _tasks(world["project"], kind) - before == expected
    assert batch.counts == {
        "selected": 2,
        "created": len(expected),
        "already_there": 0,
        "skipped_too_few_responses": len(skipped),
        "skipped_prompt_ids": skipped,
    }
    assert (batch.prompts_done, batch.prompts_total) == (2, 2)
    created = Task.objects.filter(project=world["project"], kind=kind, prompt__in=[a, b])
    assert {(t.required, t.priority, t.instructions, t.round) for t in created} == {
        (3, 5, "Be terse.", 1)
    }


def test_it_creates_nothing_twice(world):
    """The same request run again creates nothing and counts what is there; once B has enough
    responses, only B's task is new; another round is other tasks."""
    first = _run(world, "rank", {"tags": ["x"]})
    assert first.counts["created"] == 1

    again = _run(world, "rank", {"tags": ["x"]})
    assert again.pk != first.pk
    assert (again.counts["created"], again.counts["already_there"]) == (0, 1)
    assert Task.objects.filter(kind="rank").count() == 1

    for i in range(2):
        services.response_create(prompt=world["b"], text=f"more {i}", origin="model")
    third = _run(world, "rank", {"tags": ["x"]})
    assert (third.counts["created"], third.counts["already_there"]) == (1, 1)
    assert third.counts["skipped_too_few_responses"] == 0
    assert Task.objects.filter(kind="rank").count() == 2

    next_round = _run(world, "rank", {"tags": ["x"]}, round=2)
    assert next_round.counts["created"] == 2
    assert Task.objects.filter(kind="rank", round=2).count() == 2


def test_it_ranks_the_latest_k_responses(world):
    """A prompt with more than K responses ranks its K latest, shown in id order."""
    a = world["a"]
    newest = services.response_create(prompt=a, text="newest", origin="model")
    _run(world, "rank", {"tags": ["x"]})
    (task,) = Task.objects.filter(kind="rank")
    assert task.candidate_ids() == sorted(_replies(a)[1:3] + [newest.pk])


def test_it_reuses_the_unfinished_batch_of_the_same_request(world):
    """A double submit is one batch: the second request gets the queued one, marked reused."""
    project = world["project"]
    first = task_batch_request(project=project, kind="rate", selection={"tags": "x"})
    second = task_batch_request(project=project, kind="rate", selection={"tags": ["x"]})
    assert second.pk == first.pk and second.reused


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"kind": "write_prompt"}, "kind", "is not one of"),
        ({"selection": {}}, "selection", "name at least one of"),
        ({"selection": {"colour": "red"}}, "selection.colour", "unknown criterion"),
        ({"selection": {"batch": 999}}, "selection.batch", "no import batch #999"),
        ({"selection": {"snapshot": 999}}, "selection.snapshot", "no snapshot #999"),
        ({"selection": {"without_demonstrations": 0}}, "selection.without_demonstrations", "1"),
        ({"required": 0}, "required", "from 1 to 50"),
        ({"round": "two"}, "round", "whole number"),
        ({"instructions": "a\x00b"}, "instructions", "NUL"),
    ],
)
def test_it_refuses_bad_requests_naming_the_field(world, fields, field, says):
    from django.core.exceptions import ValidationError

    request = {"kind": "rank", "selection": {"tags": ["x"]}, **fields}
    with pytest.raises(ValidationError) as refused:
        task_batch_request(project=world["project"], enqueue=False, **request)
    assert says in " ".join(refused.value.message_dict[field])
    assert not TaskBatch.objects.exists()


def test_it_refuses_a_kind_the_project_has_not_enabled(world):
    from django.core.exceptions import ValidationError

    project = world["project"]
    project.task_kinds = ["rank"]
    project.save()
    with pytest.raises(ValidationError) as refused:
        task_batch_request(project=project, kind="rate", selection={"tags": ["x"]})
    assert "not enabled" in refused.value.message_dict["kind"][0]


# --- The API ---------------------------------------------------------------------------------


def _api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_it_creates_tasks_over_the_api(world, django_capture_on_commit_callbacks):
    """POST queues (202), the same POST while queued answers with it (200), the worker creates
    the tasks, GET shows the counts; bad input is a 400 naming the field."""
    api = _api(world["curator"])
    body = {"project": world["project"].pk, "kind": "compare",
            "selection": {"batch": world["batch"]}, "priority": 2}  # fmt: skip
    with django_capture_on_commit_callbacks():
        queued = api.post("/api/v1/task-batches/", body, format="json")
    assert queued.status_code == 202, queued.json()
    assert queued.json()["status"] == "queued"
    again = api.post("/api/v1/task-batches/", body, format="json")
    assert again.status_code == 200 and again.json()["id"] == queued.json()["id"]

    assert tasks.task_batch_run(queued.json()["id"]) == "done: 3 created"
    got = api.get(f"/api/v1/task-batches/{queued.json()['id']}/").json()
    assert got["status"] == "done" and got["percent"] == 100
    assert got["counts"]["created"] == 3 and got["counts"]["skipped_too_few_responses"] == 1
    assert Task.objects.filter(kind="compare", priority=2).count() == 3
    assert tasks.task_batch_run(queued.json()["id"]) == "skipped: not queued"

    bad = api.post("/api/v1/task-batches/", {**body, "selection": {"batch": 999}}, format="json")
    assert bad.status_code == 400 and "selection.batch" in bad.json()


def test_the_api_refuses_labelers_and_outsiders(world):
    body = {"project": world["project"].pk, "kind": "rate", "selection": {"tags": ["x"]}}
    refused = _api(world["labeler"]).post("/api/v1/task-batches/", body, format="json")
    assert refused.status_code == 403
    hidden = _api(world["outsider"]).post("/api/v1/task-batches/", body, format="json")
    assert hidden.status_code == 404
    _run(world, "rate", {"tags": ["x"]})
    assert _api(world["labeler"]).get("/api/v1/task-batches/").json()["results"] == []
    assert not Task.objects.filter(kind="rate").exclude(prompt__in=[world["a"], world["b"]])


def test_the_openapi_schema_documents_task_batches(world):
    schema = _api(world["curator"]).get("/api/schema/", {"format": "json"}).json()
    post = schema["paths"]["/api/v1/task-batches/"]["post"]
    assert {"202", "200", "400", "403"} <= set(post["responses"])
    body = schema["components"]["schemas"]["TaskBatchCreateRequest"]["properties"]
    assert {"kind", "selection", "required", "priority", "round", "instructions"} <= set(body)


# --- The pages -------------------------------------------------------------------------------


def test_a_curator_creates_tasks_from_the_curate_page(world, client):
    """The form requests a batch and shows its page; once the worker ran, the page shows the
    counts, the skipped prompt named."""
    client.force_login(world["curator"])
    page = client.get("/curate/bulk/tasks/")
    assert page.status_code == 200 and "Create tasks for Bulk" in page.text
    assert f"#{world['batch']} prompts.jsonl" in page.text

    posted = client.post(
        "/curate/bulk/tasks/",
        {
            "kind": "rank",
            "batch": str(world["batch"]),
            "required": "2",
            "priority": "1",
            "round": "1",
            "instructions": "",
        },  # fmt: skip
    )
    assert posted.status_code == 302
    batch = TaskBatch.objects.get()
    assert posted.url == f"/curate/bulk/task-batches/{batch.pk}/"
    assert "Queued" in client.get(posted.url).text
    tasks.task_batch_run(batch.pk)
    shown = client.get(posted.url, headers={"HX-Request": "true"}).text
    assert "Done" in shown and "hx-trigger" not in shown
    assert "<dt>Tasks created</dt><dd>1</dd>" in shown
    assert f"<dd>1\n      (first: {world['b'].pk})" in shown


def test_the_curate_page_names_a_bad_field(world, client):
    client.force_login(world["curator"])
    page = client.post("/curate/bulk/tasks/", {"kind": "rank", "without_demonstrations": "0"})
    assert page.status_code == 400
    assert "selection.without_demonstrations: expected a whole number" in page.text
    assert not TaskBatch.objects.exists()


def test_the_curate_pages_refuse_a_labeler(world, client):
    client.force_login(world["labeler"])
    assert client.get("/curate/bulk/tasks/").status_code == 403
    posted = client.post("/curate/bulk/tasks/", {"kind": "rate", "tags": "x"})
    assert posted.status_code == 403 and not TaskBatch.objects.exists()


# --- The command -----------------------------------------------------------------------------


def test_the_command_creates_tasks_and_nothing_twice(world):
    out = StringIO()
    call_command("tasks_create", "bulk", "--kind", "demonstration", "--tags", "x", stdout=out)
    assert "2 prompts selected, 2 tasks created, 0 already there" in out.getvalue()
    out = StringIO()
    call_command("tasks_create", "bulk", "--kind", "demonstration", "--tags", "x", stdout=out)
    assert (
        "2 tasks created" not in out.getvalue() and "0 tasks created, 2 already" in out.getvalue()
    )
    out = StringIO()
    call_command("tasks_create", "bulk", "--kind", "rank", "--batch", str(world["batch"]),
                 stdout=out)  # fmt: skip
    assert "1 prompts skipped (too few responses)" in out.getvalue()
    assert f"skipped prompts (first 1): {world['b'].pk}" in out.getvalue()


def test_the_command_names_a_bad_argument(world):
    with pytest.raises(CommandError, match="No project with slug 'nope'"):
        call_command("tasks_create", "nope", "--kind", "rate", "--tags", "x")
    with pytest.raises(CommandError, match="selection: name at least one of"):
        call_command("tasks_create", "bulk", "--kind", "rate")
