"""`rlhf_demo --quick` end to end: a real Celery worker trains every stage, and every stage
leaves its run, snapshot and artifact with lineage, and the report has every figure."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command

pytestmark = [pytest.mark.worker, pytest.mark.slow]

REPORT_KEYS = ("ppo_vs_sft", "dpo_vs_sft", "ppo_vs_sft_best_temp", "dpo_vs_sft_best_temp")


@pytest.mark.django_db(transaction=True)
def test_it_runs_the_whole_loop_through_the_platform_with_a_real_worker(tmp_path, settings):
    from annotation.models import Annotation, Project, Snapshot, Task, TaskKind
    from training.models import MetricPoint, ModelArtifact, TrainingRun

    settings.DATA_DIR = tmp_path / "data"
    out = tmp_path / "demo"
    call_command("rlhf_demo", "--quick", "--seed", "3", "--out", str(out))

    # The report: every figure the issue names, with the right shapes.
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for key in REPORT_KEYS:
        assert 0.0 <= data[key]["win_rate"] <= 1.0
        low, high = data[key]["ci95"]
        assert 0.0 <= low <= data[key]["win_rate"] <= high <= 1.0
    assert data["sft_best_temperature"] in data["sizes"]["temperatures"]
    # Per prompt family: every test prompt counted once, shares of correct answers per policy.
    families = data["families"]
    assert sum(f["prompts"] for f in families.values()) == data["test_prompts"]
    assert set(families) <= {"arith", "category", "colour", "greeting"}
    for f in families.values():
        assert set(f["correct"]) >= {"sft@1.0", "ppo@1.0", "dpo@1.0"}
        for key in ("ppo_vs_sft", "dpo_vs_sft"):
            low, high = f[f"{key}_ci95"]
            assert 0.0 <= low <= f[key] <= high <= 1.0
    assert 0.0 <= data["reward_model"]["accuracy"] <= 1.0
    assert {"name", "quality", "careless"} <= set(data["labelers"][0])
    assert sum(lab["careless"] for lab in data["labelers"]) == 1
    stages = [s["name"] for s in data["stages"]]
    for name in ("pretrain", "sft", "reward_r1", "ppo_r1", "dpo_r1", "evaluate", "report"):
        assert name in stages
    assert all(s["seconds"] >= 0 for s in data["stages"])
    assert data["total_seconds"] > 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<svg" in html and "<script" not in html

    # Every training stage ran as a platform run, in the worker process, and succeeded.
    project = Project.objects.get(pk=data["project"]["id"])
    runs = {r.stage: r for r in TrainingRun.objects.filter(project=project)}
    assert set(runs) == {"pretrain", "sft", "reward", "ppo", "dpo"}
    for run in runs.values():
        assert run.status == TrainingRun.Status.SUCCEEDED, (run.stage, run.error)
        assert run.worker.startswith("rlhf-demo-"), run.worker  # the worker's hostname
        assert MetricPoint.objects.filter(run=run).exists()
        assert run.snapshots.filter(status=Snapshot.Status.READY).exists()

    # Snapshots of every kind the loop needs, content-addressed.
    kinds = {s.kind for r in runs.values() for s in r.snapshots.all()}
    assert kinds == {"pretrain", "sft", "preference", "prompts"}

    # Lineage: base → SFT → RM / PPO / DPO, PPO scored by the RM.
    art = {a.stage: a for a in ModelArtifact.objects.filter(run__project=project)}
    assert [a.stage for a in art["ppo"].lineage()] == ["pretrain", "sft", "ppo"]
    assert [a.stage for a in art["dpo"].lineage()] == ["pretrain", "sft", "dpo"]
    assert [a.stage for a in art["reward"].lineage()] == ["pretrain", "sft", "reward"]
    assert runs["ppo"].reward_artifact == art["reward"]
    for a in art.values():
        assert a.snapshots.exists()

    # The labelers worked through leases: demonstrations, then overlapping rankings.
    demos = Annotation.objects.filter(task__project=project, kind=TaskKind.DEMONSTRATION)
    assert demos.values("labeler").distinct().count() == 4
    ranks = Task.objects.filter(project=project, kind=TaskKind.RANK)
    assert ranks.exists() and all(t.done == t.required == 3 for t in ranks)
    assert ranks.first().candidates.first().model_artifact == art["sft"]
