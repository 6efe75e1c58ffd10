"""Prompts, tasks, guidelines and projects saved in the admin go through their services, so a
row written there meets the rules every other write meets. Before, the admin saved the rows
itself: a duplicate prompt was a server error, a compare task could have three candidates,
`required` could fall below the judgments already in, a guideline took any version number."""

from __future__ import annotations

import pytest
from django.test import Client

from annotation import leasing, services
from annotation.models import Guideline, Project, Prompt, Source, Task, TaskKind, content_hash

pytestmark = pytest.mark.django_db

NO_RESPONSES = {"responses-TOTAL_FORMS": 0, "responses-INITIAL_FORMS": 0}


@pytest.fixture
def root(make_user):
    client = Client()
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def project(project_factory):
    return project_factory("alpha", prompts=2, kinds=(TaskKind.COMPARE,))


def prompt_form(project: Project, **fields) -> dict:
    return {"project": project.pk, "text": "", "messages": "", "source": Source.SEED,
            "tags": "[]", "language": "", "metadata": "{}", **NO_RESPONSES, **fields}  # fmt: skip


def errors(response) -> dict:
    assert response.status_code == 200, response.status_code
    return response.context["adminform"].form.errors


def test_a_prompt_added_in_the_admin_is_checked_and_deduplicated_as_the_service_does(root, project):
    existing = project.prompts.order_by("id").first()
    duplicate = prompt_form(project, text=f"  {existing.text.upper()}  ")
    found = errors(root.post("/admin/annotation/prompt/add/", duplicate))
    assert f"has the same content as prompt #{existing.pk}" in found["text"][0]
    too_long = prompt_form(project, text="x" * 100_001)  # over the limit of any text
    found = errors(root.post("/admin/annotation/prompt/add/", too_long))
    assert "the limit is" in found["text"][0]
    assert project.prompts.count() == 2

    conversation = '[{"role": "user", "content": "Hi there"}]'
    form = prompt_form(project, text="ignored", messages=conversation, tags='[" x "]')
    assert root.post("/admin/annotation/prompt/add/", form).status_code == 302
    prompt = project.prompts.get(messages__isnull=False)
    assert (prompt.text, prompt.tags) == ("", ["x"])
    assert prompt.content_hash == content_hash(prompt.messages)


def test_a_prompt_changed_in_the_admin_stays_in_its_project_and_unique(
    root, project, project_factory
):
    first, second = project.prompts.order_by("id")
    url = f"/admin/annotation/prompt/{first.pk}/change/"
    other = project_factory("beta", prompts=0)
    found = errors(root.post(url, prompt_form(other, text=second.text)))
    assert f"has the same content as prompt #{second.pk}" in found["text"][0]

    assert root.post(url, prompt_form(other, text="Reworded")).status_code == 302
    first.refresh_from_db()
    assert (first.text, first.project) == ("Reworded", project)  # the project is read-only
    assert first.content_hash == content_hash("Reworded")


def task_form(project: Project, prompt: Prompt, **fields) -> dict:
    return {"project": project.pk, "kind": TaskKind.COMPARE, "prompt": prompt.pk,
            "candidates": [r.pk for r in prompt.responses.all()], "required": 1, "priority": 0,
            "round": 1, "gold_answer": "null", "instructions": "", **fields}  # fmt: skip


def test_a_task_added_in_the_admin_is_checked_as_task_create_checks_it(root, project):
    first, second = project.prompts.order_by("id")
    before = Task.objects.count()
    found = errors(root.post("/admin/annotation/task/add/", task_form(project, first)))
    assert "a compare task takes 2–2 responses, got 4" in found["candidates"][0]
    stranger = [first.responses.first().pk, second.responses.first().pk]
    found = errors(
        root.post("/admin/annotation/task/add/", task_form(project, first, candidates=stranger))
    )
    assert "answers another prompt" in found["candidates"][0]
    assert Task.objects.count() == before

    pair = [r.pk for r in first.responses.order_by("id")[:2]]
    form = task_form(project, first, candidates=pair, status=Task.Status.COMPLETE, done=1)
    assert root.post("/admin/annotation/task/add/", form).status_code == 302
    task = Task.objects.latest("id")
    assert (task.status, task.done, task.candidate_ids()) == (Task.Status.OPEN, 0, pair)


