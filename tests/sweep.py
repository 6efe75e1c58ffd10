"""What the security sweeps share: every route of the platform, and a world of two projects
whose project B carries a given text in every user-controlled field.

Routes come from the URL resolver and the admin registry, so a new page or endpoint is swept
without anyone listing it; one the sweep cannot fill fails with a message saying what to add.
"""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.urls import get_resolver
from django.urls.resolvers import URLResolver

from annotation import services
from annotation.models import Consensus, ImportBatch, Role, Snapshot, Source, TaskKind
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


def world_build(make_user, text: str = MARKER) -> dict:
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
    lease = services.next_task_for(project=project_b, labeler=owner_b)
    annotation, _ = services.annotation_submit(
        task=task,
        labeler=owner_b,
        payload={"winner": responses[0].pk, "strength": 2},
        rationale=f"Because {text}",
    )
    services.next_task_for(project=project_b, labeler=labeler_b)
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
        "curator_a": curator_a,
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
