"""Gold that gates: created with a curator's answer, injected at the project's rate to every
labeler whatever the overlap, kept out of snapshots, and a labeler who misses it paused until
a curator resumes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from snapshot_testutils import judge

from annotation import gold, leasing, services
from annotation.errors import LabelerPaused
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import Membership, Role, Source, Task, TaskKind


def _compare_task(project, text, *, is_gold=False, answer_first=True):
    (prompt,), _ = services.prompts_create(project=project, items=[{"text": text}])
    x, y = (
        services.response_create(prompt=prompt, text=f"{text} {s}", origin=Source.SEED)
        for s in "xy"
    )
    task = services.task_create(
        project=project,
        kind=TaskKind.COMPARE,
        prompt=prompt,
        candidates=[x, y],
        is_gold=is_gold,
        gold_answer={"winner": (x if answer_first else y).pk} if is_gold else None,
    )
    return task, x, y


def _submit(lease, winner):
    return services.annotation_submit(
        task=lease.task, labeler=lease.labeler, payload={"winner": winner}
    )


@pytest.fixture
def curator_and_labelers(make_user):
    project = services.project_create(name="Gold", slug="gold")
    curator = make_user("cura")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    labelers = [make_user(f"lab{i}") for i in range(3)]
    for user in labelers:
        services.membership_set(project=project, user=user, role=Role.LABELER)
    return project, curator, labelers


def test_it_injects_gold_at_the_project_rate(curator_and_labelers):
    """5% of 200 leases are gold within tolerance (the draw is seeded by project, labeler and
    position, so the count is the same on every run). Before: gold tasks were ordinary tasks,
    leased in id order, so all 20 came first (or never, by priority)."""
    project, _, (alice, *_) = curator_and_labelers
    services.project_update(project=project, gold_rate=0.05)
    golds = {_compare_task(project, f"gold {i}", is_gold=True)[0].pk for i in range(20)}
    for i in range(200):
        _compare_task(project, f"plain {i}")
    seen = []
    for _ in range(200):
        lease = leasing.next_task_for(project=project, labeler=alice)
        seen.append(lease.task_id in golds)
        _submit(lease, lease.task.candidate_list()[0].pk)
    assert 4 <= sum(seen) <= 18, f"{sum(seen)} gold leases out of 200 at rate 0.05"
    assert not all(seen[: sum(seen)]), "gold came first, not spread through the stream"


def test_a_gold_task_goes_to_every_labeler_whatever_its_overlap(curator_and_labelers):
    """A gold task with `required` 1 stays open after its first judgment and reaches all three
    labelers; before, it closed after one and the others never saw it."""
    project, _, labelers = curator_and_labelers
    services.project_update(project=project, gold_rate=1.0)
    task, x, _ = _compare_task(project, "known", is_gold=True)
    assert task.required == 1
    for labeler in labelers:
        lease = leasing.next_task_for(project=project, labeler=labeler)
        assert lease is not None and lease.task_id == task.pk, labeler.username
        _submit(lease, x.pk)
    task.refresh_from_db()
    assert task.status == Task.Status.OPEN and task.done == 1
    assert task.annotations.count() == 3


def test_gold_judgments_never_enter_a_snapshot(curator_and_labelers):
    """A judged gold pair is absent from the preference snapshot; the ordinary pair is there."""
    project, _, (alice, bob, _) = curator_and_labelers
    gold_task, gx, gy = _compare_task(project, "gold pair", is_gold=True)
    plain, px, py = _compare_task(project, "plain pair")
    for labeler in (alice, bob):
        judge(gold_task, labeler, {"winner": gx.pk})
        judge(plain, labeler, {"winner": px.pk})
    snapshot = snapshot_build(
        snapshot=snapshot_request(project=project, kind="preference", enqueue=False)
    )
    text = "".join(p.read_text() for p in Path(snapshot.path).glob("*.jsonl"))
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["prompt"] for r in rows] == ["plain pair"]


def test_a_gold_task_is_created_with_an_answer_valid_for_its_kind(curator_and_labelers):
    """The service refuses a gold task without an answer, or whose answer names a response
    that is not a candidate, naming `gold_answer`."""
    project, *_ = curator_and_labelers
    (prompt,), _ = services.prompts_create(project=project, items=[{"text": "p"}])
    x, y = (services.response_create(prompt=prompt, text=t, origin=Source.SEED) for t in "xy")
    for answer, said in [(None, "needs its answer"), ({"winner": 10**9}, "payload.winner")]:
        with pytest.raises(ValidationError) as error:
            services.task_create(
                project=project, kind=TaskKind.COMPARE, prompt=prompt, candidates=[x, y],
                is_gold=True, gold_answer=answer,
            )  # fmt: skip
        assert said in " ".join(error.value.message_dict["gold_answer"])
    with pytest.raises(ValidationError) as error:
        services.task_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt,
                             is_gold=True, gold_answer={"text": "x"})  # fmt: skip
    assert "cannot be gold" in " ".join(error.value.message_dict["gold_answer"])


def test_the_admin_form_names_a_bad_gold_answer(client, curator_and_labelers):
    project, curator, _ = curator_and_labelers
    task, x, y = _compare_task(project, "admin gold")
    client.force_login(curator)
    page = client.post(
        f"/admin/annotation/task/{task.pk}/change/",
        {"required": 1, "status": "open", "priority": 0, "round": 1, "is_gold": "on",
         "gold_answer": json.dumps({"winner": 10**9}), "instructions": ""},
    )  # fmt: skip
    assert page.status_code == 200
    assert "not a valid compare answer" in page.content.decode()
    task.refresh_from_db()
    assert not task.is_gold


def test_only_an_approved_judgment_becomes_the_answer(client, curator_and_labelers):
    """The curate page's "Mark gold" on a pending judgment is refused (400, saying why); once
    approved, its payload is the answer. Before: any judgment, even a rejected one, became gold
    and scored its own author 1.0."""
    project, curator, (alice, *_) = curator_and_labelers
    task, x, _ = _compare_task(project, "pick one")
    task.required = 2
    task.save(update_fields=["required"])
    annotation = judge(task, alice, {"winner": x.pk})
    client.force_login(curator)
    refused = client.post(f"/curate/gold/annotations/{annotation.pk}/gold/")
    assert refused.status_code == 400 and "approve it first" in refused.content.decode()
    task.refresh_from_db()
    assert not task.is_gold
    services.annotation_review(annotation=annotation, reviewer=curator, decision="approved")
    assert client.post(f"/curate/gold/annotations/{annotation.pk}/gold/").status_code == 200
    task.refresh_from_db()
    assert task.is_gold and task.gold_answer["winner"] == x.pk


def test_a_labeler_who_misses_gold_is_paused_until_a_curator_resumes_them(
    client, curator_and_labelers
):
    """Two missed gold tasks out of a window of two, under a 0.5 threshold: no more leases; the
    task page, the API and the curate page say why; the curator's resume lets them work again,
    measured afresh."""
    project, curator, (alice, bob, _) = curator_and_labelers
    services.project_update(project=project, gold_rate=1.0, gold_window=2, gold_min_accuracy=0.5)
    for i in range(3):
        _compare_task(project, f"gold {i}", is_gold=True)
    _compare_task(project, "plain after")
    for _ in range(2):
        lease = leasing.next_task_for(project=project, labeler=alice)
        wrong = next(
            r.pk for r in lease.task.candidate_list() if r.pk != lease.task.gold_answer["winner"]
        )
        _submit(lease, wrong)
    membership = Membership.objects.get(project=project, user=alice)
    assert membership.paused and "0.00 over your last 2 gold tasks" in membership.paused_reason
    with pytest.raises(LabelerPaused):
        leasing.next_task_for(project=project, labeler=alice)
    assert leasing.next_task_for(project=project, labeler=bob) is not None  # bob is not paused

    client.force_login(alice)
    page = client.post("/projects/gold/next/").content.decode()
    assert "Paused" in page and "0.00 over your last 2 gold tasks" in page
    assert "You are paused in this project" in client.get("/").content.decode()
    api = client.post(f"/api/v1/projects/{project.pk}/tasks/next/", content_type="application/json")
    assert api.status_code == 409 and api.json()["code"] == "paused"
    assert client.post(f"/curate/gold/labelers/{alice.pk}/resume/").status_code == 403

    client.force_login(curator)
    curate = client.get("/curate/gold/").content.decode()
    assert 'id="paused-labelers"' in curate and "lab0" in curate and "0.00 over your last" in curate
    assert client.post(f"/curate/gold/labelers/{alice.pk}/resume/").status_code == 302
    membership.refresh_from_db()
    assert not membership.paused and membership.paused_reason == ""
    assert gold.recent_gold(project=project, labeler=alice) == []  # the window starts afresh
    assert leasing.next_task_for(project=project, labeler=alice) is not None


def test_the_api_resumes_a_paused_labeler_for_curators_only(client, curator_and_labelers):
    project, curator, (alice, bob, _) = curator_and_labelers
    gold.labeler_pause(project=project, user=alice, reason="Checked by hand.")
    url = f"/api/v1/projects/{project.pk}/labelers/{alice.pk}/resume/"
    client.force_login(bob)
    assert client.post(url, content_type="application/json").status_code == 403
    assert Membership.objects.get(project=project, user=alice).paused
    client.force_login(curator)
    assert client.post(url, content_type="application/json").status_code == 204
    assert not Membership.objects.get(project=project, user=alice).paused
    missing = f"/api/v1/projects/{project.pk}/labelers/{10**9}/resume/"
    assert client.post(missing, content_type="application/json").status_code == 404
