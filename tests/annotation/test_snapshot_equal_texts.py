"""No preference snapshot emits a pair whose chosen and rejected texts are equal, whatever
the aggregation or the prompt's shape: two identical samples of a model are common, and such a
pair is poison for a reward model and for DPO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from snapshot_testutils import judge, prompt_with

from annotation import quality, services
from annotation.exports import snapshot_build, snapshot_request


@pytest.fixture
def people(make_user):
    return make_user("owner"), make_user("ann")


@pytest.fixture
def project(people):
    return services.project_create(name="Eq", slug="eq", owner=people[0])


def pairs_of(project, **filters) -> tuple[list[dict], dict]:
    snapshot = snapshot_request(
        project=project, kind="preference", filters={"test_size": 0, **filters}, enqueue=False
    )
    snapshot = snapshot_build(snapshot=snapshot)
    path = Path(snapshot.path) / "train.jsonl"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line], snapshot.manifest


@pytest.mark.parametrize("filters", [{}, {"pairs": "per_annotation"}])
def test_it_drops_pairs_of_identical_texts(project, people, filters):
    _, (a, b, c), task = prompt_with(project, "What is 4 * 6?", ["It is 24.", "It is 24.", "25"])
    judge(task, people[1], {"ranking": [[a.pk], [b.pk], [c.pk]]})

    rows, manifest = pairs_of(project, **filters)

    assert rows, "the distinct pairs stay"
    assert all(row["chosen"] != row["rejected"] for row in rows)
    assert {(row["chosen"], row["rejected"]) for row in rows} == {("It is 24.", "25")}
    assert manifest["equal_texts_dropped"] == 1


def test_it_drops_them_from_conversations_too(project, people):
    (prompt,), _ = services.prompts_create(
        project=project, items=[{"messages": [{"role": "user", "content": "Hi"}]}]
    )
    a, b, c = (
        services.response_create(prompt=prompt, text=text, origin="seed")
        for text in ("Hello!", "Hello!", "Go away.")
    )
    task = services.task_create(project=project, kind="rank", prompt=prompt, candidates=[a, b, c])
    judge(task, people[1], {"ranking": [[a.pk], [b.pk], [c.pk]]})

    rows, _ = pairs_of(project, conversational=True)

    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("Hello!", "Go away."),
        ("Hello!", "Go away."),
    ]


def test_it_drops_them_from_consensus_rows(project, people):
    _, (a, b, c), task = prompt_with(project, "Say hi", ["hi", "hi", "bye"])
    judge(task, people[1], {"ranking": [[a.pk], [b.pk], [c.pk]]})
    quality.consensus_compute(project=project, weighted=False)

    rows, manifest = pairs_of(project, aggregate="bradley_terry")

    assert {(row["chosen"], row["rejected"]) for row in rows} == {("hi", "bye")}
    assert manifest["equal_texts_dropped"] == 1
