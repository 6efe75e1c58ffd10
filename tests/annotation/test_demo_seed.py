"""`manage.py seed_demo` (run by every `make run`): the demo accounts and project, idempotent."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotation import services
from annotation.demo import DEMO_USERS, demo_password
from annotation.models import Membership, Project, Prompt, Response, Role, Task

pytestmark = pytest.mark.django_db


def _state() -> dict:
    users = get_user_model().objects.order_by("username")
    return {
        "users": list(users.values_list("pk", "username", "is_staff", "is_superuser")),
        "projects": list(Project.objects.values_list("pk", "slug")),
        "prompts": Prompt.objects.count(),
        "responses": Response.objects.count(),
        "tasks": Task.objects.count(),
        "memberships": sorted(Membership.objects.values_list("user__username", "role")),
    }


def _logs_in(client, username: str, password: str) -> bool:
    response = client.post("/accounts/login/", {"username": username, "password": password})
    client.logout()
    return response.status_code == 302


def test_it_seeds_the_demo_twice_without_duplicates_and_the_passwords_work(client, capsys):
    """Kills mutations: annotation/demo.py demo_seed `if created:` -> `if not created:`;
    `Project.objects.filter(slug="demo").first()` -> `None`."""
    call_command("seed_demo")
    first = _state()
    printed = capsys.readouterr().out
    assert [slug for _, slug in first["projects"]] == ["demo"]
    assert [u[1] for u in first["users"]] == sorted(name for name, *_ in DEMO_USERS)
    assert first["tasks"] > 0 and first["prompts"] > 0
    assert first["memberships"] == sorted((name, role) for name, role, *_ in DEMO_USERS)
    for username, *_ in DEMO_USERS:
        assert f"{username:<10} {demo_password(username)}" in printed
        assert _logs_in(client, username, demo_password(username)), username

    call_command("seed_demo")
    assert _state() == first
    for username, *_ in DEMO_USERS:  # the printed passwords still log in
        assert _logs_in(client, username, demo_password(username)), username


def test_a_second_run_keeps_a_changed_password_and_role(client):
    """`make run` seeds on every start: it must not reset what an admin changed since.

    Kills mutations: annotation/demo.py demo_seed `if created:` -> `if True:` (password reset);
    `if not project.memberships.filter(user=user).exists():` -> `if True:` (role reset)."""
    call_command("seed_demo")
    User = get_user_model()
    labeler1 = User.objects.get(username="labeler1")
    labeler1.set_password("a-new-secret-of-labeler1")
    labeler1.save()
    demo = Project.objects.get(slug="demo")
    services.membership_set(
        project=demo, user=User.objects.get(username="labeler2"), role=Role.CURATOR
    )

    call_command("seed_demo")
    assert _logs_in(client, "labeler1", "a-new-secret-of-labeler1")
    assert not _logs_in(client, "labeler1", demo_password("labeler1"))
    assert demo.memberships.get(user__username="labeler2").role == Role.CURATOR
