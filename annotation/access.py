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
# What each rung adds to the one below it, as the home page says it.
ROLE_ADDS: dict[str, str] = {
    Role.LABELER: "label the tasks given to you",
    Role.CURATOR: "review judgments, import files, create tasks, build and download snapshots",
    Role.ENGINEER: "launch training, follow runs and workers, generate candidates",
    Role.ADMIN: "add members and grant roles",
}


def role_can(role: str | None) -> list[str]:
    """What a role can do in its project: its own rung and every rung below it."""
    if role not in LADDER:
        return []
    return [ROLE_ADDS[r] for r in LADDER[: LADDER.index(role) + 1]]


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
        raise PermissionDenied(role_needed_message(project, minimum, role))
    return role


def role_needed_message(project: Project, minimum: str, role: str | None) -> str:
    """What a refused page says: the role it needs, the user's own, and who can grant it (the
    project's admins, named only to its members)."""
    needed = " or ".join(roles_at_least(minimum))
    # The project's name stays out: the sweeps hold any text of a project out of answers.
    message = f"Only a {needed} of this project can do this."
    if role is None:
        return message
    admins = sorted(
        project.memberships.filter(role=Role.ADMIN).values_list("user__username", flat=True)
    )
    granters = (
        f"its admins can grant it: {', '.join(admins)}" if admins
        else "it has no admin yet: a site administrator can grant it"
    )  # fmt: skip
    return f"{message} Your role in it is {role}; {granters}."


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
