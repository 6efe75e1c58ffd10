"""What the security sweeps share: every route of the platform, and a world of two projects
whose project B carries a given text in every user-controlled field.

Routes come from the URL resolver and the admin registry, so a new page or endpoint is swept
without anyone listing it; one the sweep cannot fill fails with a message saying what to add.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import reduce
from operator import or_

import pytest
from django import forms
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.db.models import Q
from django.test import Client, RequestFactory
from django.urls import get_resolver
from django.urls.resolvers import URLResolver

from annotation import leasing, services
from annotation.models import (
    Assignment,
    Consensus,
    ConsensusJob,
    ImportBatch,
    ImportJob,
    Project,
    Response,
    Role,
    Snapshot,
    Source,
    TaskBatch,
    TaskKind,
)
from training.models import (
    ArenaBattleSet,
    BaseModelFetch,
    GenerationJob,
    MetricPoint,
    ModelArtifact,
    PlaygroundSession,
    Round,
    TrainingRun,
)

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
    objects = project_objects_build(project_b, text=text, author=owner_b, labeler=labeler_b)
    return {
        "objects": objects,
        "member_a": member_a,
        "owner_b": owner_b,
        "labeler_b": labeler_b,
        **{STAFF_OUTSIDERS[role]: staff for role, staff in staff_a.items()},
        "project_a": project_a,
        "project_b": project_b,
    }


def project_objects_build(project: Project, *, text: str, author, labeler) -> dict:
    """One object of every kind in `project`, each of its texts carrying `text`, keyed by model
    name (URL segments map onto these through SEGMENTS). `author` (an admin of the project)
    judges its one task; `labeler` holds a lease on it."""
    (prompt,), _ = services.prompts_create(project=project, items=[{"text": f"Prompt {text}"}])
    responses = [
        services.response_create(prompt=prompt, text=f"Answer {i} {text}", origin=Source.SEED)
        for i in range(2)
    ]
    task = services.task_create(
        project=project, kind=TaskKind.COMPARE, prompt=prompt, candidates=responses
    )
    lease = leasing.next_task_for(project=project, labeler=author)
    annotation, _ = services.annotation_submit(
        task=task,
        labeler=author,
        payload={"winner": responses[0].pk, "strength": 2},
        rationale=f"Because {text}",
    )
    leasing.next_task_for(project=project, labeler=labeler)
    if not project.guidelines.exists():
        services.guideline_publish(project=project, body=f"Rules {text}", author=author)
    # Ready: the launch form offers only ready snapshots, so a sweep can try to train on it.
    snapshot = Snapshot.objects.create(
        project=project, kind="preference", sha256="b" * 64, path=f"/data/{text}",
        status=Snapshot.Status.READY,
        # What the snapshot page lays out; its split is not on disk (the page says so).
        manifest={"kind": "preference", "splits": {"train": {"path": "train.jsonl", "rows": 1,
                  "sha256": "c" * 64}}, "filters": {"tags": [text]}, "note": text,
                  "diversity": {"prompts": 1, "tags": {text: 1}, "languages": {text: 1},
                                "warnings": [text]}},
    )  # fmt: skip
    run = TrainingRun.objects.create(project=project, stage="sft", name=f"Run {text}")
    MetricPoint.objects.create(run=run, step=1, values={"loss": 1.0})
    artifact = ModelArtifact.objects.create(
        project=project, name=f"Model {text}", stage="sft", path="/m", run=run
    )
    generation = GenerationJob.objects.create(project=project, artifact=artifact, error=text)
    generation.prompts.add(prompt)
    # An arena battle between two of B's models, judged: its leaderboard names both.
    rival = ModelArtifact.objects.create(
        project=project, name=f"Rival {text}", stage="sft", path="/r"
    )
    arena_round = Round.objects.create(
        project=project, number=2, policy=rival, kind=Round.Kind.ARENA, budget=1, seed=1,
        status=Round.Status.DONE, selection={"criterion": f"chosen {text}"},
    )  # fmt: skip
    battle_set = ArenaBattleSet.objects.create(project=project, name=f"Battles {text}",
                                               error=f"failed {text}", round=arena_round)  # fmt: skip
    battle_set.artifacts.set([artifact, rival])
    battle_set.prompts.add(prompt)
    # The pair of the compare task, as the two models' answers (the admin sweeps' forms pick
    # every response of a project for a task's two candidates).
    answers = responses
    for response, model in zip(answers, (artifact, rival), strict=True):
        Response.objects.filter(pk=response.pk).update(model_artifact=model)
    arena_task = services.task_create(
        project=project, kind=TaskKind.ARENA, prompt=prompt, candidates=answers, required=1,
        round=2,
    )  # fmt: skip
    Assignment.objects.create(
        task=arena_task, labeler=author, expires_at=lease.expires_at,
        shown_order=arena_task.candidate_ids(),
    )  # fmt: skip
    services.annotation_submit(task=arena_task, labeler=author, payload={"winner": answers[1].pk})
    round_ = Round.objects.create(
        project=project, number=7, policy=artifact, budget=1, seed=1, status=Round.Status.FAILED,
        source={"tags": [text]}, error=f"failed {text}",
    )  # fmt: skip
    round_.generation_jobs.add(generation)
    import_batch = ImportBatch.objects.create(
        project=project, file_name=f"file {text}.jsonl", format="trl",
        errors=[{"line": 2, "field": f"field {text}", "message": f"bad {text}"}],
    )  # fmt: skip
    consensus = Consensus.objects.create(
        project=project, version=1, method="bradley-terry",
        scores={str(prompt.pk): {str(responses[0].pk): 1.0}}, summary={"note": text},
    )  # fmt: skip
    # Jobs of B, with B's text in their error (as a failed one carries it).
    task_batch = TaskBatch.objects.create(
        project=project, kind=TaskKind.DEMONSTRATION, selection={"tags": [text]}, required=1,
        status=TaskBatch.Status.FAILED, error=f"failed {text}",
    )  # fmt: skip
    consensus_job = ConsensusJob.objects.create(
        project=project, status=ConsensusJob.Status.FAILED, error=f"failed {text}"
    )
    import_job = _import_job(project, text, import_batch)
    # A conversation of the project's admin in the playground, the model's reply carrying text.
    playground_session = PlaygroundSession.objects.create(
        project=project, artifact=artifact, user=author,
        messages=[{"role": "user", "content": f"Hello {text}"},
                  {"role": "assistant", "content": f"Reply {text}"}],
    )  # fmt: skip
    # A base model fetch of the project that failed, naming its text.
    fetch = BaseModelFetch.objects.create(
        project=project, hub_name="org/swept-base", name=f"Base {text}",
        status=BaseModelFetch.Status.FAILED, error=f"failed {text}",
    )  # fmt: skip
    objects = {
        "basemodelfetch": fetch,
        "playgroundsession": playground_session,
        "taskbatch": task_batch,
        "consensusjob": consensus_job,
        "importjob": import_job,
        "labeler": annotation.labeler,  # a member of B, as the pages of a labeler name them
        "importbatch": import_batch,
        "consensus": consensus,
        "generationjob": generation,
        "arenabattleset": battle_set,
        "round": round_,
        "project": project,
        "prompt": prompt,
        "response": responses[0],
        "task": task,
        "annotation": annotation,
        "assignment": lease,
        "snapshot": snapshot,
        "trainingrun": run,
        "modelartifact": artifact,
        "guideline": project.guidelines.get(),
        "membership": project.memberships.first(),
        "metricpoint": run.points.get(),
    }
    return objects


def _import_job(project: Project, text: str, batch: ImportBatch) -> ImportJob:
    """A finished import job of `project` whose file name, report and reject file (under
    DATA_DIR/imports/, where jobs write theirs) carry `text`; it wrote `batch`."""
    from annotation.imports.jobs import REJECTS, imports_root

    folder = imports_root() / f"swept-{project.slug}"
    folder.mkdir(parents=True, exist_ok=True)
    bad = {"line": 2, "field": f"field {text}", "message": f"bad {text}"}
    (folder / REJECTS).write_text(json.dumps(bad) + "\n", encoding="utf-8")
    job = ImportJob.objects.create(
        project=project, file_name=f"upload {text}.jsonl", status=ImportJob.Status.DONE,
        skip_invalid=True, records_read=2, error=f"note {text}",
        report={"format": "trl", "counts": {"records": 2, "rejected": 1},
                "notices": {f"reason {text}": 1}, "errors": [bad], "error_count": 1,
                "written": True, "batch_id": batch.pk, "reject_file": str(folder / REJECTS)},
    )  # fmt: skip
    ImportBatch.objects.filter(pk=batch.pk).update(job=job)
    return job


# URL segment (or parameter name) → model name of the object it addresses.
SEGMENTS = {
    "runs": "trainingrun",
    "run": "trainingrun",
    "artifacts": "modelartifact",
    "artifact": "modelartifact",
    "curate": "project",
    "quality": "project",
    "imports": "importbatch",
    "import-jobs": "importjob",
    "task-batches": "taskbatch",
    "consensus": "consensusjob",  # /api/v1/consensus/<id>/: the computations
    "arena": "project",  # /training/arena/<slug>/: a project's leaderboard
    "leaderboard": "project",
    "labelers": "labeler",
    "sessions": "playgroundsession",  # /training/playground/sessions/<pk>/
    "fetches": "basemodelfetch",  # /training/base-models/fetches/<pk>/cancel/
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
        "artifact": artifact,
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

    def __init__(self, project: Project | None) -> None:
        """`project` None: every row of the platform's apps, whatever project it belongs to."""
        self.statements = {}
        for app in ("annotation", "training"):
            for model in apps.get_app_config(app).get_models(include_auto_created=True):
                rows = model._default_manager.all()
                paths = project_paths(model)
                if paths and project is not None:
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


