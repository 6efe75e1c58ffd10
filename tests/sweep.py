"""What the security sweeps share: every route of the platform, and a world of two projects
whose project B carries a given text in every user-controlled field.

Routes come from the URL resolver and the admin registry, so a new page or endpoint is swept
without anyone listing it; one the sweep cannot fill fails with a message saying what to add.
"""

from __future__ import annotations

import re
from functools import reduce
from operator import or_

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.db.models import Q
from django.test import RequestFactory
from django.urls import get_resolver
from django.urls.resolvers import URLResolver

from annotation import leasing, services
from annotation.models import Consensus, ImportBatch, Project, Role, Snapshot, Source, TaskKind
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


# The staff of project A who visit B's pages: each role's groups and staff status come from
# services.membership_set, as they do for real users.
STAFF_OUTSIDERS = {Role.CURATOR: "curator_a", Role.ENGINEER: "engineer_a", Role.ADMIN: "admin_a"}


def world_build(make_user, text: str = MARKER) -> dict:
    # Only labeler_b logs in with a password (in the browser); hashing one costs about a second
    # on the 2-core machine, so the others are logged in by the test client without one.
    def user(username: str):
        return get_user_model().objects.create_user(username=username)

    member_a, owner_b, labeler_b = user("member_a"), user("owner_b"), make_user("labeler_b")
    staff_a = {role: user(name) for role, name in STAFF_OUTSIDERS.items()}
    project_a = services.project_create(name="Alpha", slug="alpha")
    services.membership_set(project=project_a, user=member_a, role=Role.LABELER)
    for role, staff in staff_a.items():
        services.membership_set(project=project_a, user=staff, role=role)
    project_b = services.project_create(
        name=f"Beta {text}", slug="beta", overlap=2, guidelines=f"Rules {text}"
    )
    services.membership_set(project=project_b, user=owner_b, role=Role.ADMIN)
    services.membership_set(project=project_b, user=labeler_b, role=Role.LABELER)
    (prompt,), _ = services.prompts_create(project=project_b, items=[{"text": f"Prompt {text}"}])
    responses = [
        services.response_create(prompt=prompt, text=f"Answer {i} {text}", origin=Source.SEED)
        for i in range(2)
    ]
    task = services.task_create(
        project=project_b, kind=TaskKind.COMPARE, prompt=prompt, candidates=responses
    )
    lease = leasing.next_task_for(project=project_b, labeler=owner_b)
    annotation, _ = services.annotation_submit(
        task=task,
        labeler=owner_b,
        payload={"winner": responses[0].pk, "strength": 2},
        rationale=f"Because {text}",
    )
    leasing.next_task_for(project=project_b, labeler=labeler_b)
    snapshot = Snapshot.objects.create(
        project=project_b, kind="preference", sha256="b" * 64, path=f"/data/{text}"
    )
    run = TrainingRun.objects.create(project=project_b, stage="sft", name=f"Run {text}")
    MetricPoint.objects.create(run=run, step=1, values={"loss": 1.0})
    artifact = ModelArtifact.objects.create(name=f"Model {text}", stage="sft", path="/m", run=run)
    # Keyed by model name; URL segments map onto these through SEGMENTS.
    generation = GenerationJob.objects.create(project=project_b, artifact=artifact, error=text)
    import_batch = ImportBatch.objects.create(
        project=project_b, file_name=f"file {text}.jsonl", format="trl",
        errors=[{"line": 2, "field": f"field {text}", "message": f"bad {text}"}],
    )  # fmt: skip
    consensus = Consensus.objects.create(
        project=project_b, version=1, method="bradley-terry",
        scores={str(prompt.pk): {str(responses[0].pk): 1.0}}, summary={"note": text},
    )  # fmt: skip
    objects = {
        "importbatch": import_batch,
        "consensus": consensus,
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
        **{STAFF_OUTSIDERS[role]: staff for role, staff in staff_a.items()},
        "project_a": project_a,
        "project_b": project_b,
    }


