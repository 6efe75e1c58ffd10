"""Scoped reads of runs, artifacts and workers, and the chart data of a run page."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from annotation import selectors as annotation_selectors
from training.models import ModelArtifact, TrainingRun, WorkerHeartbeat


def runs_for(user) -> QuerySet[TrainingRun]:
    """Runs of the user's staff projects, and runs they launched. Superusers see all."""
    if not user.is_authenticated or not user.is_staff:
        return TrainingRun.objects.none()
    if user.is_superuser:
        return TrainingRun.objects.all()
    projects = annotation_selectors.projects_for(user, roles=annotation_selectors.STAFF_ROLES)
    return TrainingRun.objects.filter(Q(project__in=projects) | Q(created_by=user))


def run_get(user, pk: int) -> TrainingRun:
    return get_object_or_404(
        runs_for(user).select_related("parent_artifact", "reward_artifact", "resume_of"), pk=pk
    )


def artifacts_for(user) -> QuerySet[ModelArtifact]:
    """Artifacts of visible runs, plus registered models that no run produced (base models)."""
    if not user.is_authenticated or not user.is_staff:
        return ModelArtifact.objects.none()
    if user.is_superuser:
        return ModelArtifact.objects.all()
    return ModelArtifact.objects.filter(Q(run__in=runs_for(user)) | Q(run__isnull=True))


def workers_list(*, stale_after: float) -> list[dict]:
    from django.utils import timezone

    now = timezone.now()
    out = []
    for w in WorkerHeartbeat.objects.all():
        age = (now - w.seen_at).total_seconds()
        out.append({"worker": w, "online": age <= stale_after, "age_s": age})
    return out


def training_device(*, stale_after: float) -> dict | None:
    """The device a launched run will most likely get: the largest GPU (else the CPU with the
    most memory) of the online workers that consume the training queue, as a device dict for
    `estimate_memory`; None when no such worker is online."""
    from datetime import timedelta

    from django.utils import timezone

    cutoff = timezone.now() - timedelta(seconds=stale_after)
    devices = []
    for w in WorkerHeartbeat.objects.filter(seen_at__gte=cutoff):
        if w.queues and "training" not in w.queues:
            continue
        for gpu in w.devices or []:
            devices.append({**gpu, "kind": "cuda", "name": f"{gpu['name']} on {w.hostname}"})
        if not w.devices and w.cpu:
            devices.append({
                "kind": "cpu", "name": f"CPU ({w.cpu.get('cores', '?')} cores) on {w.hostname}",
                "memory_total": w.cpu.get("memory_total"),
                "memory_free": w.cpu.get("memory_available"),
            })  # fmt: skip
    if not devices:
        return None
    return max(devices, key=lambda d: (d["kind"] == "cuda", d.get("memory_total") or 0))


CHARTS = (
    ("loss", "Loss", lambda k: k in ("loss", "eval_loss")),
    (
        "reward",
        "Reward / score / accuracy",
        lambda k: "reward" in k or "score" in k or k.endswith("accuracy"),
    ),
    ("kl", "KL", lambda k: "kl" in k.lower()),
    ("lr", "Learning rate", lambda k: k == "learning_rate"),
)


def run_series(run: TrainingRun) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{chart: {metric: [(step, value), ...]}} from the run's metric points."""
    charts: dict[str, dict[str, list[tuple[int, float]]]] = {c[0]: {} for c in CHARTS}
    for step, values in run.points.values_list("step", "values"):
        for key, value in values.items():
            if not isinstance(value, int | float):
                continue
            for chart, _, matches in CHARTS:
                if matches(key):
                    charts[chart].setdefault(key, []).append((step, float(value)))
                    break
    return charts
