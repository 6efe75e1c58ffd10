"""Authorization sweep generated from the URL resolver and the admin registry.

Every route is visited with the objects of project B by a member of project A, by a labeler of
B, and by an anonymous user. A new route or admin model that the sweep does not know how to fill
fails here with a message saying what to add, so nothing new escapes the sweep.
"""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import get_resolver
from django.urls.resolvers import URLResolver

from annotation import services
from annotation.models import Role, Snapshot, Source, TaskKind
from training.models import GenerationJob, MetricPoint, ModelArtifact, TrainingRun

MARKER = "zzB-private-9f3c"  # in every text of project B; must never appear for outsiders
DENIED = {302, 401, 403, 404, 405}
PARAM = re.compile(r"<(?:(?P<conv>\w+):)?(?P<name>\w+)>|\(\?P<(?P<rname>\w+)>[^)]*\)")
SKIP_PREFIXES = ("static/", "media/")
# Models that belong to no project (the machines themselves): listed, never per-project objects.
GLOBAL_MODELS = {"training.workerheartbeat"}


def routes():
    def walk(patterns, prefix=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            else:
                route = prefix + str(pattern.pattern)
                if "format" in route:  # DRF's .json suffix twins of the same views
                    continue
                yield route.replace("^", "").replace("$", "")

    return [r for r in walk(get_resolver().url_patterns) if not r.startswith(SKIP_PREFIXES)]


@pytest.fixture
def world(make_user):
    member_a, owner_b, labeler_b, curator_a = (
        make_user("member_a"),
        make_user("owner_b"),
        make_user("labeler_b"),
        make_user("curator_a"),
    )
    project_a = services.project_create(name="Alpha", slug="alpha")
    services.membership_set(project=project_a, user=member_a, role=Role.LABELER)
    services.membership_set(project=project_a, user=curator_a, role=Role.CURATOR)
    project_b = services.project_create(
        name=f"Beta {MARKER}", slug="beta", overlap=2, guidelines=f"Rules {MARKER}"
    )
    services.membership_set(project=project_b, user=owner_b, role=Role.ADMIN)
    services.membership_set(project=project_b, user=labeler_b, role=Role.LABELER)
    (prompt,), _ = services.prompts_create(project=project_b, items=[{"text": f"Prompt {MARKER}"}])
    responses = [
        services.response_create(prompt=prompt, text=f"Answer {i} {MARKER}", origin=Source.SEED)
        for i in range(2)
    ]
    task = services.task_create(
        project=project_b, kind=TaskKind.COMPARE, prompt=prompt, candidates=responses
    )
    lease = services.next_task_for(project=project_b, labeler=owner_b)
    annotation, _ = services.annotation_submit(
        task=task,
        labeler=owner_b,
        payload={"winner": responses[0].pk, "strength": 2},
        rationale=f"Because {MARKER}",
    )
    services.next_task_for(project=project_b, labeler=labeler_b)
    snapshot = Snapshot.objects.create(
        project=project_b, kind="preference", sha256="b" * 64, path=f"/data/{MARKER}"
    )
    run = TrainingRun.objects.create(project=project_b, stage="sft", name=f"Run {MARKER}")
    MetricPoint.objects.create(run=run, step=1, values={"loss": 1.0})
    artifact = ModelArtifact.objects.create(name=f"Model {MARKER}", stage="sft", path="/m", run=run)
    # Keyed by model name; URL segments map onto these through SEGMENTS.
    generation = GenerationJob.objects.create(project=project_b, artifact=artifact, error=MARKER)
    objects = {
        "generationjob": generation,
        "project": project_b,
        "prompt": prompt,
        "response": responses[0],
        "task": task,
        "annotation": annotation,
        "assignment": lease,
        "snapshot": snapshot,
        "trainingrun": run,
        "modelartifact": artifact,
        "guideline": project_b.guidelines.get(),
        "membership": project_b.memberships.first(),
        "metricpoint": run.points.get(),
    }
    return {
        "objects": objects,
        "member_a": member_a,
        "owner_b": owner_b,
        "labeler_b": labeler_b,
        "curator_a": curator_a,
        "project_b": project_b,
    }


# URL segment (or parameter name) → model name of the object it addresses.
SEGMENTS = {
    "runs": "trainingrun",
    "run": "trainingrun",
    "artifacts": "modelartifact",
    "artifact": "modelartifact",
}


def object_key(segment: str) -> str:
    return SEGMENTS.get(segment, segment.removesuffix("s"))


def fill(route: str, objects: dict) -> str:
    """Put B's object ids into a route; the segment before a parameter names the object."""

    def value(match: re.Match) -> str:
        name = match.group("name") or match.group("rname")
        before = route[: match.start()].rstrip("/").split("/")[-1]
        key = object_key(before)
        if key not in objects:
            key = object_key(name.removesuffix("_pk").removesuffix("_id").removesuffix("_slug"))
        if key not in objects:
            pytest.fail(
                f"The authorization sweep does not know which object {name!r} in {route!r} is: "
                "add it to the `objects` of the world fixture in tests/web/test_authorization_sweep.py."
            )
        obj = objects[key]
        return obj.slug if name == "slug" else str(obj.pk)

    return "/" + PARAM.sub(value, route)


def parametrized(route: str) -> bool:
    return bool(PARAM.search(route))


def concrete_urls(objects: dict) -> list[str]:
    """Every route filled with B's objects; admin routes come from the admin registry instead
    (their parameters are generic: app label, model name, object id)."""
    urls = []
    for route in routes():
        if route.startswith("admin/"):
            if not parametrized(route):
                urls.append("/" + route)
            continue
        urls.append(fill(route, objects) if parametrized(route) else "/" + route)
    for model in admin.site._registry:
        opts = model._meta
        base = f"/admin/{opts.app_label}/{opts.model_name}/"
        urls.append(base)
        if opts.model_name in objects:
            pk = objects[opts.model_name].pk
            urls += [f"{base}{pk}/change/", f"{base}{pk}/delete/", f"{base}{pk}/history/"]
    return urls


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
