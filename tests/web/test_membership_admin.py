"""Memberships saved in the admin go through the membership service, so the user gets (and
loses) the groups and staff status of their roles exactly as `membership_set` gives them.
Before, the admin saved the row directly: a curator added there could not open the admin."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from annotation.models import Membership, Role
from annotation.roles import role_permissions_register


@pytest.fixture
def admin_client(make_user):
    client = Client()
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    return client


def groups_of(user) -> set[str]:
    return set(user.groups.values_list("name", flat=True))


def test_a_membership_added_in_the_admin_gives_the_roles_groups_and_staff(
    admin_client, make_user, project_factory
):
    project = project_factory("alpha", prompts=0)
    carol = make_user("carol")
    response = admin_client.post(
        "/admin/annotation/membership/add/",
        {"project": project.pk, "user": carol.pk, "role": Role.CURATOR},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    carol.refresh_from_db()
    assert Membership.objects.get(user=carol).role == Role.CURATOR
    assert groups_of(carol) == {Role.CURATOR} and carol.is_staff
    assert Group.objects.get(name=Role.CURATOR).permissions.exists()


def test_a_role_changed_or_removed_in_the_admin_changes_the_groups(
    admin_client, make_user, project_factory
):
    dan = make_user("dan")
    project = project_factory("alpha", prompts=0, members=[(dan, Role.LABELER)])
    other = project_factory("beta", prompts=0, members=[(dan, Role.LABELER)])
    membership = Membership.objects.get(user=dan, project=project)
    response = admin_client.post(
        f"/admin/annotation/membership/{membership.pk}/change/",
        {"project": project.pk, "user": dan.pk, "role": Role.ENGINEER},
    )
    assert response.status_code == 302
    dan.refresh_from_db()
    assert groups_of(dan) == {Role.ENGINEER, Role.LABELER} and dan.is_staff

    response = admin_client.post(
        f"/admin/annotation/membership/{membership.pk}/delete/", {"post": "yes"}
    )
    assert response.status_code == 302
    assert groups_of(dan) == {Role.LABELER}
    assert list(dan.memberships.values_list("project", flat=True)) == [other.pk]

    response = admin_client.post(
        "/admin/annotation/membership/",
        {
            "action": "delete_selected",
            "_selected_action": [dan.memberships.get().pk],
            "post": "yes",
        },
    )
    assert response.status_code == 302
    assert groups_of(dan) == set() and not dan.memberships.exists()


def test_a_membership_added_on_the_project_page_gives_the_roles_groups(
    admin_client, make_user, project_factory
):
    """The project's change page edits memberships inline; those saves go through the service
    too."""
    erin = make_user("erin")
    project = project_factory("alpha", prompts=0)
    page = admin_client.get(f"/admin/annotation/project/{project.pk}/change/")
    form = page.context["adminform"].form
    data = {
        name: value
        for name, value in form.initial.items()
        if value is not None and not isinstance(value, (list, dict))
    }
    data.update(
        {
            "task_kinds": project.task_kinds,
            "memberships-TOTAL_FORMS": 1,
            "memberships-INITIAL_FORMS": 0,
            "memberships-0-user": erin.pk,
            "memberships-0-role": Role.ENGINEER,
            "memberships-0-project": project.pk,
            "guidelines-TOTAL_FORMS": 0,
            "guidelines-INITIAL_FORMS": project.guidelines.count(),
        }
    )
    for i, guideline in enumerate(project.guidelines.all()):
        data.update(
            {
                f"guidelines-{i}-id": guideline.pk,
                f"guidelines-{i}-project": project.pk,
                f"guidelines-{i}-version": guideline.version,
                f"guidelines-{i}-body": guideline.body,
            }
        )
    data["guidelines-TOTAL_FORMS"] = project.guidelines.count()
    response = admin_client.post(f"/admin/annotation/project/{project.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:3000]
    erin.refresh_from_db()
    assert groups_of(erin) == {Role.ENGINEER} and erin.is_staff


def _permissions(group: Group) -> set[str]:
    return {
        f"{p.content_type.app_label}.{p.codename}"
        for p in group.permissions.select_related("content_type")
    }


@pytest.mark.django_db
def test_each_role_group_opens_the_permissions_every_app_gives_the_role():
    """annotation/roles.py and training/roles.py each give the roles their own models'
    permissions; the groups carry both (with those of the roles below), and the admin role every
    permission of both apps."""
    groups = {group.name: _permissions(group) for group in Group.objects.all()}
    assert {"annotation.add_snapshot", "training.add_trainingrun",
            "training.change_generationjob"} <= groups[Role.ENGINEER]  # fmt: skip
    # The ladder: an engineer curates, so their group holds the curator's permissions too.
    assert groups[Role.CURATOR] <= groups[Role.ENGINEER]
    assert {"annotation.change_annotation", "training.view_trainingrun"} <= groups[Role.CURATOR]
    assert "training.add_trainingrun" not in groups[Role.CURATOR]
    assert groups[Role.LABELER] == set()
    both = Permission.objects.filter(content_type__app_label__in=["annotation", "training"])
    assert groups[Role.ADMIN] == {f"{p.content_type.app_label}.{p.codename}" for p in both}


def test_an_app_cannot_give_permissions_to_a_role_that_does_not_exist():
    with pytest.raises(ImproperlyConfigured, match="janitor"):
        role_permissions_register(app_label="training", table={"janitor": [("trainingrun", "add")]})
