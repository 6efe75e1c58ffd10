"""A project for round tests: prompts (one judged already, one imported document), a policy,
a second generator and two reward models built from the tiny fixtures (a unique module name:
tests/ share sys.path)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from annotation import services
from annotation.models import Assignment, Role, Source, TaskKind
from training.models import ModelArtifact

HIDDEN = "ZZ-HIDDEN-MODEL-NAME"  # the labeler must never see it


def round_world(tiny: dict, make_user, *, prompts: int = 6) -> dict:
    from training.engine.tiny import tiny_llama, tiny_score_model

    root = Path(tiny["root"])
    engineer = make_user("engineer", is_staff=True)
    labeler = make_user("labeler")
    project = services.project_create(name="Rounds", slug="rounds", k_responses=4)
    services.membership_set(project=project, user=engineer, role=Role.ENGINEER)
    services.membership_set(project=project, user=labeler, role=Role.LABELER)
    made, _ = services.prompts_create(
        project=project, items=[{"text": f"Question {i}:"} for i in range(prompts)]
    )
    # An imported pretraining document is stored as a prompt, flagged: never a candidate.
    (document,), _ = services.prompts_create(
        project=project,
        items=[{"text": "Question 99: a corpus document.", "metadata": {"document": True}}],
        source=Source.IMPORTED,
    )
    # The first prompt was ranked in an earlier, hand-made round: not asked again.
    judged = made[0]
    old = [services.response_create(prompt=judged, text=t, origin=Source.SEED) for t in "ab"]
    task = services.task_create(project=project, kind=TaskKind.RANK, prompt=judged, candidates=old)
    judge(task, labeler, {"ranking": [[old[0].pk], [old[1].pk]]})
    other_dir = root / "other-policy"
    if not other_dir.exists():
        tiny_llama(tiny["tokenizer"], other_dir, seed=5)
    second_rm = root / "reward-2"
    if not second_rm.exists():
        tiny_score_model(tiny["policy"], second_rm, seed=2)
    policy = ModelArtifact.objects.create(
        name=f"{HIDDEN}-policy", stage="ppo", path=tiny["policy"], project=project
    )
    sft = ModelArtifact.objects.create(
        name=f"{HIDDEN}-sft", stage="sft", path=str(other_dir), project=project
    )
    rms = [
        ModelArtifact.objects.create(name=f"rm{i}", stage="reward", path=str(p), project=project)
        for i, p in enumerate([tiny["reward"], second_rm])
    ]
    return {"engineer": engineer, "labeler": labeler, "project": project, "prompts": made,
            "document": document, "judged": judged, "policy": policy, "sft": sft,
            "reward_models": rms}  # fmt: skip


def judge(task, labeler, payload: dict):
    Assignment.objects.get_or_create(
        task=task,
        labeler=labeler,
        defaults={
            "expires_at": timezone.now() + timedelta(minutes=10),
            "shown_order": task.candidate_ids(),
        },
    )
    annotation, _ = services.annotation_submit(task=task, labeler=labeler, payload=payload)
    return annotation


def rank_all(project, labeler, round_number: int) -> int:
    """Rank every open task of the round, best first by id (any order will do)."""
    n = 0
    for task in project.tasks.filter(round=round_number, status="open"):
        ids = task.candidate_ids()
        judge(task, labeler, {"ranking": [[pk] for pk in ids]})
        n += 1
    return n