# --- The admin's forms, filled with one project's ids ------------------------------------------


def root_request(path: str = "/admin/"):
    """A request of a superuser who is never saved: the admin then builds its pages and forms with
    every field and every row, which is what a sweep must know to fill them."""
    request = RequestFactory().get(path)
    request.user = get_user_model()(
        username="sweep-root", is_superuser=True, is_staff=True, is_active=True
    )
    return request


def admin_models(app_labels=("annotation", "training")) -> list:
    return [
        (model, model_admin)
        for model, model_admin in admin.site._registry.items()
        if model._meta.app_label in app_labels
    ]


def relation_fields(model) -> list:
    """The model's own relation fields (foreign keys, one-to-one, many-to-many)."""
    return [
        f
        for f in model._meta.get_fields()
        if f.is_relation and not f.auto_created and f.related_model is not None
    ]


def project_rows(model, project: Project) -> list[int]:
    """The ids of `model`'s rows that belong to `project` by any of their project paths."""
    if model is Project:
        return [project.pk]
    paths = project_paths(model)
    if not paths:
        return []
    rows = model._default_manager.filter(reduce(or_, (Q(**{p: project.pk}) for p in paths)))
    return list(rows.order_by("pk").values_list("pk", flat=True))


def admin_page_forms(model_admin, obj=None) -> list[tuple[str, dict]]:
    """The forms of an admin add page (`obj` None) or change page as a superuser gets them:
    ("", the model form's fields), then (prefix, fields) of each inline."""
    request = root_request()
    found = [("", dict(model_admin.get_form(request, obj).base_fields))]
    for formset, _inline in model_admin.get_formsets_with_inlines(request, obj):
        fields = dict(formset.form.base_fields)
        fields.pop(formset.fk.name, None)  # the parent: the formset sets it
        found.append((formset.get_default_prefix(), fields))
    return found