# URL segment (or parameter name) → model name of the object it addresses.
SEGMENTS = {
    "runs": "trainingrun",
    "run": "trainingrun",
    "artifacts": "modelartifact",
    "artifact": "modelartifact",
    "curate": "project",
    "quality": "project",
    "imports": "importbatch",
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


def posted_ids(objects: dict, project: Project | None = None) -> dict:
    """A body naming B's objects under every field name a form or endpoint may read them from,
    with plausible values for the other fields, so a write that forgets to scope one goes through.
    `project`: the sender's own project in place of B (B's object is then in the URL)."""
    ids = {key: obj.pk for key, obj in objects.items()}
    if project is not None:
        ids["project"] = project.pk
    artifact, response = objects["modelartifact"].pk, objects["response"].pk
    return {
        **ids,
        "parent": artifact, "reward": artifact, "model_artifact": artifact, "candidates": response,
        "run": objects["trainingrun"].pk, "labeler": objects["annotation"].labeler_id,
        "user": objects["annotation"].labeler_id, "supersedes": objects["annotation"].pk,
        # B's own slug: a project created by a POST would make its author the admin of one more
        # project, and the sweep would go on with another role than the one it sweeps.
        "name": "swept", "slug": objects["project"].slug, "text": "swept", "kind": "preference",
        "stage": "sft", "preset": "sft-lora", "role": Role.ADMIN, "origin": Source.SEED,
        "decision": "approved", "review_status": "approved", "k": 2, "limit": 1, "round": 1,
        "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 4, "seed": 0, "version": 9,
        "launch": "1", "ignore_memory": "on", "path": "/swept",
    }  # fmt: skip


def post_bodies(url: str, objects: dict) -> list[dict]:
    """Keyword arguments of client.post: B's ids as JSON for the API (and as a multipart upload,
    the import's format), as a form for pages."""
    ids = posted_ids(objects)
    if not url.startswith("/api/"):
        return [{"data": ids}]
    upload = SimpleUploadedFile("swept.jsonl", b'{"prompt": "swept"}\n')
    return [{"data": ids, "content_type": "application/json"}, {"data": {**ids, "file": upload}}]


def project_paths(model, depth: int = 3) -> list[str]:
    """Every lookup from `model` to a project through at most `depth` foreign keys ("pk" for
    Project itself): the project a row belongs to, and those of the rows it points at."""
    if model is Project:
        return ["pk"]
    if depth == 0:
        return []
    paths = []
    for field in model._meta.concrete_fields:
        if field.is_relation and field.related_model._meta.app_label in ("annotation", "training"):
            paths += [f"{field.name}__{p}" for p in project_paths(field.related_model, depth - 1)]
    return [p.removesuffix("__pk") for p in paths]


class BState:
    """Every row of the platform's apps that belongs to a project or points at one of its rows
    (rows that reach no project: all of them), with the many-to-many links: what a visit of an
    outsider must leave as it was. A row of A that comes to use an object of B counts too.

    The statements are compiled once: a sweep reads them after each of its hundreds of visits.
    """

    def __init__(self, project: Project) -> None:
        self.statements = {}
        for app in ("annotation", "training"):
            for model in apps.get_app_config(app).get_models(include_auto_created=True):
                rows = model._default_manager.all()
                paths = project_paths(model)
                if paths:
                    rows = rows.filter(reduce(or_, (Q(**{p: project.pk}) for p in paths)))
                query = rows.order_by("pk").values_list().query
                self.statements[model._meta.label] = query.sql_with_params()
        self.before = self.read()

    def read(self) -> dict[str, list[tuple]]:
        with connection.cursor() as cursor:
            state = {}
            for label, (statement, params) in self.statements.items():
                cursor.execute(statement, params)
                state[label] = cursor.fetchall()
            return state

    def changes(self) -> list[str]:
        """The models whose rows of the project differ from when the watch began."""
        after = self.read()
        return [label for label in self.before if self.before[label] != after[label]]


def admin_actions(user) -> list[tuple[str, str]]:
    """(changelist URL, action name) of every action the admin offers `user`, on every model."""
    request = RequestFactory().get("/admin/")
    request.user = user
    found = []
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        for name in model_admin.get_actions(request):
            found.append((f"/admin/{opts.app_label}/{opts.model_name}/", name))
    return found
