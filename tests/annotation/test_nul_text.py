"""NUL characters: PostgreSQL cannot store them. The one rule (`annotation.rules`): text a
person sends is refused by field, with one message, whichever way it comes in (services, the
API, an import file, the admin), never a 500; a model's sample is kept with U+FFFD instead."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation import leasing, rules, services
from annotation.imports import import_file
from annotation.models import Annotation, Assignment, Prompt, Role, Source, TaskKind


def test_a_prompt_with_nul_is_refused_naming_the_field(project_factory):
    project = project_factory(prompts=0)
    with pytest.raises(ValidationError) as error:
        services.prompts_create(project=project, items=[{"text": "fine"}, {"text": "bad\x00text"}])
    assert error.value.message_dict["items[1].text"] == [rules.NUL_REFUSED]
    with pytest.raises(ValidationError) as error:
        services.prompts_create(
            project=project, items=[{"messages": [{"role": "user", "content": "a\x00"}]}]
        )
    assert error.value.message_dict["items[0].messages"] == [
        f"messages[0].content: {rules.NUL_REFUSED}"
    ]
    assert not Prompt.objects.exists()


def test_a_model_sample_with_nul_is_kept_with_a_replacement_character(project_factory):
    project = project_factory(prompts=1)
    prompt = project.prompts.get()
    response = services.response_create(prompt=prompt, text="ok\x00then", origin=Source.MODEL)
    response.refresh_from_db()
    assert response.text == "ok\ufffdthen"


def test_a_labeler_demonstration_with_nul_is_refused(make_user, project_factory):
    alice = make_user("alice")
    project = project_factory(
        prompts=1, kinds=(TaskKind.DEMONSTRATION,), members=[(alice, Role.LABELER)]
    )
    lease = leasing.next_task_for(project=project, labeler=alice)
    with pytest.raises(ValidationError, match="NUL"):
        services.annotation_submit(task=lease.task, labeler=alice, payload={"text": "x\x00"})


def test_an_import_row_with_nul_names_line_and_field(project_factory, tmp_path):
    project = project_factory(prompts=0)
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "fine"}, {"prompt": "bad\x00one"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    report = import_file(project=project, path=path, format="auto")
    assert report.error_count == 1
    assert report.errors[0] == {"line": 2, "field": "prompt", "message": rules.NUL_REFUSED}
    assert not Prompt.objects.exists()


def test_an_api_judgment_with_nul_is_a_400_naming_the_field(make_user, project_factory):
    alice = make_user("alice")
    project = project_factory(
        prompts=1, kinds=(TaskKind.DEMONSTRATION,), members=[(alice, Role.LABELER)]
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    task = client.post(f"/api/v1/projects/{project.pk}/tasks/next/").json()["task"]

    response = client.post(
        f"/api/v1/tasks/{task['id']}/annotations/", {"payload": {"text": "x\x00"}}, format="json"
    )

    assert response.status_code == 400
    assert response.json() == {"payload.text": [rules.NUL_REFUSED]}
    assert not Annotation.objects.exists()


def test_the_admin_refuses_a_conversation_with_nul(client, make_user, project_factory):
    project = project_factory(prompts=0)
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    form = {
        "project": project.pk,
        "text": "",
        "messages": json.dumps([{"role": "user", "content": "a\x00"}]),
        "source": Source.SEED,
        "tags": "[]",
        "language": "",
        "metadata": "{}",
        "responses-TOTAL_FORMS": "0",
        "responses-INITIAL_FORMS": "0",
        "responses-MIN_NUM_FORMS": "0",
        "responses-MAX_NUM_FORMS": "1000",
    }

    response = client.post("/admin/annotation/prompt/add/", form)

    assert response.status_code == 200
    assert f"messages[0].content: {rules.NUL_REFUSED}" in response.content.decode()
    assert not Prompt.objects.exists()


def test_an_import_refuses_text_over_the_limit_like_the_services(project_factory, tmp_path):
    project = project_factory(prompts=0)
    long = "x" * (rules.MAX_TEXT + 1)
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": long}) + "\n", encoding="utf-8")

    report = import_file(project=project, path=path, format="auto")

    with pytest.raises(ValidationError) as refused:
        services.prompts_create(project=project, items=[{"text": long}])
    assert [report.errors[0]["message"]] == refused.value.message_dict["items[0].text"]
    assert not Prompt.objects.exists()


def test_a_skip_reason_with_nul_is_refused_and_the_lease_stays(make_user, project_factory):
    alice = make_user("alice")
    project = project_factory(prompts=1, kinds=(TaskKind.RATE,), members=[(alice, Role.LABELER)])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    task = client.post(f"/api/v1/projects/{project.pk}/tasks/next/").json()["task"]

    response = client.post(
        f"/api/v1/tasks/{task['id']}/skip/", {"reason": "broken\x00"}, format="json"
    )

    assert response.status_code == 400
    assert response.json() == {"reason": [rules.NUL_REFUSED]}
    assert Assignment.objects.get().state == Assignment.State.ACTIVE
