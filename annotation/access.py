"""Who may do what in a project: the one place roles are checked.

Roles form a ladder, held per project: labeler < curator < engineer < admin. A role can do
everything the roles below it can (an engineer curates, an admin trains); superusers act as
admin of every project. Pages, API actions, admin forms and the launch form ask here, never
compare role names themselves.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet

from annotation import selectors
from annotation.models import Project, Role

LADDER: tuple[str, ...] = (Role.LABELER, Role.CURATOR, Role.ENGINEER, Role.ADMIN)


def roles_at_least(minimum: str) -> tuple[str, ...]:
    """The roles that can do what `minimum` can: `minimum` and every role above it."""
    return LADDER[LADDER.index(minimum) :]


def role_at_least(role: str | None, minimum: str) -> bool:
    return role is not None and role in roles_at_least(minimum)


def has_role(user, project: Project, minimum: str) -> bool:
    """Whether `user` holds `minimum` or a higher role in `project`."""
    if not user.is_authenticated:
        return False
    return role_at_least(selectors.role_in(user, project), minimum)


def role_require(user, project: Project, minimum: str) -> str:
    """The user's role in `project` when it is `minimum` or higher; PermissionDenied, naming the
    role needed, otherwise. (Callers resolve the project first, so a project the user cannot
    see at all is a 404, not this.)"""
    role = selectors.role_in(user, project) if user.is_authenticated else None
    if not role_at_least(role, minimum):
        needed = " or ".join(roles_at_least(minimum))
        # The project's name stays out: the sweeps hold any text of a project out of answers.
        raise PermissionDenied(f"Only a {needed} of this project can do this.")
    return role


def projects_at_least(user, minimum: str) -> QuerySet[Project]:
    """The projects where `user` holds `minimum` or a higher role (every project: superuser)."""
    return selectors.projects_for(user, roles=roles_at_least(minimum))


def may_create_project(user) -> bool:
    """Curators and above of any project (and superusers) may start a new project: they become
    its admin, and that is all they gain (their roles elsewhere stay as they are)."""
    return user.is_authenticated and (
        user.is_superuser or projects_at_least(user, Role.CURATOR).exists()
    )


def may_use_playground(user, project: Project) -> bool:
    """Engineers and admins of the project chat with its models in the playground; its
    labelers and curators too where the project grants it (`Project.playground_labelers`)."""
    if has_role(user, project, Role.ENGINEER):
        return True
    return project.playground_labelers and has_role(user, project, Role.LABELER)
