"""Consensus that acts: preference snapshots aggregated by a Bradley-Terry consensus version
(`aggregate=bradley_terry`), one vote per labeler per pair, and the consensus job started from
the curate page and the API.

CI runs this on SQLite and on PostgreSQL: both give the pinned bytes and hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient
from snapshot_testutils import judge, prompt_with

from annotation import quality, services, tasks
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import Consensus, ConsensusJob, Role, Task, TaskKind


@pytest.fixture
def people(make_user):
    return {name: make_user(name) for name in ("owner", "ann", "bob", "cat", "outsider")}


@pytest.fixture
def project(people):
    """Three prompts where summed votes and one-vote-per-labeler Bradley-Terry disagree."""
    ann, bob, cat = people["ann"], people["bob"], people["cat"]
    project = services.project_create(name="Cons", slug="cons", overlap=3)
    services.membership_set(project=project, user=people["owner"], role=Role.CURATOR)
    for name in ("ann", "bob", "cat"):
        services.membership_set(project=project, user=people[name], role=Role.LABELER)
    # Three labelers rank three colours: every pair is decided 2:1; red > blue > green.
    _, (red, blue, green), task = prompt_with(project, "Name a colour", ["red", "blue", "green"])
    judge(task, ann, {"ranking": [[red.pk], [blue.pk], [green.pk]]})
    judge(task, bob, {"ranking": [[red.pk], [green.pk], [blue.pk]]})
    judge(task, cat, {"ranking": [[blue.pk], [green.pk], [red.pk]]})
    # One "much better" for x against two "slightly better" for y: summed votes choose x
    # (3 against 2), one vote per labeler chooses y (2 against 1).
    _, (x, y), task = prompt_with(project, "Pick one", ["x", "y"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": x.pk, "strength": 3})
    judge(task, bob, {"winner": y.pk, "strength": 1})
    judge(task, cat, {"winner": y.pk, "strength": 1})
    # Ann ranks p over q, then compares them and picks q: her newest judgment is her one
    # vote. Summed votes tie (p: Ann's ranking and Bob's; q: Ann's comparison and Cat's) and
    # drop the pair; one vote per labeler gives q 2 of 3.
    prompt, (p, q), rank = prompt_with(project, "Judged twice", ["p", "q"])
    judge(rank, ann, {"ranking": [[p.pk], [q.pk]]})
    judge(rank, bob, {"ranking": [[p.pk], [q.pk]]})
    compare = services.task_create(
        project=project, kind=TaskKind.COMPARE, prompt=prompt, candidates=[p, q]
    )
    judge(compare, ann, {"winner": q.pk, "strength": 1})
    judge(compare, cat, {"winner": q.pk, "strength": 1})
    return project


def build(project, **filters):
    snapshot = snapshot_request(project=project, kind="preference", filters=filters, enqueue=False)
    snapshot = snapshot_build(snapshot=snapshot)
    return snapshot, Path(snapshot.path)


# Checked by hand: each pair's chosen side is the one most of its labelers prefer (one vote
# each), `agreement` is that share (2 of 3), `margin` the difference of the version's scores
# (red 0.456586, blue 0, green -0.456586; x -0.334207, y 0.334207: two wins to one, shrunk
# towards even by the fit's small prior).
BRADLEY_TERRY = "".join(
    (
        '{"agreement":0.666667,"chosen":"red","margin":0.456586,"prompt":"Name a colour","rejected":"blue"}\n',
        '{"agreement":0.666667,"chosen":"red","margin":0.913172,"prompt":"Name a colour","rejected":"green"}\n',
        '{"agreement":0.666667,"chosen":"blue","margin":0.456586,"prompt":"Name a colour","rejected":"green"}\n',
        '{"agreement":0.666667,"chosen":"y","margin":0.668414,"prompt":"Pick one","rejected":"x"}\n',
        '{"agreement":0.666667,"chosen":"q","margin":0.668414,"prompt":"Judged twice","rejected":"p"}\n',
    )
)
BRADLEY_TERRY_SHA256 = "6ce6aa96df8ded57bcdc03329c11517ccefc0db72d1bf78c81ab2a2dd42e90d4"


def test_it_writes_the_pinned_bradley_terry_bytes_and_records_the_version(project):
    """A preference snapshot with aggregate=bradley_terry orders every judged pair by the
    consensus version, one vote per labeler per pair; the manifest names the version."""
    consensus = quality.consensus_compute(project=project)

    snapshot, path = build(project, test_size=0, aggregate="bradley_terry")

    assert (path / "train.jsonl").read_text(encoding="utf-8") == BRADLEY_TERRY
    assert snapshot.sha256 == BRADLEY_TERRY_SHA256
    assert snapshot.manifest["consensus"]["version"] == consensus.version == 1
    assert snapshot.manifest["consensus"]["weighted"] is False
    assert snapshot.manifest["consensus"]["pairs_not_in_consensus"] == 0
    assert snapshot.manifest["filters"]["aggregate"] == "bradley_terry"
    assert snapshot.manifest["ties_dropped"] == 0
    assert snapshot.manifest["judgments"] == 10


def test_votes_stay_the_default_and_differ_where_strength_and_repeats_weigh(project):
    """Without the filter the pairs are summed votes, as before (the manifest names no
    consensus): Ann's "much better" outweighs two labelers, and Ann's two judgments of the
    same pair cancel Bob's and Cat's into a dropped tie."""
    snapshot, path = build(project, test_size=0)

    lines = (path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert '"chosen":"x"' in lines[3] and '"rejected":"y"' in lines[3]
    assert not any('"Judged twice"' in line for line in lines)
    assert snapshot.manifest["ties_dropped"] == 1
    assert snapshot.manifest["consensus"] is None
    assert snapshot.manifest["filters"]["aggregate"] == "votes"


def test_one_vote_per_labeler_per_pair_whatever_the_task_type(project, people):
    """Ann's rank (p over q) and her newer compare (q over p) of the same pair count once, as
    her newest: the consensus reads 3 votes on the pair, not 4, and q wins 2 to 1."""
    consensus = quality.consensus_compute(project=project)

    twice = Task.objects.get(prompt__text="Judged twice", kind=TaskKind.RANK).prompt
    p, q = twice.responses.order_by("id")
    scores = consensus.scores[str(twice.pk)]
    assert scores[str(q.pk)] > scores[str(p.pk)]
    # Votes: 3 (colours) x 3 pairs + 3 (pick one) + 3 (judged twice, not 4).
    assert consensus.summary["votes"] == 15
    assert consensus.summary["judgments"] == 10


def test_a_labelers_newer_tie_withdraws_their_preference(project, people):
    """Cat's newer comparison calls p and q even: Cat's vote on the pair is the tie, so only
    Ann (q) and Bob (p) prefer, and the version scores them equally: the pair is dropped."""
    twice = Task.objects.get(prompt__text="Judged twice", kind=TaskKind.RANK)
    again = services.task_create(
        project=twice.project,
        kind=TaskKind.COMPARE,
        prompt=twice.prompt,
        candidates=list(twice.prompt.responses.order_by("id")),
    )
    judge(again, people["cat"], {"winner": None})
    quality.consensus_compute(project=twice.project)

    snapshot, path = build(twice.project, test_size=0, aggregate="bradley_terry")

    assert '"Judged twice"' not in (path / "train.jsonl").read_text(encoding="utf-8")
    assert snapshot.manifest["ties_dropped"] == 1


def test_without_a_consensus_version_the_request_is_refused_saying_how_to_compute_one(project):
    with pytest.raises(ValidationError) as refused:
        snapshot_request(project=project, kind="preference", filters={"aggregate": "bradley_terry"})

    message = refused.value.message_dict["filters.aggregate"][0]
    assert "has none computed yet" in message and "Compute consensus" in message
    assert "/api/v1/consensus/" in message


def test_the_filter_is_checked_by_name(project):
    quality.consensus_compute(project=project)
    cases = [
        ({"aggregate": "mean"}, "filters.aggregate", "expected one of 'votes'"),
        ({"aggregate": "bradley_terry", "consensus_version": 7}, "filters.consensus_version",
         "no consensus version 7"),
        ({"aggregate": "bradley_terry", "pairs": "per_annotation"}, "filters.aggregate",
         "pairs=per_annotation"),
        ({"consensus_version": 1}, "filters.consensus_version", "only with aggregate"),
    ]  # fmt: skip
    for filters, field, text in cases:
        with pytest.raises(ValidationError) as refused:
            snapshot_request(project=project, kind="preference", filters=filters)
        assert text in refused.value.message_dict[field][0], filters
    with pytest.raises(ValidationError) as refused:
        snapshot_request(project=project, kind="sft", filters={"aggregate": "bradley_terry"})
    assert "only to preference" in refused.value.message_dict["filters.aggregate"][0]


def test_it_uses_the_newest_version_or_the_one_named(project, people):
    """A newer version is used by default and recorded; `consensus_version` pins an
    older one. A pair judged after a version was computed is not in it: counted, not
    exported."""
    quality.consensus_compute(project=project)
    _, (u, v), task = prompt_with(project, "Late", ["u", "v"], kind=TaskKind.COMPARE)
    judge(task, people["ann"], {"winner": u.pk})

    old, path = build(project, test_size=0, aggregate="bradley_terry", consensus_version=1)
    assert old.manifest["consensus"]["version"] == 1
    assert old.manifest["consensus"]["pairs_not_in_consensus"] == 1
    assert '"Late"' not in (path / "train.jsonl").read_text(encoding="utf-8")

    quality.consensus_compute(project=project)
    new, path = build(project, test_size=0, aggregate="bradley_terry")
    assert new.manifest["consensus"]["version"] == 2
    assert new.manifest["consensus"]["pairs_not_in_consensus"] == 0
    assert '"chosen":"u","margin"' in (path / "train.jsonl").read_text(encoding="utf-8")


# --- The job: from the curate page and the API ------------------------------------------------


def test_a_curator_computes_consensus_from_the_curate_page_once(
    client, project, people, django_capture_on_commit_callbacks
):
    """The curate page's button queues one job (asked twice while queued: still one); the
    worker's task writes version 1, which the page then lists."""
    client.force_login(people["owner"])
    page = client.get("/curate/cons/").content.decode()
    assert 'id="consensus-form"' in page and "No consensus computed yet." in page

    with django_capture_on_commit_callbacks() as callbacks:
        first = client.post("/curate/cons/consensus/", {"weighted": "1"}, follow=True)
        second = client.post("/curate/cons/consensus/", {"weighted": "1"}, follow=True)
    assert first.status_code == second.status_code == 200
    job = ConsensusJob.objects.get()
    assert f"Consensus computation (weighted by labeler quality) queued: job #{job.pk}." in (
        first.content.decode()
    )
    assert f"already queued: job #{job.pk}" in second.content.decode()
    assert len(callbacks) == 1 and job.weighted and job.created_by == people["owner"]

    assert tasks.consensus_compute(job.pk) == "done: version 1"
    assert tasks.consensus_compute(job.pk) == "skipped: not queued"  # a retry runs nothing
    job.refresh_from_db()
    assert job.status == ConsensusJob.Status.DONE and job.consensus.version == 1
    assert Consensus.objects.count() == 1
    page = client.get("/curate/cons/").content.decode()
    assert "<td>v1</td><td>yes</td>" in page


