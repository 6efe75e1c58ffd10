"""Scoped reads of runs, artifacts and workers, and the chart data of a run page."""

from __future__ import annotations

from datetime import timedelta

from celery.app.routes import prepare
from celery.utils.functional import maybe_evaluate
from django.conf import settings
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from annotation.access import projects_at_least
from annotation.models import Role
from core.jobs import job_kind
from training.models import (
    BaseModelFetch,
    GenerationJob,
    ModelArtifact,
    TrainingRun,
    WorkerHeartbeat,
)


def runs_for(user) -> QuerySet[TrainingRun]:
    """Runs of the projects where the user is a curator or above (having launched a run does
    not keep it visible after the role is gone). Superusers see all."""
    if not user.is_authenticated or not user.is_staff:
        return TrainingRun.objects.none()
    if user.is_superuser:
        return TrainingRun.objects.all()
    return TrainingRun.objects.filter(project__in=projects_at_least(user, Role.CURATOR))


def run_get(user, pk: int) -> TrainingRun:
    return get_object_or_404(
        runs_for(user).select_related("parent_artifact", "reward_artifact", "resume_of"), pk=pk
    )


def fetches_for(user) -> QuerySet[BaseModelFetch]:
    """Base-model fetches of the projects where the user is a curator or above (who see them in
    the admin); superusers see all. Cancelling one is its project's engineers' (the service)."""
    if not user.is_authenticated or not user.is_staff:
        return BaseModelFetch.objects.none()
    if user.is_superuser:
        return BaseModelFetch.objects.all()
    return BaseModelFetch.objects.filter(project__in=projects_at_least(user, Role.CURATOR))


def artifacts_for(user) -> QuerySet[ModelArtifact]:
    """Models of the projects where the user is a curator or above (a run's model belongs to the
    run's project, a registered one to the project it was registered in). Models of no project
    (from before models had one): superusers only."""
    if not user.is_authenticated or not user.is_staff:
        return ModelArtifact.objects.none()
    if user.is_superuser:
        return ModelArtifact.objects.all()
    return ModelArtifact.objects.filter(project__in=projects_at_least(user, Role.CURATOR))


def workers_live(
    *, queue: str | None = None, stale_after: float | None = None
) -> list[WorkerHeartbeat]:
    """The workers that count as running, and of those the ones that take `queue`: a heartbeat
    within the stale bound (TRAINING_STALE_AFTER_SECONDS unless given) and no shutdown recorded
    since. The one liveness rule of the workers page, the pages of queued work, the launch
    form's device and the demo."""
    bound = settings.TRAINING_STALE_AFTER_SECONDS if stale_after is None else stale_after
    cutoff = timezone.now() - timedelta(seconds=bound)
    live = WorkerHeartbeat.objects.filter(seen_at__gte=cutoff, stopped_at__isnull=True)
    return [w for w in live if queue is None or queue in (w.queues or [])]


def task_queue(task_name: str) -> str:
    """The queue a task is sent to, read from the routes in settings as Celery reads them:
    the first router that answers."""
    for router in prepare(settings.CELERY_TASK_ROUTES):
        route = maybe_evaluate(router)(task_name, (), {}, {})
        if route:
            return route.get("queue") or settings.CELERY_TASK_DEFAULT_QUEUE
    return settings.CELERY_TASK_DEFAULT_QUEUE


GENERATION_TASK = "training.tasks.generation_run"


def generation_route(name: str, args=(), kwargs=None, options=None, task=None, **kw) -> dict | None:
    """Celery router (settings.CELERY_TASK_ROUTES): a generation job goes to the training queue
    while a live worker that takes it has a GPU, so sampling runs batched on that GPU rather
    than on the CPU of a light worker; None lets the next route decide (default)."""
    if name != GENERATION_TASK:
        return None
    training = task_queue("training.tasks.run_train")
    if any(w.devices for w in workers_live(queue=training)):
        return {"queue": training}
    return None


def queue_of(model: type[TrainingRun | GenerationJob]) -> str:
    """The queue of the task that starts a job of this kind (its name from the job registry)."""
    return task_queue(job_kind(model).task)


def queued_without_worker(job: TrainingRun | GenerationJob) -> str:
    """What the page of a queued run or generation job says while no live worker takes its
    queue (nothing would ever start it); "" otherwise."""
    if job.status != job.Status.QUEUED:
        return ""
    queue = queue_of(type(job))
    if workers_live(queue=queue):
        return ""
    return (
        f"Queued, but no live worker takes the '{queue}' queue: start one with "
        "python manage.py worker"
    )


def workers_list(*, stale_after: float) -> list[dict]:
    now = timezone.now()
    live = {w.pk for w in workers_live(stale_after=stale_after)}
    out = []
    for w in WorkerHeartbeat.objects.all():
        age = (now - w.seen_at).total_seconds()
        out.append({"worker": w, "online": w.pk in live, "age_s": age})
    return out


def training_device(*, stale_after: float) -> dict | None:
    """The device a launched run will most likely get: the largest GPU (else the CPU with the
    most memory) of the live workers that consume the training queue, as a device dict for
    `estimate_memory`; None when no such worker is online."""
    devices = []
    for w in workers_live(queue=queue_of(TrainingRun), stale_after=stale_after):
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


def processes_offered(*, stale_after: float | None = None) -> int | None:
    """The most processes one live training worker can run a run with: its GPUs (one process
    each), or its CPU cores (gloo) when it has none. None when no such worker is online."""
    offers = [
        len(w.devices) if w.devices else int((w.cpu or {}).get("cores") or 1)
        for w in workers_live(queue=queue_of(TrainingRun), stale_after=stale_after)
    ]
    return max(offers) if offers else None


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
    """{chart: {metric: [(step, value), ...]}} from the run's metric points: one value per
    metric and step, the latest recorded, in step order (a step trained twice, before and after
    a resume, is drawn once: one series, never a line that jumps back)."""
    latest: dict[str, dict[int, float]] = {}
    for step, values in run.points.order_by("step", "id").values_list("step", "values"):
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                latest.setdefault(key, {})[step] = float(value)
    charts: dict[str, dict[str, list[tuple[int, float]]]] = {c[0]: {} for c in CHARTS}
    for key, by_step in latest.items():
        for chart, _, matches in CHARTS:
            if matches(key):
                charts[chart][key] = sorted(by_step.items())
                break
    return charts
