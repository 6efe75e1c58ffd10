"""The playground's pages and services without a worker: who may open it, the queue a user is
told about, saving a conversation into the project, and model text shown as text."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from annotation import services
from annotation.models import Response, Role, Source
from training import playground
from training.models import ModelArtifact, PlaygroundSession

pytestmark = pytest.mark.django_db

SEND = {"text": "hi", "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 8, "seed": 0}


@pytest.fixture
def world(make_user):
    users = {name: make_user(name) for name in ("eng", "labeler", "curator", "outsider")}
    project = services.project_create(name="Chat", slug="chat")
    other = services.project_create(name="Other", slug="other")
    services.membership_set(project=project, user=users["eng"], role=Role.ENGINEER)
    services.membership_set(project=project, user=users["labeler"], role=Role.LABELER)
    services.membership_set(project=project, user=users["curator"], role=Role.CURATOR)
    services.membership_set(project=other, user=users["outsider"], role=Role.ADMIN)
    artifact = ModelArtifact.objects.create(project=project, name="m", stage="sft", path="/m")
    session = PlaygroundSession.objects.create(
        project=project, artifact=artifact, user=users["eng"],
        messages=[{"role": "user", "content": "Say hi"},
                  {"role": "assistant", "content": "<script>alert(1)</script> hi"}],
    )  # fmt: skip
    return {**users, "project": project, "artifact": artifact, "session": session}


def client_of(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def urls(world) -> list[str]:
    s = world["session"].pk
    return [f"/training/playground/projects/{world['project'].pk}/",
            f"/training/playground/sessions/{s}/", f"/training/playground/sessions/{s}/live/"]  # fmt: skip


def test_an_outsider_sees_no_playground_of_another_project(world):
    client = client_of(world["outsider"])
    for url in urls(world):
        response = client.get(url)
        assert response.status_code == 404, url
    s = world["session"].pk
    for action in ("send", "cancel", "save-prompt", "save-demonstration"):
        response = client.post(f"/training/playground/sessions/{s}/{action}/", SEND)
        assert response.status_code == 404, action
    world["session"].refresh_from_db()
    assert world["session"].turn == 0 and len(world["session"].messages) == 2


def test_a_labeler_cannot_open_a_playground_the_project_does_not_grant(world):
    client = client_of(world["labeler"])
    page = f"/training/playground/projects/{world['project'].pk}/"
    assert client.get(page).status_code == 403
    assert b'id="playground-chat"' not in client.get("/").content  # no link to it either
    assert b'id="playground-chat"' in client_of(world["eng"]).get("/").content
    assert client.post(page, {"artifact": world["artifact"].pk}).status_code == 403
    assert not PlaygroundSession.objects.filter(user=world["labeler"]).exists()
    # Another's session stays out of reach, whatever the grant.
    assert client.get(f"/training/playground/sessions/{world['session'].pk}/").status_code == 404

    services.project_update(project=world["project"], playground_labelers=True)
    assert client.get(page).status_code == 200
    assert b'id="playground-chat"' in client.get("/").content
    response = client.post(page, {"artifact": world["artifact"].pk})
    mine = PlaygroundSession.objects.get(user=world["labeler"])
    assert response.status_code == 302 and response["Location"].endswith(f"/{mine.pk}/")
    # Chatting is granted; saving into the project stays with curators and above.
    with pytest.raises(Exception, match="curator"):
        playground.playground_save_prompt(session=mine, user=world["labeler"])

    services.project_update(project=world["project"], playground_labelers=False)
    assert client.get(f"/training/playground/sessions/{mine.pk}/").status_code == 404


def test_the_session_limit_tells_the_user_they_wait(world, settings, make_user):
    settings.TRAINING_PLAYGROUND_MAX_SESSIONS = 1
    busy = PlaygroundSession.objects.create(
        project=world["project"], artifact=world["artifact"], user=world["eng"],
        status=PlaygroundSession.Status.GENERATING, heartbeat_at=timezone.now(),
    )  # fmt: skip
    client = client_of(world["eng"])
    s = world["session"].pk
    response = client.post(f"/training/playground/sessions/{s}/send/", SEND, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    text = response.content.decode()
    assert "Waiting for a free slot" in text
    assert "1 of 1 playground slot in use; you are number 1 in the queue." in text
    # The worker does not start it while the slot is held; it tries again later.
    with pytest.raises(playground.NoSlot):
        playground.playground_generate(session_id=s, turn=1)
    assert PlaygroundSession.objects.get(pk=s).status == "queued"
    # A second user queued behind is told they are second.
    second = playground.playground_session_create(
        project=world["project"], artifact=world["artifact"], user=world["eng"]
    )
    playground.playground_send(session=second, user=world["eng"], **SEND)
    page = client.get(f"/training/playground/sessions/{second.pk}/live/").content.decode()
    assert "you are number 2 in the queue" in page
    # A slot whose worker stopped answering is freed on the next claim.
    PlaygroundSession.objects.filter(pk=busy.pk).update(
        heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    with pytest.raises(ValidationError, match="still answering"):
        playground.playground_send(session=world["session"], user=world["eng"], **SEND)
    assert playground._claim(s, 1) is True
    assert PlaygroundSession.objects.get(pk=busy.pk).status == "failed"
    assert PlaygroundSession.objects.get(pk=s).status == "generating"
    # Cancelled while waiting: the turn is taken back and its message to the worker is moot.
    playground.playground_cancel(session=second, user=world["eng"])
    row = PlaygroundSession.objects.get(pk=second.pk)
    assert row.status == "idle" and row.messages == []
    assert playground.playground_generate(session_id=second.pk, turn=1) == "skipped"


def test_model_output_is_shown_as_text(world):
    client = client_of(world["eng"])
    for url in urls(world)[1:]:
        content = client.get(url).content
        assert b"<script>alert(1)" not in content
        assert b"&lt;script&gt;alert(1)&lt;/script&gt; hi" in content


def test_a_corrected_reply_is_saved_as_a_demonstration(world):
    session, eng = world["session"], world["eng"]
    with pytest.raises(ValidationError, match="edit the reply first"):
        playground.playground_save_demonstration(
            session=session, user=eng, text="<script>alert(1)</script> hi"
        )
    response = playground.playground_save_demonstration(session=session, user=eng, text="Hi!")
    assert response.origin == Source.LABELER and response.created_by == eng
    assert response.prompt.messages == [{"role": "user", "content": "Say hi"}]
    assert response.metadata["model_reply"] == "<script>alert(1)</script> hi"
    # Saving the same conversation as a prompt now names the prompt it already is.
    with pytest.raises(ValidationError, match=f"prompt #{response.prompt_id}"):
        playground.playground_save_prompt(session=session, user=eng)
    assert Response.objects.count() == 1


def test_send_checks_the_decoding_settings(world):
    client = client_of(world["eng"])
    s = world["session"].pk
    bad = {**SEND, "top_p": 0, "max_new_tokens": 0}
    text = client.post(f"/training/playground/sessions/{s}/send/", bad,
                       HTTP_HX_REQUEST="true").content.decode()  # fmt: skip
    assert "top_p" in text and "max_new_tokens" in text
    assert PlaygroundSession.objects.get(pk=s).turn == 0
