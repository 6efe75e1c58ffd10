"""A snapshot cut from a round with `only_this_round` holds that round's judgments alone; the
round links it, and its size is the round's pairs gained."""

from __future__ import annotations

from rounds_testutils import rank_all

from annotation import services
from annotation.exports import snapshot_build
from annotation.models import Role, Source, TaskKind
from training import rounds
from training.models import ModelArtifact, Round, Stage


def test_a_rounds_own_snapshot_holds_its_judgments_and_counts_its_gain(make_user, project_factory):
    labeler = make_user("lena")
    project = project_factory("alpha", prompts=0, kinds=(), members=[(labeler, Role.LABELER)])
    policy = ModelArtifact.objects.create(project=project, name="p", stage=Stage.SFT, path="p")
    made = {}
    for number, count in ((1, 2), (2, 1)):
        made[number] = Round.objects.create(
            project=project, number=number, policy=policy, budget=5, seed=0, status="done"
        )
        for i in range(count):
            (prompt,), _ = services.prompts_create(
                project=project, items=[{"text": f"{number}.{i}"}]
            )
            a, b = (services.response_create(prompt=prompt, text=f"{number}.{i}{x}",
                                             origin=Source.SEED) for x in "ab")  # fmt: skip
            services.task_create(project=project, kind=TaskKind.RANK, prompt=prompt,
                                 candidates=[a, b], round=number)  # fmt: skip
        rank_all(project, labeler, number)

    cut = rounds.round_snapshot_request(
        round=made[2], filters={"test_size": 0}, enqueue=False, only_this_round=True
    )
    snapshot = snapshot_build(snapshot=cut)
    assert list(made[2].snapshots.all()) == [snapshot]
    assert snapshot.filters["round"] == 2 == snapshot.manifest["round"]
    assert snapshot.row_count == 1  # round 2's one pair, not round 1's two
    assert rounds.round_progress(made[2])["pairs_gained"] == 1
