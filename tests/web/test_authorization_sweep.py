"""Authorization sweep generated from the URL resolver and the admin registry.

Every route is visited with the objects of project B by a member of project A, by the curator,
the engineer and the admin of project A (pages, API, every admin page and admin action), by a
labeler of B (who may use the labeling pages and nothing else), and by an anonymous user. A new
route or admin model that the sweep does not know how to fill fails here with a message saying
what to add, so nothing new escapes the sweep.
"""

from __future__ import annotations

import json

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import resolve

from annotation.models import Role
from tests.sweep import (
    DENIED,
    GLOBAL_MODELS,
    MARKER,
    STAFF_OUTSIDERS,
    BState,
    admin_actions,
    concrete_urls,
    fill,
    parametrized,
    post_bodies,
    posted_ids,
    routes,
    world_build,
)

# Visiting these ends the session: the rest of a sweep would run logged out and pass for nothing.
LOGOUT = {"/accounts/logout/", "/admin/logout/"}
# What a labeler does (view names); every other route and method must refuse a labeler, in the
# labeler's own project too. A new labeler page or endpoint is added here on purpose.
LABELER_MAY = {
    "get": {
        "login", "admin:login", "api-root", "schema", "api-docs",
        "annotation:home", "annotation:my_stats", "annotation:task",
        "project-list", "project-detail", "prompt-list", "prompt-detail", "task-list",
        "task-detail", "task-annotations", "annotation-list", "annotation-detail",
    },
    "post": {
        "login", "admin:login",
        "annotation:project_next", "annotation:task_submit", "annotation:task_skip",
        "annotation:task_heartbeat", "project-next-task", "task-annotations", "task-lease",
        "task-skip",
    },
}  # fmt: skip


@pytest.fixture
def world(make_user, settings, tmp_path):
    # A write that the sweep lets through (a snapshot build, a run) lands in the test's folder.
    settings.DATA_DIR = tmp_path / "data"
    settings.VAR_DIR = tmp_path / "var"
    return world_build(make_user)


def _send(client: Client, method: str, url: str, **body):
    """One request; whatever it answers, it must not fail nor show anything of B."""
    response = getattr(client, method)(url, **body)
    said = f"{method.upper()} {url} → {response.status_code}"
    assert response.status_code < 500, said
    assert MARKER.encode() not in response.content, f"{said} leaks project B"
    return response


def _body(method: str, url: str, objects: dict, project=None) -> dict:
    """B's ids in the body of an unsafe request: JSON for the API, a form for pages."""
    if method == "get":
        return {}
    ids = posted_ids(objects, project)
    if url.startswith("/api/"):
        return {"data": json.dumps(ids), "content_type": "application/json"}
    return {"data": ids}


def _addresses_an_object(url: str) -> bool:
    """Whether a concrete URL addresses one of B's objects (its route had parameters)."""
    return bool(resolve(url).kwargs)


def test_a_member_of_another_project_gets_nothing_of_b(world):
    client = Client()
    client.force_login(world["member_a"])
    b = BState(world["project_b"])
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
    assert b.changes() == []


