"""Thin adapters onto platform services that were still being built when the demo was written.

Each function names the real service it stands in for. They use the same models and write the
same rows and files the real services write, so swapping one out changes nothing downstream.
ADAPTER markers show what to replace once the real service has landed on main.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from annotation.models import Project, Snapshot


@transaction.atomic
def snapshot_from_rows(
    *, project: Project, kind: str, splits: dict[str, list[dict]], filters: dict, user=None
) -> Snapshot:
    """Write a snapshot directory (manifest.json + JSONL splits) and its `Snapshot` row.

    ADAPTER for the snapshot build service (`annotation/exports/`): the demo builds its rows
    itself (demonstrations, consensus preference pairs, prompts) and uses the engine's writer
    of the snapshot directory contract, content-addressed by sha256.
    """
    from training.engine.tiny import write_snapshot

    root = Path(settings.DATA_DIR) / "snapshots" / project.slug
    staging = root / f".{kind}-{timezone.now().strftime('%Y%m%d%H%M%S%f')}"
    write_snapshot(staging, kind, splits)
    manifest = json.loads((staging / "manifest.json").read_text(encoding="utf-8"))
    manifest["filters"] = filters
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    final = root / f"{kind}-{manifest['sha256'][:16]}"
    if final.exists():  # same content: the snapshot already exists on disk
        import shutil

        shutil.rmtree(staging)
    else:
        staging.rename(final)
    return Snapshot.objects.create(
        project=project,
        kind=kind,
        format="jsonl",
        filters=filters,
        status=Snapshot.Status.READY,
        sha256=manifest["sha256"],
        path=str(final),
        manifest=manifest,
        row_count=sum(len(rows) for rows in splits.values()),
        created_by=user,
        finished_at=timezone.now(),
    )


def run_inline(
    *,
    project: Project,
    stage: str,
    name: str,
    config: dict,
    snapshots: list[Snapshot],
    parent=None,
    reward=None,
    user=None,
):
    """Create a `TrainingRun`, run its stage in this process and record a `ModelArtifact`.

    ADAPTER for `training.services.run_launch` + the Celery task `run_execute` (used for
    `--no-worker`, and while that service is missing): the same rows, lineage and files, but the
    engine runs here instead of in a worker.
    """
    from training.engine import run_stage
    from training.models import MetricPoint, ModelArtifact, TrainingRun

    run = TrainingRun.objects.create(
        project=project,
        name=name,
        stage=stage,
        config={},
        parent_artifact=parent,
        reward_artifact=reward,
        created_by=user,
    )
    run.snapshots.set(snapshots)
    out = Path(settings.DATA_DIR) / "runs" / f"{run.pk:05d}-{stage}"
    config = {**config, "stage": stage, "output_dir": str(out)}
    run.config = config
    run.status, run.started_at, run.output_dir = (
        TrainingRun.Status.RUNNING,
        timezone.now(),
        str(out),
    )
    run.worker, run.device = "inline (--no-worker)", "cpu"
    run.save()

    def on_event(event: dict) -> None:
        if event["event"] in ("progress", "eval") and event.get("step") is not None:
            values = {
                k: v
                for k, v in event.items()
                if isinstance(v, int | float) and k not in ("time", "step")
            }
            MetricPoint.objects.create(run=run, step=event["step"], values=values)
            TrainingRun.objects.filter(pk=run.pk).update(
                step=event["step"], total_steps=event.get("total_steps") or 0
            )

    result = run_stage(config, sink=on_event)
    run.refresh_from_db()
    run.status = result.status
    run.metrics = result.metrics
    run.error = result.error or ""
    run.advice = result.advice or ""
    run.step = result.global_step
    run.finished_at = timezone.now()
    run.save()
    if result.status != TrainingRun.Status.SUCCEEDED:
        return run, None
    artifact = ModelArtifact.objects.create(
        name=name, stage=stage, path=str(out), run=run, parent=parent, metrics=result.metrics
    )
    artifact.snapshots.set(snapshots)
    return run, artifact


def _split_by_prompt(rows: list[tuple[int, dict]], test_size: float, seed: int) -> dict:
    import random

    ids = sorted({pid for pid, _ in rows})
    random.Random(seed).shuffle(ids)
    n_test = int(round(len(ids) * test_size)) if len(ids) > 1 else 0
    test = set(ids[:n_test])
    return {
        "train": [r for pid, r in rows if pid not in test],
        **({"test": [r for pid, r in rows if pid in test]} if test else {}),
    }


def _rows(project: Project, kind: str) -> list[tuple[int, dict]]:
    """The rows the export service writes for `kind` (plain, non-chat format), by prompt.

    ADAPTER mirroring `annotation/exports/rows.py`: demonstrations as prompt/completion,
    rankings aggregated per response pair over the overlap (the side with more votes is chosen;
    cancelled-out pairs are dropped), documents as text, prompts as prompt.
    """
    from collections import defaultdict

    from annotation.models import Annotation, Prompt, Response, ReviewStatus, TaskKind

    judgments = Annotation.objects.filter(
        task__project=project, superseded_by__isnull=True
    ).exclude(review_status=ReviewStatus.REJECTED)
    prompts = {p.pk: p for p in Prompt.objects.filter(project=project)}
    if kind == "pretrain":
        return [(pk, {"text": p.text}) for pk, p in sorted(prompts.items())]
    if kind == "prompts":
        return [(pk, {"prompt": p.text}) for pk, p in sorted(prompts.items())]
    if kind == "sft":
        demos = judgments.filter(kind=TaskKind.DEMONSTRATION).order_by("task__prompt_id", "id")
        return [
            (
                a.task.prompt_id,
                {"prompt": prompts[a.task.prompt_id].text, "completion": a.payload["text"]},
            )
            for a in demos.select_related("task")
        ]
    if kind != "preference":
        raise ValueError(kind)
    tallies: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for a in judgments.filter(kind=TaskKind.RANK).select_related("task"):
        if a.payload.get("all_unacceptable"):
            continue
        groups = a.payload["ranking"]
        for i, better_group in enumerate(groups):
            for worse_group in groups[i + 1 :]:
                for better in better_group:
                    for worse in worse_group:
                        low, high = min(better, worse), max(better, worse)
                        tallies[(a.task.prompt_id, low, high)].append(1 if better == low else -1)
    for a in judgments.filter(kind=TaskKind.COMPARE).select_related("task"):
        if a.payload.get("winner") is None:
            continue
        better, worse = a.payload["winner"], a.payload["loser"]
        strength = int(a.payload.get("strength") or 1)
        low, high = min(better, worse), max(better, worse)
        tallies[(a.task.prompt_id, low, high)].append(strength if better == low else -strength)
    texts = dict(Response.objects.filter(prompt__project=project).values_list("id", "text"))
    rows = []
    for (pid, low, high), signs in sorted(tallies.items()):
        total = sum(signs)
        if total == 0:
            continue
        chosen, rejected = (low, high) if total > 0 else (high, low)
        agreement = sum(1 for s in signs if s * total > 0) / len(signs)
        # margin: mean signed strength towards the chosen side
        rows.append(
            (
                pid,
                {
                    "prompt": prompts[pid].text,
                    "chosen": texts[chosen],
                    "rejected": texts[rejected],
                    "margin": abs(total) / len(signs),
                    "agreement": agreement,
                },
            )
        )
    return rows


def snapshot_make(
    *, project: Project, kind: str, test_size: float = 0.05, seed: int = 0, user=None
):
    """A ready snapshot of `project` for `kind`, built in this process.

    Uses the export service (`annotation.exports.snapshots`) when it is installed, else the
    ADAPTER above writing the same directory contract.
    """
    try:
        from annotation.exports import snapshots as exports
    except ImportError:
        exports = None
    filters = {"test_size": test_size, "seed": str(seed)}
    if exports is not None:
        snapshot = exports.snapshot_request(
            project=project, kind=kind, filters=filters, user=user, enqueue=False
        )
        return exports.snapshot_build(snapshot=snapshot)
    splits = _split_by_prompt(_rows(project, kind), test_size, seed)
    return snapshot_from_rows(project=project, kind=kind, splits=splits, filters=filters, user=user)
