"""The lease and submit endpoints after their rewrite for speed (bench/README.md, "Labeling
load"): token revocation within the documented bound, scoping of the hand-written statements,
and responses identical to what the serializers declare in the OpenAPI schema."""

from __future__ import annotations

import pytest
from django.db import connection
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation import api, leasing, services
from annotation.models import Role, Source, TaskKind


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def project(project_factory, alice):
    return project_factory(prompts=3, overlap=2, members=[(alice, Role.LABELER)])


def _client(user) -> tuple[APIClient, Token]:
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client, token


def _lease(client, project):
    return client.post(f"/api/v1/projects/{project.pk}/tasks/next/")


def test_a_deleted_token_stops_working_at_once_in_this_worker(alice, project):
    client, token = _client(alice)
    assert _lease(client, project).status_code == 200  # now cached
    token.delete()
    assert _lease(client, project).status_code == 401


def test_a_deactivated_account_stops_working_at_once_in_this_worker(alice, project):
    client, _ = _client(alice)
    assert _lease(client, project).status_code == 200
    alice.is_active = False
    alice.save()
    assert _lease(client, project).status_code == 401


def test_other_workers_see_a_revocation_within_the_cache_time(
    alice, project, settings, monkeypatch
):
    """A token deleted by another process (no signal reaches this one) works here until the
    cached entry is API_TOKEN_CACHE_SECONDS old, and not a moment longer."""
    from core import authentication

    settings.API_TOKEN_CACHE_SECONDS = 10
    clock = [1000.0]
    monkeypatch.setattr(authentication, "monotonic", lambda: clock[0])
    client, token = _client(alice)
    assert _lease(client, project).status_code == 200
    with connection.cursor() as cursor:  # behind the ORM's back: no post_delete here
        cursor.execute("DELETE FROM authtoken_token WHERE key = %s", [token.key])
    clock[0] += 9.9
    assert _lease(client, project).status_code == 200
    clock[0] += 0.2
    assert _lease(client, project).status_code == 401


def test_with_no_token_cache_a_revoked_or_rotated_token_stops_at_once(alice, project, settings):
    """API_TOKEN_CACHE_SECONDS=0 (README: "read on every request"): a token deleted by another
    web worker (no signal reaches this one) is refused on the very next request, and the token
    that replaced it works.

    Kills mutation: platform/core/authentication.py CachedTokenAuthentication.authenticate_credentials
    `seconds = settings.API_TOKEN_CACHE_SECONDS` -> `seconds = settings.API_TOKEN_CACHE_SECONDS
    or 10`."""
    settings.API_TOKEN_CACHE_SECONDS = 0
    client, token = _client(alice)
    assert _lease(client, project).status_code == 200
    with connection.cursor() as cursor:  # behind the ORM's back, as another worker would
        cursor.execute("DELETE FROM authtoken_token WHERE key = %s", [token.key])
    assert _lease(client, project).status_code == 401
    rotated, _ = _client(alice)
    assert _lease(rotated, project).status_code == 200


def test_an_outsider_gets_404_for_the_lease_and_the_submit(make_user, alice, project):
    lease = _lease(_client(alice)[0], project).json()
    outsider, _ = _client(make_user("mallory"))
    assert _lease(outsider, project).status_code == 404
    response = outsider.post(
        f"/api/v1/tasks/{lease['task']['id']}/annotations/",
        {"payload": {"ranking": [[i] for i in lease["shown_order"]]}},
        format="json",
    )
    assert response.status_code == 404


def test_a_superuser_leases_in_any_project(make_user, project):
    root, _ = _client(make_user("root", is_superuser=True, is_staff=True))
    assert _lease(root, project).status_code == 200


@pytest.mark.parametrize("pk", ["abc", "0", "-1", str(2**63), "1" * 30])
def test_an_id_that_cannot_exist_is_404(alice, project, pk):
    client, _ = _client(alice)
    assert client.post(f"/api/v1/projects/{pk}/tasks/next/").status_code == 404
    response = client.post(f"/api/v1/tasks/{pk}/annotations/", {"payload": {}}, format="json")
    assert response.status_code == 404


def _declared(serializer_class, instance, **context):
    """What DRF's field-by-field rendering of the declared fields gives."""
    serializer = serializer_class(instance, context=context)
    return serializers.ModelSerializer.to_representation(serializer, instance)


def _rendered(serializer_class, instance, **context):
    """What the API answers: the serializer's own (fast) rendering."""
    return serializer_class(instance, context=context).data


def test_the_hot_paths_render_exactly_what_the_serializers_declare(alice, project):
    lease = leasing.next_task_for(project=project, labeler=alice)
    task = lease.task
    assert _rendered(api.LeaseSerializer, lease) == _declared(api.LeaseSerializer, lease)
    shown = lease.shown_order
    assert _rendered(api.TaskSerializer, task, shown_order=shown) == _declared(
        api.TaskSerializer, task, shown_order=shown
    )
    assert [c["id"] for c in _rendered(api.LeaseSerializer, lease)["task"]["candidates"]] == shown
    assert _rendered(api.PromptSerializer, task.prompt) == _declared(
        api.PromptSerializer, task.prompt
    )
    for response in task.candidates.all():
        assert _rendered(api.CandidateSerializer, response) == _declared(
            api.CandidateSerializer, response
        )
    annotation, _ = services.annotation_submit(
        task=task, labeler=alice, payload={"ranking": [[i] for i in lease.shown_order]}
    )
    assert _rendered(api.AnnotationSerializer, annotation) == _declared(
        api.AnnotationSerializer, annotation
    )
    assert _declared(api.AnnotationSerializer, annotation)["created_at"].endswith("Z")


def test_a_conversation_and_a_task_without_prompt_render_as_declared(alice, project):
    (prompt,), _ = services.prompts_create(
        project=project,
        items=[{"messages": [{"role": "user", "content": "Hi"}], "tags": ["x"]}],
        source=Source.LABELER,
    )
    assert _rendered(api.PromptSerializer, prompt) == _declared(api.PromptSerializer, prompt)
    write = services.task_create(project=project, kind=TaskKind.WRITE_PROMPT)
    assert _rendered(api.TaskSerializer, write) == _declared(api.TaskSerializer, write)
    assert _rendered(api.TaskSerializer, write)["prompt"] is None