def test_a_task_changed_in_the_admin_keeps_what_it_is_and_its_count(
    root, project_factory, make_user
):
    project = project_factory("alpha", prompts=2, kinds=(TaskKind.COMPARE,), overlap=2)
    for name in ("ana", "ben"):  # both judge the same item: started items are served first
        assignment = leasing.next_task_for(project=project, labeler=make_user(name))
        payload = {"winner": assignment.shown_order[0]}
        services.annotation_submit(
            task=assignment.task, labeler=assignment.labeler, payload=payload
        )
    task = assignment.task
    url = f"/admin/annotation/task/{task.pk}/change/"
    other = project.prompts.exclude(pk=task.prompt_id).get()
    form = task_form(project, other, kind=TaskKind.RATE, status=Task.Status.OPEN, required=1)
    found = errors(root.post(url, form))
    assert "2 judgment(s) are in already; it cannot be lower than that." in found["required"]

    form.update(required=3, priority=5)
    assert root.post(url, form).status_code == 302
    task.refresh_from_db()
    assert (task.kind, task.prompt_id, task.required, task.priority) == (
        TaskKind.COMPARE, assignment.task.prompt_id, 3, 5,
    )  # fmt: skip
    assert (task.done, task.candidate_ids()) == (2, sorted(assignment.shown_order))


def test_a_guideline_added_in_the_admin_is_published_as_the_next_version(root, project):
    response = root.post(
        "/admin/annotation/guideline/add/",
        {"project": project.pk, "version": 1, "body": "Prefer short answers."},
    )
    assert response.status_code == 302
    newest = project.current_guideline()
    assert (newest.version, newest.body) == (2, "Prefer short answers.")
    assert newest.created_by.username == "root"
    first = Guideline.objects.get(project=project, version=1)
    url = f"/admin/annotation/guideline/{first.pk}/change/"
    assert root.post(url, {"project": project.pk, "body": "Rewritten"}).status_code == 403
    first.refresh_from_db()
    assert first.body == "Prefer correct answers."


def test_a_project_saved_in_the_admin_goes_through_the_project_services(root, monkeypatch):
    calls = []

    def spy(service: str):
        real = getattr(services, service)
        return lambda **kwargs: calls.append(service) or real(**kwargs)

    for service in ("project_create", "project_update"):
        monkeypatch.setattr(services, service, spy(service))
    form = {"name": "Gamma", "slug": "gamma", "description": "", "task_kinds": "[]",
            "k_responses": 4, "overlap": 1, "lease_seconds": 900,
            "gold_rate": 0, "gold_window": 10, "gold_min_accuracy": 0, "arena_margin": 0,
            "memberships-TOTAL_FORMS": 0, "memberships-INITIAL_FORMS": 0,
            "guidelines-TOTAL_FORMS": 1, "guidelines-INITIAL_FORMS": 0,
            "guidelines-0-body": "Be kind."}  # fmt: skip
    assert root.post("/admin/annotation/project/add/", form).status_code == 302
    project = Project.objects.get(slug="gamma")
    assert project.current_guideline().version == 1
    url = f"/admin/annotation/project/{project.pk}/change/"
    # A published guideline is read-only on the project page: its posted body is ignored.
    form.update({"overlap": 3, "guidelines-TOTAL_FORMS": 1, "guidelines-INITIAL_FORMS": 1,
                 "guidelines-0-id": project.current_guideline().pk,
                 "guidelines-0-project": project.pk, "guidelines-0-body": "Edited?"})  # fmt: skip
    assert root.post(url, form).status_code == 302
    project.refresh_from_db()
    assert project.overlap == 3 and calls == ["project_create", "project_update"]
    assert list(project.guidelines.values_list("body", flat=True)) == ["Be kind."]
