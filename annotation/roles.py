"""Django groups behind the project roles, so admin pages follow the same roles.

A role is held per project (Membership); the group only opens the admin's model permissions.
Which rows are visible is still decided per project by the admin's scoped querysets.
"""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission

from annotation.models import Role

VIEW_ALL = [
    ("annotation", m, "view")
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
        "consensus",
    )
]
GROUP_PERMISSIONS: dict[str, list[tuple[str, str, str]]] = {
    Role.LABELER: [],
    Role.CURATOR: VIEW_ALL
    + [
        ("annotation", "annotation", "change"),
        ("annotation", "guideline", "add"),
        ("annotation", "guideline", "change"),
        *[
            ("annotation", m, a)
            for m in ("prompt", "response", "task", "snapshot")
            for a in ("add", "change")
        ],
        ("training", "modelartifact", "view"),
        ("training", "trainingrun", "view"),
    ],
    Role.ENGINEER: VIEW_ALL
    + [
        ("annotation", "snapshot", "add"),
        ("annotation", "task", "add"),
        *[
            ("training", m, a)
            for m in ("trainingrun", "modelartifact", "metricpoint", "generationjob")
            for a in ("add", "change", "view")
        ],
    ],
}


def groups_ensure(**kwargs) -> None:
    """post_migrate: create the role groups and (re)attach their permissions."""
    for role in Role.values:
        group, _ = Group.objects.get_or_create(name=role)
        if role == Role.ADMIN:
            perms = Permission.objects.filter(
                content_type__app_label__in=["annotation", "training"]
            )
        else:
            wanted = GROUP_PERMISSIONS.get(role, [])
            perms = [
                p
                for p in Permission.objects.filter(
                    content_type__app_label__in=["annotation", "training"]
                ).select_related("content_type")
                if (p.content_type.app_label, p.content_type.model, p.codename.split("_", 1)[0])
                in wanted
            ]
        group.permissions.set(perms)


def user_role_sync(user) -> None:
    """Put a user in the groups of the roles they hold in any project.

    A curator, engineer or admin role makes the user staff (the admin is their workplace); staff
    status is only granted here, never taken away.
    """
    roles = set(user.memberships.values_list("role", flat=True))
    user.groups.set(Group.objects.filter(name__in=roles))
    if roles - {Role.LABELER} and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
