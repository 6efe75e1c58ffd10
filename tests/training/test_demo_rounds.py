"""`rlhf_demo --rounds 2`: round 2's policies continue from round 1's. PPO from round 1's PPO
on its own rollouts; DPO from round 1's DPO on round 2's preferences alone (a snapshot of that
round's judgments, linked to the round), while round 2's reward model learns from both rounds.
Both learn only from the pairs every labeler who ordered them agreed on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

pytestmark = [pytest.mark.slow]


@pytest.mark.django_db(transaction=True)
def test_round_two_continues_each_policy_from_round_one(tmp_path, settings):
    from annotation.models import Snapshot, Task
    from training.models import ModelArtifact, Round

    settings.DATA_DIR = tmp_path / "data"
    out = tmp_path / "demo"
    call_command("rlhf_demo", "--quick", "--rounds", "2", "--no-worker", "--seed", "4",
                 "--out", str(out))  # fmt: skip
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    lineage, snaps = data["artifacts"], data["snapshots"]

    assert lineage["ppo_r2"]["parent"] == lineage["ppo_r1"]["artifact"]
    assert lineage["dpo_r2"]["parent"] == lineage["dpo_r1"]["artifact"]
    dpo_r2 = ModelArtifact.objects.get(pk=lineage["dpo_r2"]["artifact"])
    assert [a.stage for a in dpo_r2.lineage()] == ["pretrain", "sft", "dpo", "dpo"]

    # DPO's round-2 data: round 2's judgments only, the snapshot linked to round 2.
    (only_r2,) = lineage["dpo_r2"]["snapshots"]
    assert only_r2 == snaps["preference_only_r2"]["id"]
    snapshot = Snapshot.objects.get(pk=only_r2)
    round_2 = Round.objects.get(pk=data["rounds_info"][1]["round_id"])
    assert snapshot.filters["round"] == round_2.number
    assert round_2.snapshots.filter(pk=only_r2).exists()
    asked = set(
        Task.objects.filter(project_id=data["project"]["id"], round=round_2.number)
        .values_list("prompt__text", flat=True)
    )  # fmt: skip
    rows = _rows(snapshot)
    assert rows and {row["prompt"] for row in rows} <= asked
    # The round-2 reward model still learns from both rounds' pairs.
    (both,) = lineage["rm_r2"]["snapshots"]
    assert Snapshot.objects.get(pk=both).row_count > snapshot.row_count

    # Curated: the pairs the labelers disagreed on are left out, and counted in the manifest.
    for pk in (both, only_r2, *lineage["dpo_r1"]["snapshots"], *lineage["rm_r1"]["snapshots"]):
        curated = Snapshot.objects.get(pk=pk)
        assert {row["agreement"] for row in _rows(curated)} == {1.0}
        assert curated.manifest["below_min_agreement"] > 0


def _rows(snapshot) -> list[dict]:
    files = sorted(Path(snapshot.path).glob("*.jsonl"))  # train, and test when it has rows
    return [json.loads(line) for path in files
            for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]  # fmt: skip
