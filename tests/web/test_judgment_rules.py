"""The rules of a judgment at their edges, through the API a labeling client uses: every bad
payload is a 400 that names the field and stores nothing; the extremes that are allowed are
stored as sent. (Kills the mutants "a ranking may leave responses out", "a comparison's winner
may be any id", "a comparison's strength unchecked", "a rating of 8 accepted", "unknown rating
flags accepted" and "a written conversation may end on the assistant's turn" of
tests/mutants.py.)"""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Annotation, Prompt, Role, TaskKind


@pytest.fixture
def leased(make_user, project_factory):
    """(client, leased body) for a project whose only tasks are of the given kind."""

    def make(kind: str):
        alice = make_user("alice")
        project = project_factory(prompts=1, kinds=(kind,), members=[(alice, Role.LABELER)])
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
        body = client.post(f"/api/v1/projects/{project.pk}/tasks/next/").json()
        assert body["task"]["kind"] == kind
        return client, body

    return make


def submit(client, body, payload):
    return client.post(
        f"/api/v1/tasks/{body['task']['id']}/annotations/", {"payload": payload}, format="json"
    )


def refused(response, field: str) -> None:
    assert response.status_code == 400, response.content
    assert field in response.content.decode(), response.content
    assert not Annotation.objects.exists()


def test_a_ranking_must_place_every_response_exactly_once(leased):
    client, body = leased(TaskKind.RANK)
    ids = body["shown_order"]
    refused(submit(client, body, {"ranking": [[i] for i in ids[:-1]]}), "payload.ranking")
    refused(submit(client, body, {"ranking": [[i] for i in ids] + [[ids[0]]]}), "payload.ranking")
    foreign = max(ids) + 1000
    refused(submit(client, body, {"ranking": [[i] for i in ids[:-1]] + [[foreign]]}), "ranking")
    assert submit(client, body, {"ranking": [ids]}).status_code == 201  # all tied is allowed


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"winner": "FOREIGN", "strength": 1}, "payload.winner"),
        ({"winner": "A", "strength": 0}, "payload.strength"),
        ({"winner": "A", "strength": 4}, "payload.strength"),
        ({"winner": "A", "strength": "2"}, "payload.strength"),
    ],
)
def test_a_comparison_names_one_of_its_two_responses_and_a_strength_of_1_to_3(
    leased, payload, field
):
    client, body = leased(TaskKind.COMPARE)
    a, b = body["shown_order"]
    winner = {"A": a, "FOREIGN": max(a, b) + 1000}[payload["winner"]]
    refused(submit(client, body, {**payload, "winner": winner}), field)


def test_a_comparison_at_the_extremes_is_stored_as_sent(leased):
    client, body = leased(TaskKind.COMPARE)
    a, b = body["shown_order"]
    assert submit(client, body, {"winner": b, "strength": 3}).status_code == 201
    assert Annotation.objects.get().payload == {
        "winner": b,
        "loser": a,
        "tie": False,
        "strength": 3,
    }


@pytest.mark.parametrize("score", [0, 8, 4.5, True, "5"])
def test_a_rating_is_a_whole_number_from_1_to_7(leased, score):
    client, body = leased(TaskKind.RATE)
    refused(submit(client, body, {"score": score}), "payload.score")


@pytest.mark.parametrize("score", [1, 7])
def test_the_rating_scale_ends_are_allowed(leased, score):
    client, body = leased(TaskKind.RATE)
    response = submit(client, body, {"score": score, "flags": ["harmful", "made_up_facts"]})
    assert response.status_code == 201, response.content
    assert Annotation.objects.get().payload == {
        "score": score,
        "flags": ["harmful", "made_up_facts"],
    }


def test_a_rating_flag_must_be_one_of_the_known_flags(leased):
    client, body = leased(TaskKind.RATE)
    refused(submit(client, body, {"score": 3, "flags": ["harmful", "boring"]}), "payload.flags")


def test_a_written_conversation_ends_on_the_users_turn(leased):
    client, body = leased(TaskKind.WRITE_PROMPT)
    before = Prompt.objects.count()
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi, how can I help?"},
    ]
    refused(submit(client, body, {"messages": messages}), "payload.messages")
    assert Prompt.objects.count() == before
    messages.append({"role": "user", "content": "Name a red fruit."})
    assert submit(client, body, {"messages": messages}).status_code == 201
    assert Prompt.objects.count() == before + 1
