"""Django groups behind the project roles, so admin pages follow the same roles.

A role is held per project (Membership); the group only opens the admin's model permissions.
Which rows are visible is still decided per project by the admin's scoped querysets.

Each app says which permissions of its own models a role opens (its `ROLE_PERMISSIONS`, given
to `role_permissions_register` in its AppConfig.ready); a role's group carries them all, with
those of the roles below it on the ladder (an engineer curates), and the admin role every
permission of those apps. The roles, their groups and the sync live here, with
Membership; the apps that add models to the admin only contribute their table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ImproperlyConfigured

from annotation.models import Role

# A role's permissions on one app's models: (model, action), e.g. ("snapshot", "add").
RoleTable = Mapping[str, Iterable[tuple[str, str]]]

# app label -> role -> (model, action); filled by the AppConfigs' ready(), read on post_migrate.
_tables: dict[str, dict[str, frozenset[tuple[str, str]]]] = {}

VIEW_ALL = [
    (m, "view")
    for m in (
        "project",
        "membership",
        "guideline",
        "prompt",
        "response",
        "task",
        "assignment",
        "annotation",
        "snapshot",
        "importbatch",
        "importjob",
        "consensus",
        "taskbatch",
        "consensusjob",
    )
]
ROLE_PERMISSIONS: RoleTable = {
    Role.LABELER: [],
    Role.CURATOR: VIEW_ALL
    + [
        ("annotation", "change"),
        ("project", "add"),  # a new project, of which they become the admin (access)
        ("guideline", "add"),
        ("guideline", "change"),
        *[(m, a) for m in ("prompt", "response", "task", "snapshot") for a in ("add", "change")],
    ],
    Role.ENGINEER: VIEW_ALL + [("snapshot", "add"), ("task", "add")],
}


def role_permissions_register(*, app_label: str, table: RoleTable) -> None:
    """Record which permissions of `app_label`'s models each role opens (from AppConfig.ready)."""
    unknown = set(table) - set(Role.values)
    if unknown:
        raise ImproperlyConfigured(f"{app_label}: unknown roles {sorted(unknown)}")
    _tables[app_label] = {role: frozenset(perms) for role, perms in table.items()}


def groups_ensure(**kwargs) -> None:
    """post_migrate: create the role groups and (re)attach their permissions."""
    permissions = list(
        Permission.objects.filter(content_type__app_label__in=list(_tables)).select_related(
            "content_type"
        )
    )
    from annotation.access import LADDER

    for rung, role in enumerate(LADDER):
        group, _ = Group.objects.get_or_create(name=role)
        if role == Role.ADMIN:
            group.permissions.set(permissions)
            continue
        wanted = {
            (app_label, model, action)
            for app_label, table in _tables.items()
            for below in LADDER[: rung + 1]
            for model, action in table.get(below, ())
        }
        group.permissions.set(
            [
                p
                for p in permissions
                if (p.content_type.app_label, p.content_type.model, p.codename.split("_", 1)[0])
                in wanted
            ]
        )


def user_role_sync(user) -> None:
    """Put a user in the groups of the roles they hold in any project, and make them staff
    exactly while they hold a curator, engineer or admin role somewhere (the admin is their
    workplace): a user whose last such role ends, or who is only a labeler, is no longer staff.
    A superuser's staff status is left as it is."""
    roles = set(user.memberships.values_list("role", flat=True))
    user.groups.set(Group.objects.filter(name__in=roles))
    staff = bool(roles - {Role.LABELER})
    if not user.is_superuser and user.is_staff != staff:
        user.is_staff = staff
        user.save(update_fields=["is_staff"])
