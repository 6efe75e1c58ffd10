""" "Write a better one": a labeler who finds every response of a ranking unacceptable writes the
answer that should have been given; it becomes a demonstration linked to the task, and a
preference pair against each rejected response."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from annotation import leasing, rules
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import Annotation, Response, Role, Task, TaskKind

BETTER = "Paris is the capital of France."


@pytest.fixture
def ranking(make_user, project_factory, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    labeler = make_user("lena")
    project = project_factory("alpha", prompts=1, k=3, members=[(labeler, Role.LABELER)])
    return project, labeler


def rows_of(snapshot) -> list[dict]:
    text = (Path(snapshot.path) / "train.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


def test_a_better_answer_becomes_a_demonstration_and_pairs_against_each_response(client, ranking):
    project, labeler = ranking
    client.force_login(labeler)
    assignment = leasing.next_task_for(project=project, labeler=labeler)
    task = assignment.task
    form = {f"rank_{rid}": "1" for rid in assignment.shown_order}
    form |= {"all_unacceptable": "on", "better": BETTER, "idempotency_key": "k1"}
    assert client.post(f"/tasks/{task.pk}/submit/", form).status_code == 200

    ranked = Annotation.objects.get(task=task)
    assert ranked.payload["all_unacceptable"] and ranked.payload["better"] == BETTER
    demonstration = Annotation.objects.get(kind=TaskKind.DEMONSTRATION)
    assert demonstration.labeler == labeler and demonstration.payload == {"text": BETTER}
    assert demonstration.provenance["better_than"] == {"task": task.pk, "annotation": ranked.pk}
    written = demonstration.task
    assert written.prompt == task.prompt and written.status == Task.Status.COMPLETE
    assert f"task #{task.pk}" in written.instructions
    assert Response.objects.get(text=BETTER).metadata == {"annotation": demonstration.pk}
    assert leasing.next_task_for(project=project, labeler=labeler) is None  # nothing to lease

    pairs = snapshot_build(snapshot=snapshot_request(
        project=project, kind="preference", enqueue=False,
        filters={"test_size": 0, "unacceptable": "vs_demonstration"}))  # fmt: skip
    rows = rows_of(pairs)
    rejected = {r.text for r in task.candidates.all()}
    assert {row["chosen"] for row in rows} == {BETTER}
    assert {row["rejected"] for row in rows} == rejected and len(rows) == 3
    sft = snapshot_build(snapshot=snapshot_request(
        project=project, kind="sft", enqueue=False, filters={"test_size": 0}))  # fmt: skip
    assert [row["completion"] for row in rows_of(sft)] == [BETTER]


def test_a_better_answer_needs_all_responses_unacceptable(client, ranking):
    project, labeler = ranking
    client.force_login(labeler)
    assignment = leasing.next_task_for(project=project, labeler=labeler)
    form = {f"rank_{rid}": str(n) for n, rid in enumerate(assignment.shown_order, 1)}
    form |= {"better": BETTER, "idempotency_key": "k2"}
    page = client.post(f"/tasks/{assignment.task_id}/submit/", form).content.decode()
    assert "to write a better one" in page and BETTER in page  # the typed text is kept
    assert not Annotation.objects.exists()
    with pytest.raises(ValidationError) as error:
        rules.validate_payload(
            assignment.task,
            {"ranking": [assignment.shown_order], "all_unacceptable": True, "better": "\x00"},
        )
    assert "payload.better" in error.value.message_dict


@pytest.fixture
def comparison(make_user, project_factory, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    labeler = make_user("lena")
    project = project_factory(
        "alpha", prompts=1, k=2, kinds=(TaskKind.COMPARE,), members=[(labeler, Role.LABELER)]
    )
    return project, labeler


def test_both_bad_in_a_comparison_writes_a_better_one_paired_against_each(client, comparison):
    project, labeler = comparison
    client.force_login(labeler)
    assignment = leasing.next_task_for(project=project, labeler=labeler)
    task = assignment.task
    form = {"choice": "both_bad", "better": BETTER, "idempotency_key": "c1"}
    assert client.post(f"/tasks/{task.pk}/submit/", form).status_code == 200

    compared = Annotation.objects.get(task=task)
    assert compared.payload == {"winner": None, "loser": None, "tie": True, "strength": 0,
                                "all_unacceptable": True, "better": BETTER}  # fmt: skip
    demonstration = Annotation.objects.get(kind=TaskKind.DEMONSTRATION)
    assert demonstration.payload == {"text": BETTER}
    assert demonstration.provenance["better_than"] == {"task": task.pk, "annotation": compared.pk}
    assert demonstration.task.round == task.round

    # Both bad casts no vote between the two: by default no pair at all.
    with pytest.raises(ValidationError, match="no training rows"):
        snapshot_build(snapshot=snapshot_request(
            project=project, kind="preference", enqueue=False, filters={"test_size": 0}))  # fmt: skip
    pairs = snapshot_build(snapshot=snapshot_request(
        project=project, kind="preference", enqueue=False,
        filters={"test_size": 0, "unacceptable": "vs_demonstration"}))  # fmt: skip
    rows = rows_of(pairs)
    assert sorted((row["chosen"], row["rejected"]) for row in rows) == sorted(
        (BETTER, r.text) for r in task.candidates.all()
    )
    assert pairs.manifest["unacceptable"] == {"rankings": 0, "comparisons": 1,
                                              "against_demonstration": 1,
                                              "without_demonstration": 0}  # fmt: skip


def test_a_better_answer_in_a_comparison_needs_both_bad(client, comparison):
    project, labeler = comparison
    client.force_login(labeler)
    assignment = leasing.next_task_for(project=project, labeler=labeler)
    form = {"choice": "a", "strength": "1", "better": BETTER, "idempotency_key": "c2"}
    page = client.post(f"/tasks/{assignment.task_id}/submit/", form).content.decode()
    assert "Choose “Both are bad” to write a better one." in page and BETTER in page
    evil = "<script>alert('better')</script>"
    form = {"choice": "a", "strength": "1", "better": evil, "idempotency_key": "c3"}
    page = client.post(f"/tasks/{assignment.task_id}/submit/", form).content.decode()
    assert evil not in page and "&lt;script&gt;alert(&#x27;better&#x27;)&lt;/script&gt;" in page
    assert not Annotation.objects.exists()
    a, b = assignment.shown_order
    for payload, field in (
        ({"winner": a, "all_unacceptable": True}, "payload.all_unacceptable"),
        ({"winner": None, "all_unacceptable": "yes"}, "payload.all_unacceptable"),
        ({"winner": None, "better": BETTER}, "payload.better"),
        ({"winner": None, "all_unacceptable": True, "better": "\x00"}, "payload.better"),
    ):
        with pytest.raises(ValidationError) as error:
            rules.validate_payload(assignment.task, payload)
        assert field in error.value.message_dict, payload
    # Neither acceptable casts no vote, and agreement reads it as its own opinion.
    stored = rules.validate_payload(assignment.task, {"winner": None, "all_unacceptable": True})
    assert rules.votes_of(TaskKind.COMPARE, stored, [a, b]) == []
