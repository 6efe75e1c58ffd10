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