def test_labelers_and_outsiders_cannot_start_consensus(client, project, people):
    client.force_login(people["ann"])
    assert client.post("/curate/cons/consensus/").status_code == 403
    client.force_login(people["outsider"])
    assert client.post("/curate/cons/consensus/").status_code == 404
    assert not ConsensusJob.objects.exists()


def api_for(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_the_api_queues_one_job_then_reports_the_version(
    project, people, django_capture_on_commit_callbacks
):
    api = api_for(people["owner"])
    with django_capture_on_commit_callbacks() as callbacks:
        queued = api.post("/api/v1/consensus/", {"project": project.pk}, format="json")
        again = api.post("/api/v1/consensus/", {"project": project.pk}, format="json")
    assert queued.status_code == 202 and again.status_code == 200, queued.json()
    assert queued.json()["id"] == again.json()["id"] and queued.json()["version"] is None
    assert len(callbacks) == 1

    tasks.consensus_compute(queued.json()["id"])

    got = api.get(f"/api/v1/consensus/{queued.json()['id']}/").json()
    assert got["status"] == "done" and got["version"] == 1 and got["weighted"] is False
    snapshot = api.post(
        "/api/v1/snapshots/",
        {"project": project.pk, "kind": "preference",
         "filters": {"aggregate": "bradley_terry", "test_size": 0}},
        format="json",
    )  # fmt: skip
    assert snapshot.status_code == 202, snapshot.json()


def test_the_api_refuses_labelers_outsiders_and_bad_input(project, people):
    body = {"project": project.pk}
    assert api_for(people["ann"]).post("/api/v1/consensus/", body, format="json").status_code == 403
    outsider = api_for(people["outsider"]).post("/api/v1/consensus/", body, format="json")
    assert outsider.status_code == 404
    assert api_for(people["ann"]).get("/api/v1/consensus/").json()["results"] == []
    bad = api_for(people["owner"]).post(
        "/api/v1/consensus/", {"project": project.pk, "weighted": "maybe"}, format="json"
    )
    assert bad.status_code == 400 and "weighted" in bad.json()
    refused = api_for(people["owner"]).post(
        "/api/v1/snapshots/",
        {"project": project.pk, "kind": "preference", "filters": {"aggregate": "bradley_terry"}},
        format="json",
    )
    assert refused.status_code == 400
    assert "has none computed yet" in str(refused.json())
    assert not ConsensusJob.objects.exists()


def test_the_openapi_schema_documents_the_consensus_endpoint(client, people):
    client.force_login(people["owner"])
    schema = client.get("/api/schema/", {"format": "json"}).json()

    post = schema["paths"]["/api/v1/consensus/"]["post"]
    assert {"202", "200"} <= set(post["responses"])
    assert "ConsensusCreate" in str(post["requestBody"])


def test_conversations_get_message_rows_ordered_by_the_version(people):
    """A conversational prompt's pairs are message lists, chosen by the version's scores."""
    project = services.project_create(name="Chat", slug="chat", overlap=3)
    messages = [{"role": "user", "content": "hi"}]
    _, (x, y), task = prompt_with(project, "", ["x", "y"], kind=TaskKind.COMPARE, messages=messages)
    judge(task, people["ann"], {"winner": x.pk, "strength": 3})
    judge(task, people["bob"], {"winner": y.pk})
    judge(task, people["cat"], {"winner": y.pk})
    quality.consensus_compute(project=project)

    snapshot, path = build(project, test_size=0, aggregate="bradley_terry")

    row = json.loads((path / "train.jsonl").read_text(encoding="utf-8"))
    assert row["prompt"] == messages
    assert row["chosen"] == [{"role": "assistant", "content": "y"}]
    assert row["rejected"] == [{"role": "assistant", "content": "x"}]
    assert (row["agreement"], row["margin"]) == (0.666667, 0.668414)
    assert snapshot.manifest["conversational"] is True
