"""Authorization sweep generated from the URL resolver and the admin registry.

Every route is visited with the objects of project B by a member of project A, by a labeler of
B, and by an anonymous user. A new route or admin model that the sweep does not know how to fill
fails here with a message saying what to add, so nothing new escapes the sweep.
"""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client

from tests.sweep import (
    DENIED,
    GLOBAL_MODELS,
    MARKER,
    concrete_urls,
    fill,
    parametrized,
    routes,
    world_build,
)


@pytest.fixture
def world(make_user):
    return world_build(make_user)


def test_a_member_of_another_project_gets_nothing_of_b(world):
    client = Client()
    client.force_login(world["member_a"])
    checked = 0
    for route in routes():
        if route.startswith("admin/"):
            continue
        if not parametrized(route):
            response = client.get("/" + route)
            assert response.status_code < 500, route
            assert MARKER.encode() not in response.content, f"{route} leaks project B"
            continue
        url = fill(route, world["objects"])
        for method in ("get", "post", "patch", "delete"):
            response = getattr(client, method)(url, {}, content_type="application/json")
            assert response.status_code in DENIED, (
                f"{method.upper()} {url} → {response.status_code}"
            )
            assert MARKER.encode() not in response.content, (
                f"{method.upper()} {url} leaks project B"
            )
            checked += 1
    assert checked >= 20


def test_staff_of_another_project_get_nothing_of_b_in_the_admin(world):
    client = Client()
    client.force_login(world["curator_a"])
    for model in admin.site._registry:
        opts = model._meta
        base = f"/admin/{opts.app_label}/{opts.model_name}/"
        listing = client.get(base)
        assert listing.status_code in {200, 302, 403}, base
        assert MARKER.encode() not in listing.content, f"{base} leaks project B"
        if opts.app_label not in {"annotation", "training"} or opts.label_lower in GLOBAL_MODELS:
            continue
        if opts.model_name not in world["objects"]:
            pytest.fail(
                f"The sweep has no object of B for admin model {opts.label}: add one to the world fixture."
            )
        obj = world["objects"][opts.model_name]
        for suffix in ("change/", "delete/", "history/"):
            url = f"{base}{obj.pk}/{suffix}"
            response = client.get(url)
            assert response.status_code in DENIED, f"GET {url} → {response.status_code}"
            assert MARKER.encode() not in response.content, f"GET {url} leaks project B"
            response = client.post(url, {"post": "yes"})
            assert response.status_code in DENIED, f"POST {url} → {response.status_code}"
    assert world["project_b"].name.endswith(MARKER)  # the marker is really there to be leaked


def test_a_labeler_cannot_reach_curator_or_engineer_pages(world):
    client = Client()
    client.force_login(world["labeler_b"])
    staff_prefixes = ("/admin/", "/curate/", "/training/")
    for url in concrete_urls(world["objects"]):
        if not url.startswith(staff_prefixes) or url.startswith(("/admin/login", "/admin/logout")):
            continue
        response = client.get(url)
        assert response.status_code in DENIED, f"GET {url} → {response.status_code} for a labeler"


def test_anonymous_users_get_nothing_but_the_login_page(world):
    client = Client()
    public = {"/accounts/login/", "/accounts/logout/", "/admin/login/", "/admin/logout/"}
    for url in concrete_urls(world["objects"]):
        if url in public:
            continue
        response = client.get(url)
        assert response.status_code in {302, 401, 403, 404}, f"GET {url} → {response.status_code}"
        if response.status_code == 302:
            assert "login" in response["Location"], f"GET {url} redirects to {response['Location']}"
        assert MARKER.encode() not in response.content


def test_every_unsafe_page_request_needs_a_csrf_token(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world["owner_b"])
    for url in concrete_urls(world["objects"]):
        if url.startswith("/api/"):
            continue  # token-authenticated API; session-authenticated API calls are checked below
        response = client.post(url, {})
        assert response.status_code == 403, (
            f"POST {url} without a CSRF token → {response.status_code}"
        )
    api = client.post(f"/api/v1/projects/{world['project_b'].pk}/tasks/next/")
    assert api.status_code == 403 and b"CSRF" in api.content
