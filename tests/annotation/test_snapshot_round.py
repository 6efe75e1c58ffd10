"""A round's snapshot: the `round` filter keeps the judgments of one labeling round (its tasks'
`round`), and the manifest says which round it holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from snapshot_testutils import judge

from annotation import services
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import Role, Source, TaskKind


def rows_of(snapshot) -> list[dict]:
    text = (Path(snapshot.path) / "train.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


def asked(project, text: str, answers: list[str], *, round: int, kind=TaskKind.RANK):
    (prompt,), _ = services.prompts_create(project=project, items=[{"text": text}])
    responses = [
        services.response_create(prompt=prompt, text=a, origin=Source.SEED) for a in answers
    ]
    task = services.task_create(
        project=project, kind=kind, prompt=prompt, candidates=responses, round=round
    )
    return task, responses


@pytest.fixture
def two_rounds(make_user, project_factory):
    labeler = make_user("lena")
    project = project_factory("alpha", prompts=0, kinds=(), members=[(labeler, Role.LABELER)])
    first, (a, b) = asked(project, "first round?", ["one A", "one B"], round=1)
    judge(first, labeler, {"ranking": [[a.pk], [b.pk]]})
    second, (c, d) = asked(project, "second round?", ["two C", "two D"], round=2)
    judge(second, labeler, {"ranking": [[d.pk], [c.pk]]})
    # A better answer written in round 2, and a demonstration of round 1.
    third, (e, f) = asked(project, "all bad?", ["bad E", "bad F"], round=2)
    judge(third, labeler, {"ranking": [[e.pk, f.pk]], "all_unacceptable": True,
                           "better": "good G"})  # fmt: skip
    demo, _ = asked(project, "demo?", [], round=1, kind=TaskKind.DEMONSTRATION)
    judge(demo, labeler, {"text": "round one demo"})
    return project


def build(project, kind="preference", **filters):
    return snapshot_build(snapshot=snapshot_request(
        project=project, kind=kind, enqueue=False, filters={"test_size": 0, **filters}))  # fmt: skip


def test_a_round_filter_keeps_only_that_rounds_judgments(two_rounds):
    project = two_rounds
    whole = build(project, unacceptable="vs_demonstration")
    assert {r["chosen"] for r in rows_of(whole)} == {"one A", "two D", "good G"}
    assert whole.manifest["round"] is None and whole.manifest["filters"]["round"] == 0

    second = build(project, unacceptable="vs_demonstration", round=2)
    pairs = {(r["chosen"], r["rejected"]) for r in rows_of(second)}
    assert pairs == {("two D", "two C"), ("good G", "bad E"), ("good G", "bad F")}
    assert second.manifest["round"] == 2 and second.manifest["filters"]["round"] == 2
    assert second.manifest["prompts"]["train"] == 2

    first = build(project, round=1)
    assert [(r["chosen"], r["rejected"]) for r in rows_of(first)] == [("one A", "one B")]
    # Demonstrations too: round 1's written one, not round 2's better answer.
    sft = build(project, kind="sft", round=1)
    assert [r["completion"] for r in rows_of(sft)] == ["round one demo"]
    prompts = build(project, kind="prompts", round=1)
    assert sorted(r["prompt"] for r in rows_of(prompts)) == ["demo?", "first round?"]


def test_a_round_filter_is_checked(two_rounds):
    with pytest.raises(ValidationError) as error:
        snapshot_request(project=two_rounds, kind="preference", filters={"round": -1})
    assert "filters.round" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        snapshot_request(
            project=two_rounds, kind="preference",
            filters={"round": 2, "aggregate": "bradley_terry"},
        )  # fmt: skip
    assert "a round's snapshot uses aggregate=votes" in error.value.message_dict["filters.round"][0]
    with pytest.raises(ValidationError) as error:
        build(two_rounds, round=7)  # no judgment of round 7: nothing to write, said so
    assert "rows" in error.value.message_dict