def _choices(field) -> list:
    flat = []
    for value, label in field.choices:
        if isinstance(label, (list, tuple)):
            flat += [v for v, _ in label]
        else:
            flat.append(value)
    return [v for v in flat if v not in ("", None)]


def field_value(name: str, field, pick, unique: str):
    """A plausible value for one form field; relations name the rows `pick(field)` gives."""
    if isinstance(field, forms.ModelMultipleChoiceField):
        return pick(field) or None
    if isinstance(field, forms.ModelChoiceField):
        ids = pick(field)
        return ids[0] if ids else None
    if isinstance(field, forms.BooleanField):
        return "on"
    if isinstance(field, forms.JSONField):
        initial = field.initial() if callable(field.initial) else field.initial
        return json.dumps(initial if initial not in (None, "") else {})
    if isinstance(field, forms.ChoiceField):
        choices = _choices(field)
        return choices[0] if choices else None
    if isinstance(field, (forms.IntegerField, forms.FloatField, forms.DecimalField)):
        initial = field.initial() if callable(field.initial) else field.initial
        if isinstance(initial, (int, float)):
            return initial
        low = max(field.min_value if field.min_value is not None else 1, 1)
        return field.max_value if field.max_value is not None and field.max_value < low else low
    if isinstance(field, forms.SplitDateTimeField):
        return ["2026-01-01", "00:00:00"]
    if isinstance(field, (forms.DateTimeField, forms.DateField)):
        return "2026-01-01"
    text = f"swept-{unique}" if isinstance(field, forms.SlugField) else f"swept {unique}"
    return text[: getattr(field, "max_length", None) or None]


