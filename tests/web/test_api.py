"""The REST API: leasing, idempotent submission, validation errors that name the field."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Annotation, Role


@pytest.fixture
def labeler_client(make_user):
    def make(user):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        return client

    return make


def lease(client, project):
    response = client.post(f"/api/v1/projects/{project.pk}/tasks/next/")
    assert response.status_code == 200, response.content
    return response.json()


def test_it_leases_then_says_204_when_nothing_is_left(make_user, project_factory, labeler_client):
    alice = make_user("alice")
    project = project_factory(prompts=1, members=[(alice, Role.LABELER)])
    client = labeler_client(alice)
    body = lease(client, project)
    assert body["task"]["kind"] == "rank"
    assert [c["id"] for c in body["task"]["candidates"]] == body["shown_order"]
    ranking = [[i] for i in body["shown_order"]]
    response = client.post(
        f"/api/v1/tasks/{body['task']['id']}/annotations/",
        {"payload": {"ranking": ranking}},
        format="json",
    )
    assert response.status_code == 201
    assert client.post(f"/api/v1/projects/{project.pk}/tasks/next/").status_code == 204


def test_it_returns_the_first_result_for_a_retried_idempotency_key(
    make_user, project_factory, labeler_client
):
    alice = make_user("alice")
    project = project_factory(prompts=2, members=[(alice, Role.LABELER)])
    client = labeler_client(alice)
    body = lease(client, project)
    url = f"/api/v1/tasks/{body['task']['id']}/annotations/"
    data = {
        "payload": {"ranking": [body["shown_order"][:2], body["shown_order"][2:]]},
        "rationale": "ties are fine",
    }
    first = client.post(url, data, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    second = client.post(url, data, format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert Annotation.objects.filter(labeler=alice).count() == 1
    stored = Annotation.objects.get()
    assert stored.payload["ranking"] == [
        sorted(body["shown_order"][:2]),
        sorted(body["shown_order"][2:]),
    ]
    assert stored.shown_order == body["shown_order"]
    assert stored.guideline_version == 1


def test_it_refuses_a_key_reused_for_another_task(make_user, project_factory, labeler_client):
    alice = make_user("alice")
    project = project_factory(prompts=2, members=[(alice, Role.LABELER)])
    client = labeler_client(alice)
    body = lease(client, project)
    ranking = [[i] for i in body["shown_order"]]
    client.post(
        f"/api/v1/tasks/{body['task']['id']}/annotations/",
        {"payload": {"ranking": ranking}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    other = lease(client, project)
    response = client.post(
        f"/api/v1/tasks/{other['task']['id']}/annotations/",
        {"payload": {"ranking": [[i] for i in other["shown_order"]]}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert response.status_code == 409
    assert "Idempotency-Key" in response.json()["detail"]


def test_it_names_the_field_of_a_bad_payload(make_user, project_factory, labeler_client):
    alice = make_user("alice")
    project = project_factory(prompts=1, members=[(alice, Role.LABELER)])
    client = labeler_client(alice)
    body = lease(client, project)
    response = client.post(
        f"/api/v1/tasks/{body['task']['id']}/annotations/",
        {"payload": {"ranking": [[body["shown_order"][0]]]}},
        format="json",
    )
    assert response.status_code == 400
    assert "must place every response exactly once" in response.json()["payload.ranking"][0]
    assert not Annotation.objects.exists()


def test_it_refuses_a_submission_without_a_lease(make_user, project_factory, labeler_client):
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(
        prompts=1, overlap=2, members=[(alice, Role.LABELER), (bob, Role.LABELER)]
    )
    body = lease(labeler_client(alice), project)
    response = labeler_client(bob).post(
        f"/api/v1/tasks/{body['task']['id']}/annotations/",
        {"payload": {"ranking": [[i] for i in body["shown_order"]]}},
        format="json",
    )
    assert response.status_code == 409
    assert "do not hold this task" in response.json()["detail"]


def test_curators_bulk_create_prompts_and_duplicates_are_skipped(
    make_user, project_factory, labeler_client
):
    carol = make_user("carol")
    project = project_factory(prompts=0, members=[(carol, Role.CURATOR)])
    items = [
        {"project": project.pk, "text": "Hello there"},
        {"project": project.pk, "text": "  hello   THERE "},
        {"project": project.pk, "messages": [{"role": "user", "content": "Hi"}]},
    ]
    response = labeler_client(carol).post("/api/v1/prompts/", items, format="json")
    assert response.status_code == 201, response.content
    assert len(response.json()) == 2 and response["X-Duplicates-Skipped"] == "1"
    assert project.prompts.get(text="Hello there")


def test_labelers_cannot_create_prompts(make_user, project_factory, labeler_client):
    alice = make_user("alice")
    project = project_factory(prompts=0, members=[(alice, Role.LABELER)])
    response = labeler_client(alice).post(
        "/api/v1/prompts/", {"project": project.pk, "text": "x"}, format="json"
    )
    assert response.status_code == 403


def test_a_bad_prompt_item_is_named_and_nothing_is_written(
    make_user, project_factory, labeler_client
):
    carol = make_user("carol")
    project = project_factory(prompts=0, members=[(carol, Role.CURATOR)])
    items = [
        {"project": project.pk, "text": "fine"},
        {"project": project.pk, "messages": [{"role": "robot", "content": "x"}]},
    ]
    response = labeler_client(carol).post("/api/v1/prompts/", items, format="json")
    assert response.status_code == 400
    assert "items[1].messages" in response.json()
    assert "'robot' is not one of" in response.json()["items[1].messages"][0]
    assert not project.prompts.exists()


def test_a_project_admin_changes_settings_through_the_project_service(
    make_user, project_factory, labeler_client, monkeypatch
):
    """PATCH writes through services.project_update (it saved through the serializer), which
    checks the project as a whole before it saves."""
    from annotation import services

    dana = make_user("dana")
    project = project_factory(prompts=0, members=[(dana, Role.ADMIN)])
    calls = []
    update = services.project_update
    monkeypatch.setattr(services, "project_update", lambda **kw: calls.append(kw) or update(**kw))
    client = labeler_client(dana)
    url = f"/api/v1/projects/{project.pk}/"
    response = client.patch(url, {"overlap": 3, "name": "Renamed"}, format="json")
    assert response.status_code == 200, response.content
    assert (response.json()["overlap"], response.json()["name"]) == (3, "Renamed")
    assert calls == [{"project": project, "overlap": 3, "name": "Renamed"}]
    project.refresh_from_db()
    assert (project.overlap, project.name) == (3, "Renamed")
    response = client.patch(url, {"lease_seconds": 5}, format="json")
    assert response.status_code == 400 and "lease_seconds" in response.json()


def test_an_unknown_filter_parameter_is_a_400(make_user, labeler_client):
    response = labeler_client(make_user("alice")).get("/api/v1/tasks/?order_by=password")
    assert response.status_code == 400


def test_anonymous_users_get_nothing(db):
    assert APIClient().get("/api/v1/projects/").status_code in (401, 403)


def test_the_openapi_schema_is_served(make_user, client):
    client.force_login(make_user("alice"))
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/v1/projects/{id}/tasks/next/" in response.content
