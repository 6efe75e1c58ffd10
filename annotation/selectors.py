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
    Membership,
    Project,
    Role,
    Source,
    Task,
)

STAFF_ROLES = (Role.CURATOR, Role.ENGINEER, Role.ADMIN)


def _member_of(user, roles: tuple[str, ...] | None = None) -> tuple[str, list]:
    """SQL: ids of the projects `user` belongs to (with one of `roles`, when given).

    The one definition of membership: `projects_for` filters with it through the ORM, and the
    hand-written statements of the labeling hot paths (`project_get`, `task_get`) embed it.
    """
    statement = f"SELECT m.project_id FROM {sql.table(Membership)} m WHERE m.user_id = %s"
    params = [user.pk]
    if roles:
        statement += f" AND m.role IN {sql.in_list(roles)}"
        params += list(roles)
    return statement, params


def projects_for(user, *, roles: tuple[str, ...] | None = None) -> QuerySet[Project]:
    """Projects the user belongs to (with one of `roles`, when given). Superusers see all."""
    if not user.is_authenticated:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(pk__in=RawSQL(*_member_of(user, roles)))


def _visible(model, alias: str, project_column: str, user, roles, where: str, key):
    """The row of `model` matching `where` if it lies in one of the user's projects, else None.
    One hand-written statement (see `annotation.sql`): these scope every lease and submit."""
    if not user.is_authenticated:
        return None
    statement = f"SELECT {sql.columns(model, alias)} FROM {sql.table(model)} {alias} WHERE {where}"
    params = [key]
    if not user.is_superuser:
        member, member_params = _member_of(user, roles)
        statement += f" AND {alias}.{project_column} IN ({member})"
        params += member_params
    rows = sql.fetch(statement, params)
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
    if pk is not None:
        where, key = "p.id = %s", _id_or_404(pk)
    else:
        where, key = "p.slug = %s", str(slug)
    project = _visible(Project, "p", "id", user, roles, where, key)
    if project is None:
        raise Http404("No such project.")
    return project


def task_get(user, *, pk) -> Task:
    """The task if it lies in one of the user's projects; 404 otherwise."""
    task = _visible(Task, "t", "project_id", user, None, "t.id = %s", _id_or_404(pk))
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
