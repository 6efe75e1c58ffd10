"""A labeling round end to end through a real Celery worker process (`manage.py worker`): the
round is queued by "Start next round", the worker selects prompts, samples from two models,
drops duplicates and creates mixed-model tasks; labels follow, then a preference snapshot built
by the worker's snapshot task; the next round does not ask the same prompts again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rounds_testutils import rank_all, round_world
from runs_testutils import wait_for, worker_started

from annotation.models import Snapshot, Task
from training import rounds
from training.models import Round

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def worker(broker_dir, django_db_setup, django_db_blocker, tmp_path_factory):
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = worker_started(broker_dir, log, django_db_blocker, env={"TRAINING_TORCH_THREADS": "1"})
    yield proc
    proc.stop()


def finished(model, pk: int, *states: str):
    def check():
        row = model.objects.get(pk=pk)
        return row if row.status in states else None

    return check


def test_a_round_end_to_end_through_a_real_worker(worker, tiny, make_user, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    world = round_world(tiny, make_user)
    project = world["project"]

    job = rounds.round_start(
        policy=world["policy"], generators=[world["sft"]], budget=3, k=4, max_new_tokens=8,
        user=world["engineer"],
    )  # fmt: skip
    job = wait_for(finished(Round, job.pk, "done", "failed"), 180, what="the round")
    assert job.status == "done", job.error
    assert job.worker.startswith(worker.name)

    # Selection: unjudged prompts, never the document; the budget met.
    assert job.selection["prompts"] == [p.pk for p in world["prompts"][1:4]]
    tasks = list(Task.objects.filter(project=project, round=job.number))
    assert len(tasks) == 3
    for task in tasks:
        candidates = task.candidate_list()
        assert len({" ".join(r.text.split()) for r in candidates}) == len(candidates) >= 2
        assert {r.model_artifact_id for r in candidates} == {world["policy"].pk, world["sft"].pk}
    assert job.counts["responses"] + job.counts["shortfall"] == 12

    assert rank_all(project, world["labeler"], job.number) == 3
    snapshot = rounds.round_snapshot_request(round=job, filters={"test_size": 0})
    snapshot = wait_for(
        finished(Snapshot, snapshot.pk, Snapshot.Status.READY, Snapshot.Status.FAILED), 120,
        what="the snapshot",
    )  # fmt: skip
    assert snapshot.status == Snapshot.Status.READY, snapshot.error
    rows = [json.loads(line) for line in (Path(snapshot.path) / "train.jsonl").open()]
    assert rows and all(row["chosen"] != row["rejected"] for row in rows)
    assert rounds.round_progress(job)["pairs_gained"] == snapshot.row_count

    second = rounds.round_start(policy=world["policy"], budget=5, k=2, max_new_tokens=8)
    second = wait_for(finished(Round, second.pk, "done", "failed"), 180, what="round 2")
    assert second.status == "done", second.error
    asked_before = {world["judged"].pk, *job.selection["prompts"]}
    assert not asked_before & set(second.selection["prompts"]), "judged prompts are not re-asked"
    assert second.number == job.number + 1
