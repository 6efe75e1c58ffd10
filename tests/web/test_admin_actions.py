"""Admin actions one app contributes to another app's model admin (core/admin_actions.py).

Before, training/admin.py appended its action to whatever snapshot admin was registered when it
was imported: an admin made later, or none yet, went without it."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.test import RequestFactory

from annotation.admin import SnapshotAdmin
from annotation.models import Snapshot
from core import admin_actions
from core.admin_actions import ContributedActionsMixin, admin_action_contribute


def _request(user, path: str = "/admin/"):
    request = RequestFactory().get(path)
    request.user = user
    return request


@pytest.fixture
def no_contributions(monkeypatch):
    monkeypatch.setattr(admin_actions, "_contributed", {})


def test_a_snapshot_admin_made_after_training_loaded_offers_train_on_snapshot(make_user):
    root = make_user("root", is_staff=True, is_superuser=True)
    fresh = SnapshotAdmin(Snapshot, admin.AdminSite(name="fresh"))
    assert {"build_again", "train_on_snapshot"} <= set(fresh.get_actions(_request(root)))


def test_an_action_contributed_after_the_admin_was_made_is_offered(make_user, no_contributions):
    class GroupAdmin(ContributedActionsMixin, admin.ModelAdmin):
        pass

    group_admin = GroupAdmin(Group, admin.AdminSite(name="groups"))

    @admin.action(description="Archive")
    def archive(modeladmin, request, queryset):
        pass

    admin_action_contribute(model=Group, action=archive)
    root = make_user("root", is_staff=True, is_superuser=True)
    assert "archive" in group_admin.get_actions(_request(root))
    assert group_admin.get_actions(_request(root, "/admin/?_popup=1")) == {}


def test_a_contributed_action_keeps_its_permission_check(make_user, no_contributions):
    class GroupAdmin(ContributedActionsMixin, admin.ModelAdmin):
        pass

    @admin.action(description="Purge", permissions=["delete"])
    def purge(modeladmin, request, queryset):
        pass

    admin_action_contribute(model=Group, action=purge)
    group_admin = GroupAdmin(Group, admin.AdminSite(name="groups"))
    staff = make_user("staff", is_staff=True)
    assert "purge" not in group_admin.get_actions(_request(staff))
    root = make_user("root", is_staff=True, is_superuser=True)
    assert "purge" in group_admin.get_actions(_request(root))