@pytest.mark.parametrize("role", list(STAFF_OUTSIDERS))
def test_staff_of_another_project_get_nothing_of_b(world, role):
    """The curator, engineer and admin of project A (staff, with their role's admin
    permissions) visit every page and endpoint with B's objects (GET, POST, PATCH, DELETE), the
    pages of no object also with B's ids in the query and in the body, every admin page of B's
    objects (GET, POST), and post every admin action offered to them with B's objects selected.
    Nothing of B is shown, every address of a B object refuses them, B's rows stay as they were.

    Kills mutations: training/views.py generate() finds the artifact unscoped (on GET, or on
    POST only), run_action() finds the run unscoped; annotation/admin.py approve/reject act on
    the posted ids rather than on the scoped queryset; the admin's relation fields offer every
    project's rows (ScopedChoicesMixin left out of ProjectScopedAdmin, ResponseInline or
    training's StaffScopedAdmin; a raw id box naming any row).
    """
    user, objects, project = world[STAFF_OUTSIDERS[role]], world["objects"], world["project_b"]
    assert user.is_staff and user.groups.filter(name=role).exists()
    for model in admin.site._registry:
        opts = model._meta
        if opts.app_label in {"annotation", "training"} and opts.label_lower not in GLOBAL_MODELS:
            assert opts.model_name in objects, (
                f"The sweep has no object of B for admin model {opts.label}: add one to the world fixture."
            )
    client = Client()
    client.force_login(user)
    b = BState(project)

    def unchanged(what: str) -> None:
        changed = b.changes()
        assert not changed, f"{what} by the {role} of A changed project B's {', '.join(changed)}"

    counts = {"urls": 0, "requests": 0, "actions": 0}
    for url in concrete_urls(objects):
        if url in LOGOUT:
            continue
        counts["urls"] += 1
        if _addresses_an_object(url):
            methods = (
                ("get", "post") if url.startswith("/admin/") else ("get", "post", "patch", "delete")
            )
            for method in methods:
                # The sender's own project in the body: "do this with B's object, in A".
                body = _body(method, url, objects, world["project_a"])
                response = _send(client, method, url, **body)
                assert response.status_code in DENIED, (
                    f"{method.upper()} {url} → {response.status_code} for the {role} of A"
                )
            counts["requests"] += len(methods)
        else:
            # A page of no object: B's ids in its query and in its body must not reach B.
            response = _send(client, "get", url)
            if url.startswith("/admin/"):
                assert response.status_code in {200, 302, 403}, (
                    f"GET {url} → {response.status_code}"
                )
            _send(client, "get", url, data=posted_ids(objects))
            posts = post_bodies(url, objects)
            for post in posts:
                _send(client, "post", url, **post)
            counts["requests"] += 2 + len(posts)
        unchanged(url)
    for changelist, action in admin_actions(user):
        model_name = changelist.rstrip("/").split("/")[-1]
        if model_name not in objects:
            continue  # not a project's object (users, groups, workers)
        # "post": a deletion is confirmed at once.
        selected = {"action": action, "_selected_action": [objects[model_name].pk], "index": 0,
                    "post": "yes"}  # fmt: skip
        _send(client, "post", changelist, data=selected)
        counts["actions"] += 1
        unchanged(f"the admin action {action!r} on {changelist}")
    assert world["project_b"].name.endswith(MARKER)  # the marker is really there to be leaked
    assert list(user.memberships.values_list("role", flat=True)) == [role]  # swept as that role
    # A curator is offered the curating actions only (approve, reject, mark gold, build again);
    # the engineer and the admin also the training ones.
    assert counts["urls"] >= 140 and counts["actions"] >= (4 if role == Role.CURATOR else 10), (
        counts
    )


def test_a_labeler_can_use_only_the_labeling_pages(world):
    """A labeler of B, in B: every route and method but the labeling ones (LABELER_MAY) refuses
    them: the admin, the curation and training pages, and the curator API (quality, imports,
    snapshots: refused, or an empty list); and B's rows stay as they were.

    Kills mutations: annotation/api_data.py QualityViewSet lets a labeler read
    /api/v1/quality/<project>/; the snapshot or import lists take every role; an import
    accepts a labeler's file.
    """
    client = Client()
    client.force_login(world["labeler_b"])
    objects = world["objects"]
    b = BState(world["project_b"])
    refused = 0
    for url in concrete_urls(objects):
        if url in LOGOUT:
            continue
        view = resolve(url).view_name
        methods = ("get", "post", "patch", "delete") if url.startswith("/api/") else ("get", "post")
        for method in methods:
            if view in LABELER_MAY.get(method, ()):
                continue
            if method == "post" and not _addresses_an_object(url):
                answers = [_send(client, "post", url, **body) for body in post_bodies(url, objects)]
            else:
                answers = [_send(client, method, url, **_body(method, url, objects))]
            codes = [a.status_code for a in answers]
            said = f"{method.upper()} {url} ({view}) → {codes} for a labeler"
            refused += 1
            if method == "get" and _empty_list(answers[0]):
                continue  # a list of what the labeler may see of this kind: nothing
            # A body this endpoint cannot take (400) is refused too: the POSTs send B's ids in
            # every shape (B's slug for a new project), so one of them would pass if it could.
            assert all(code in DENIED or code == 400 for code in codes), said
            assert any(code in DENIED for code in codes) or method == "post", said
        assert b.changes() == [], f"{url} by a labeler of B changed B"
    assert refused >= 250, refused


def _empty_list(response) -> bool:
    return (
        response.status_code == 200
        and response["Content-Type"].startswith("application/json")
        and response.json().get("count") == 0
    )


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