def form_data(fields: dict, pick, *, prefix: str = "", overrides=None, unique: str = "1",
              initial=None) -> dict:  # fmt: skip
    """A body for one form: `overrides` by field name (None: left out), else the number or choice
    of `initial` (a change form's object), else field_value. With `prefix`, an inline formset of
    one new form (its management form included)."""
    overrides, initial = overrides or {}, initial or {}
    data = {}
    for name, field in fields.items():
        kept = initial.get(name)
        if name in overrides:
            value = overrides[name]
        elif isinstance(kept, (int, float)) and not isinstance(field, forms.ModelChoiceField):
            value = "on" if kept is True else kept
        else:
            value = field_value(name, field, pick, unique)
        if value is False:
            continue
        key = f"{prefix}-0-{name}" if prefix else name
        if isinstance(field, forms.SplitDateTimeField) and isinstance(value, list):
            data[f"{key}_0"], data[f"{key}_1"] = value
        elif value is not None:
            data[key] = value
    if prefix:
        data.update({f"{prefix}-TOTAL_FORMS": "1", f"{prefix}-INITIAL_FORMS": "0",
                     f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"})  # fmt: skip
    return data


def picker(project: Project, user):
    """`pick(field)` for form_data: the rows of `project` the field may take (the project itself,
    `user` for a user field), within the field's own choices (a ready snapshot, a reward model)."""

    def pick(field) -> list[int]:
        model = field.queryset.model
        if model is get_user_model():
            return [user.pk]
        rows = project_rows(model, project)
        return list(field.queryset.filter(pk__in=rows).order_by("pk").values_list("pk", flat=True))

    return pick


def named_routes() -> list[tuple[str, str | None]]:
    """(route, view name with its namespaces) of every route, as routes() walks them."""

    def walk(patterns, prefix="", namespace=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                ns = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern), ns)
            else:
                route = (prefix + str(pattern.pattern)).replace("^", "").replace("$", "")
                if "format" in route or route.startswith(SKIP_PREFIXES):
                    continue
                yield route, f"{namespace}{pattern.name}" if pattern.name else None

    return list(walk(get_resolver().url_patterns))


# --- A sweep that collects what it finds --------------------------------------------------------


class Sweep:
    """Requests of one user; each runs in a savepoint that is rolled back once it has been
    checked, so every request meets the same world and a write let through is reported once and
    then undone. Findings are collected, not raised: one run lists every hole.

    `watch`: the rows no request may change (a BState); `hidden`: texts no 200 page may show."""

    def __init__(self, user, who: str, *, watch: BState, hidden=(MARKER,)) -> None:
        self.client = Client()
        self.client.force_login(user)
        self.who, self.watch, self.hidden = who, watch, tuple(hidden)
        self.findings: list[str] = []
        self.counts: Counter = Counter()

    def send(self, method: str, url: str, *, kind: str = "requests", what: str = "",
             expect_write: bool = False, **body):  # fmt: skip
        """One request; `what` (the thing it tries) goes into the findings. `expect_write`: the
        request must write (the sweep's own check that its bodies are good enough to save),
        and a request that writes nothing is the finding, with the form's errors."""
        self.counts["requests"] += 1
        self.counts[kind] += 1
        said = f"{self.who}: {method.upper()} {url}" + (f" [{what}]" if what else "")
        try:
            with transaction.atomic():
                response = getattr(self.client, method)(url, **body)
                changed = self.watch.changes()
                transaction.set_rollback(True)
        except Exception as error:  # the test client re-raises what became a 500
            self.findings.append(f"{said} → 500 {type(error).__name__}: {error}"[:400])
            return None
        if response.status_code >= 500:
            self.findings.append(f"{said} → {response.status_code}")
        if expect_write and not changed:
            self.findings.append(f"{said} → {response.status_code} wrote nothing{_why(response)}")
        elif changed and not expect_write:
            self.findings.append(f"{said} → {response.status_code} wrote {', '.join(changed)}")
        if response.status_code == 200:
            content = (
                b"".join(response.streaming_content)
                if getattr(response, "streaming", False)
                else response.content
            )
            for text in self.hidden:
                if text.encode() in content:
                    self.findings.append(f"{said} → 200 shows {text!r}")
        return response


def _why(response) -> str:
    """The form errors and messages of a page that saved nothing."""
    from django.contrib.messages import get_messages

    said = []
    context = response.context or {}
    form = context.get("adminform")
    form = form.form if form is not None else context.get("form")
    if form is not None and form.errors:
        said.append(f"form: {form.errors.get_json_data()}")
    for inline in context.get("inline_admin_formsets") or []:
        if inline.formset.errors and any(inline.formset.errors):
            said.append(f"inline {inline.formset.prefix}: {inline.formset.errors}")
    said += [str(m) for m in list(get_messages(response.wsgi_request))[-2:]]
    return (": " + "; ".join(said))[:300] if said else ""
