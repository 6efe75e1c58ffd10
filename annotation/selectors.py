"""Reads scoped to what a user may see. Every page and API view goes through these."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.functions import TruncDate
from django.http import Http404
from django.utils import timezone

from annotation import quality, sql
from annotation.models import (
    Annotation,
    Assignment,
    Project,
    Role,
    Source,
    Task,
)

# The roles that open the admin (curator and above, see annotation.access's ladder).
STAFF_ROLES = (Role.CURATOR, Role.ENGINEER, Role.ADMIN)


def projects_for(user, *, roles: tuple[str, ...] | None = None) -> QuerySet[Project]:
    """Projects the user belongs to (with one of `roles`, when given). Superusers see all."""
    if not user.is_authenticated:
        return Project.objects.none()
    scope = _scope(user, roles)
    if scope is None:
        return Project.objects.all()
    return Project.objects.filter(pk__in=RawSQL(*scope))


def _scope(user, roles: tuple[str, ...] | None) -> sql.Statement | None:
    """The projects whose rows `user` may read (with one of `roles`); None: all of them."""
    return None if user.is_superuser else sql.member_of(user, roles)


def _visible(model, statement: sql.Statement):
    """The row `statement` reads (one hand-written statement, see `annotation.sql`: these scope
    every lease and submit), or None."""
    rows = sql.fetch(statement)
    return sql.instance(model, rows[0]) if rows else None


def _id_or_404(value) -> int:
    """A primary key from a URL; anything that cannot be one is simply not found."""
    try:
        pk = int(value)
    except (TypeError, ValueError):
        raise Http404("Not found.") from None
    if not 0 < pk < 2**63:
        raise Http404("Not found.")
    return pk


def project_get(user, *, pk=None, slug=None, roles: tuple[str, ...] | None = None) -> Project:
    """The project if the user may see it; 404 otherwise, so existence is not leaked."""
    lookup = {"pk": _id_or_404(pk)} if pk is not None else {"slug": str(slug)}
    project = None
    if user.is_authenticated:
        project = _visible(Project, sql.project_row(**lookup, within=_scope(user, roles)))
    if project is None:
        raise Http404("No such project.")
    return project


def task_get(user, *, pk) -> Task:
    """The task if it lies in one of the user's projects; 404 otherwise."""
    pk = _id_or_404(pk)
    task = None
    if user.is_authenticated:
        task = _visible(Task, sql.task_row(pk=pk, within=_scope(user, None)))
    if task is None:
        raise Http404("No such task.")
    return task


def role_in(user, project: Project) -> str | None:
    if user.is_superuser:
        return Role.ADMIN
    return project.role_of(user)


def tasks_for(user) -> QuerySet[Task]:
    return Task.objects.filter(project__in=projects_for(user))


def annotations_for(user) -> QuerySet[Annotation]:
    """Staff see their projects' annotations; labelers see only their own."""
    if not user.is_authenticated:
        return Annotation.objects.none()
    staff_projects = projects_for(user, roles=STAFF_ROLES)
    return Annotation.objects.filter(
        Q(task__project__in=staff_projects) | Q(labeler=user, task__project__in=projects_for(user))
    )


def assignment_for(user, *, task_pk) -> Assignment:
    assignment = (
        Assignment.objects.filter(
            task_id=task_pk, labeler=user, task__project__in=projects_for(user)
        )
        .select_related("task", "task__project", "task__prompt")
        .first()
    )
    if assignment is None:
        raise Http404("You do not hold this task.")
    return assignment


def project_progress(project: Project, user) -> dict:
    """What the labeler sees on "my projects": done today, done in total, still open to them."""
    since = timezone.now() - timedelta(hours=24)
    mine = Annotation.objects.filter(task__project=project, labeler=user, supersedes__isnull=True)
    open_to_me = (
        Task.objects.filter(project=project, status=Task.Status.OPEN)
        .exclude(assignments__labeler=user)
        .count()
    )
    totals = Task.objects.filter(project=project).aggregate(
        tasks=Count("id"), complete=Count("id", filter=Q(status=Task.Status.COMPLETE))
    )
    return {
        "done_today": mine.filter(created_at__gte=since).count(),
        "done_total": mine.count(),
        "remaining": open_to_me,
        "tasks": totals["tasks"],
        "complete": totals["complete"],
    }


def labeler_stats(user, *, days: int = 14) -> dict:
    """A labeler's own figures: annotations per day, per project, and agreement with consensus
    (the measure of `annotation.quality` that the curate page shows per project, here over all
    the labeler's projects)."""
    own = Annotation.objects.filter(
        labeler=user, source=Source.LABELER, task__project__in=projects_for(user)
    )
    today = timezone.localdate()
    first_day = today - timedelta(days=days - 1)
    counts = {
        row["day"]: row["n"]
        for row in own.filter(created_at__date__gte=first_day)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(n=Count("id"))
    }
    per_day = [
        {
            "day": first_day + timedelta(days=i),
            "count": counts.get(first_day + timedelta(days=i), 0),
        }
        for i in range(days)
    ]
    peak = max((row["count"] for row in per_day), default=0) or 1
    for row in per_day:
        row["percent"] = round(100 * row["count"] / peak)
    per_project = (
        own.values("task__project__name", "task__project__slug")
        .annotate(n=Count("id"))
        .order_by("task__project__name")
    )
    # Every judgment of the tasks the labeler judged: the others' make the consensus.
    judged = Annotation.objects.filter(task__in=own.values("task_id"))
    return {
        "per_day": per_day,
        "total": own.count(),
        "per_project": [
            {"name": r["task__project__name"], "slug": r["task__project__slug"], "count": r["n"]}
            for r in per_project
        ],
        "agreement": quality.consensus_agreement(judged).get(user.pk, quality.Agreement()),
    }


def judgment_counts_by_labeler(project: Project) -> dict[int, dict[str, int]]:
    """labeler id -> {kind ("demonstration", "write prompt"): judgments} of the project's
    judgments written by labelers (imported ones have no labeler), every kind: a demonstration
    counts as much as a ranking."""
    counts: dict[int, dict[str, int]] = {}
    rows = (
        Annotation.objects.filter(task__project=project, labeler__isnull=False)
        .values_list("labeler_id", "kind")
        .annotate(n=Count("id"))
        .order_by("labeler_id", "kind")
    )
    for labeler_id, kind, n in rows:
        counts.setdefault(labeler_id, {})[kind.replace("_", " ")] = n
    return counts
