"""Reads scoped to what a user may see. Every page and API view goes through these."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from annotation.models import Annotation, Assignment, Membership, Project, Role, Task

STAFF_ROLES = (Role.CURATOR, Role.ENGINEER, Role.ADMIN)


def projects_for(user, *, roles: tuple[str, ...] | None = None) -> QuerySet[Project]:
    """Projects the user belongs to (with one of `roles`, when given). Superusers see all."""
    if not user.is_authenticated:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    memberships = Membership.objects.filter(user=user)
    if roles:
        memberships = memberships.filter(role__in=roles)
    return Project.objects.filter(pk__in=memberships.values("project_id"))


def project_get(user, *, pk=None, slug=None, roles: tuple[str, ...] | None = None) -> Project:
    """The project if the user may see it; 404 otherwise, so existence is not leaked."""
    lookup = {"pk": pk} if pk is not None else {"slug": slug}
    project = projects_for(user, roles=roles).filter(**lookup).first()
    if project is None:
        raise Http404("No such project.")
    return project


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
