"""Tenant isolation and least privilege, swept from the admin registry and the URL resolver.

Three sweeps, each collecting every finding before it fails (one run lists every hole):

1. The staff of project A open every admin page with B's ids prefilled in the query of every
   relation field, every page as a popup (`_popup=1&_to_field=id`), and the admin's
   autocomplete for every relation of every registered model: no page shows anything of B.
2. The staff of project A post every admin add form (and the change form of A's own object)
   with A as the project and B's rows in every relation field, inlines included, and the
   training forms with B's rows: no row of A comes to use a row of B, no row of B changes.
3. Each role below the one a thing needs (MINIMUM, the spec: one line per admin model
   permission, admin action and training page), in its own project A, alone and as the admin
   of another project C (Django's model permissions are global; roles are per project), visits
   and posts it: nothing is written.

Every 500 is a finding. A new admin model, action or training page that MINIMUM does not list
fails the third sweep with a message saying to add it.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model

from annotation import services
from annotation.access import LADDER, role_at_least
from annotation.models import Project, Role
from tests.sweep import (
    MARKER,
    STAFF_OUTSIDERS,
    BState,
    Sweep,
    admin_models,
    admin_page_forms,
    fill,
    form_data,
    named_routes,
    picker,
    project_objects_build,
    project_paths,
    project_rows,
    relation_fields,
    root_request,
    world_build,
)
from training.engine.tiny import write_snapshot
from training.forms import (
    BaseModelForm,
    BattleSetForm,
    GenerateForm,
    LaunchForm,
    RoundStartForm,
    config_text,
)
from training.models import ModelArtifact, TrainingRun
from training.playground_views import NewSessionForm, SendForm
from training.presets import preset_config

A_MARKER = "zzA-own-5e1d"  # in every text of project A: only its curators and above see it
# A search for B's text: a part of MARKER, since a page may repeat the search it was asked for.
SEARCH = MARKER[3:]
LOWER = (Role.LABELER, Role.CURATOR, Role.ENGINEER)

C, V, E, A = Role.CURATOR, Role.CURATOR, Role.ENGINEER, Role.ADMIN
# The spec (issue 18): the lowest role of project A that may do each thing in A. Keys: (model
# label, admin permission), (model label, "action:<name>"), or a view name. Viewing any admin page
# is curator+; deleting is admin only (no lower role holds a delete permission).
MINIMUM: dict = {
    **{(label, "view"): V for label in (
        "annotation.Project", "annotation.Membership", "annotation.Guideline",
        "annotation.Prompt", "annotation.Response", "annotation.Task", "annotation.Assignment",
        "annotation.Annotation", "annotation.Snapshot", "annotation.ImportBatch",
        "annotation.ImportJob", "annotation.Consensus", "annotation.TaskBatch",
        "annotation.ConsensusJob", "training.TrainingRun", "training.ModelArtifact",
        "training.WorkerHeartbeat", "training.GenerationJob", "training.Round",
        "training.BaseModelFetch",
    )},
    **{(label, perm): C for label in (
        "annotation.Prompt", "annotation.Response", "annotation.Task", "annotation.Guideline",
        "annotation.Snapshot",
    ) for perm in ("add", "change")},
    ("annotation.Annotation", "change"): C,  # the review
    ("annotation.Annotation", "action:approve"): C,
    ("annotation.Annotation", "action:reject"): C,
    ("annotation.Task", "action:mark_gold"): C,
    ("annotation.Membership", "action:resume"): C,  # resume a paused labeler
    ("annotation.Snapshot", "action:build_again"): C,
    ("annotation.Snapshot", "action:train_on_snapshot"): E,
    **{(label, perm): E for label in ("training.TrainingRun", "training.ModelArtifact",
                                      "training.GenerationJob", "training.Round")
       for perm in ("add", "change")},
    ("training.TrainingRun", "action:cancel_runs"): E,
    ("training.TrainingRun", "action:resume_runs"): E,
    ("training.TrainingRun", "action:rerun_runs"): E,
    ("training.ModelArtifact", "action:train_from"): E,
    ("training.ModelArtifact", "action:generate_from"): E,
    ("training.ModelArtifact", "action:start_next_round"): E,
    ("training.GenerationJob", "action:generate_again"): E,
    ("training.ModelArtifact", "action:arena_from"): C,
    ("training.ArenaBattleSet", "view"): V,
    # Battle sets are started from the arena page; the admin only lists them.
    **{("training.ArenaBattleSet", perm): A for perm in ("add", "change", "delete")},
    # Fetches are requested from "Register a base model" (engineers); the admin lists them.
    ("training.BaseModelFetch", "add"): A,
    ("training.BaseModelFetch", "change"): E,
    ("training.BaseModelFetch", "delete"): A,
    "admin:training_modelartifact_register_base": E,
    ("annotation.Membership", "add"): A,
    ("annotation.Membership", "change"): A,
    ("annotation.Project", "add"): C,  # access.may_create_project: the creator is its admin
    ("annotation.Project", "change"): A,
    # Records and machinery: written by the platform, never by a lower role through the admin.
    **{(label, perm): A for label in ("annotation.Assignment", "annotation.ImportBatch",
                                      "annotation.ImportJob", "annotation.Consensus",
                                      "annotation.TaskBatch", "annotation.ConsensusJob",
                                      "training.WorkerHeartbeat")
       for perm in ("add", "change")},
    **{(label, "delete"): A for label in (
        "annotation.Project", "annotation.Membership", "annotation.Guideline",
        "annotation.Prompt", "annotation.Response", "annotation.Task", "annotation.Assignment",
        "annotation.Annotation", "annotation.Snapshot", "annotation.ImportBatch",
        "annotation.ImportJob", "annotation.Consensus", "annotation.TaskBatch",
        "annotation.ConsensusJob", "training.TrainingRun", "training.ModelArtifact",
        "training.WorkerHeartbeat", "training.GenerationJob", "training.Round",
    )},
    ("annotation.Annotation", "add"): A,
    "training:run": V,
    "training:run_live": V,
    "training:run_tensorboard": V,
    "training:workers": V,
    "training:run_cancel": E,
    "training:base_model_fetch_cancel": E,
    "training:run_resume": E,
    "training:run_rerun": E,
    "training:generate": E,
    "training:leaderboard": C,
    "training:battle_set_new": C,
    "training:artifact_arena": V,
    "training:artifact_promote": E,
    "training:round_start": E,
    "admin:training_trainingrun_launch": E,
    # The playground: engineers (labelers and curators only where the project grants it, which
    # A does not).
    **{f"training:playground{page}": E for page in (
        "", "_session", "_live", "_send", "_cancel", "_save_prompt", "_save_demonstration",
    )},
}  # fmt: skip
# Things of no project (a new project, the workers): the highest role the user holds anywhere
# is what counts.
NOT_IN_A = {("annotation.Project", "add"), *(("training.WorkerHeartbeat", p) for p in
            ("view", "add", "change", "delete"))}  # fmt: skip

# Values the generated bodies cannot guess (a task kind with its candidate count, a project slug
# that is free, a config the launch form parses); by model label or view name.
OVERRIDES = {
    "annotation.Task": {"kind": "compare", "gold_answer": "null", "is_gold": False},
    "annotation.Snapshot": {"kind": "preference", "format": "jsonl", "filters": "{}"},
    "annotation.Membership": {"role": Role.ADMIN},
    "annotation.Prompt": {"messages": None, "tags": "[]", "metadata": "{}"},
    "training.ModelArtifact": {"path": "org/swept-model"},  # a hub name: any project may
    "admin:training_trainingrun_launch": {"stage": "sft", "preset": "sft-lora", "config": None,
                                          "launch": "1", "ignore_memory": "on", "reward": None},
    "training:generate": {"tag": "", "limit": 1, "k": 2},
    # A folder of the models directory (the world builds it); no hub name (tests are offline).
    "admin:training_modelartifact_register_base": {"folder": "swept-base", "hub_name": "",
                                                   "name": "swept"},
    "training:battle_set_new": {"tag": "", "limit": 1, "required": 1, "name": "swept"},
    "training:round_start": {"budget": 1, "tag": "", "k": 2, "batch": None, "snapshot": None,
                             "active": False,
                             "seed": None, "generators": [], "reward_models": []},
}  # fmt: skip
# The forms of the training pages (they are not ModelAdmin forms), by view name.
VIEW_FORMS = {
    "admin:training_trainingrun_launch": LaunchForm,
    "admin:training_modelartifact_register_base": BaseModelForm,
    "training:generate": GenerateForm,
    "training:battle_set_new": BattleSetForm,
    "training:playground": NewSessionForm,
    "training:playground_send": SendForm,
    "training:round_start": RoundStartForm,
}


def _view_form(name: str, user, objects: dict):
    """The form of a training page, as its view builds it (generate: for the page's model)."""
    if name == "training:generate":
        return GenerateForm(user=user, artifact=objects["modelartifact"])
    if name == "training:battle_set_new":
        return BattleSetForm(project=objects["project"])
    if name == "training:round_start":
        return RoundStartForm(artifact=objects["modelartifact"])
    return VIEW_FORMS[name](user=user)


STANDARD_ADMIN = ("changelist", "add", "change", "delete", "history")
ADMIN_SITE_VIEWS = {"admin:index", "admin:login", "admin:logout", "admin:password_change",
                    "admin:password_change_done", "admin:autocomplete", "admin:jsi18n",
                    "admin:view_on_site", "admin:app_list"}  # fmt: skip


@pytest.fixture
def world(make_user, settings, tmp_path):
    """world_build's two projects, with A filled too (its texts carry A_MARKER), a bystander
    labeler of A (the membership a sweep may try to change), a newcomer of no project (the user
    a membership form adds), and for each lower role a user holding it in A who is also the
    admin of a project C of their own."""
    settings.DATA_DIR = tmp_path / "data"
    settings.VAR_DIR = tmp_path / "var"
    settings.MODELS_DIR = tmp_path / "models"
    (settings.MODELS_DIR / "swept-base").mkdir(parents=True)
    (settings.MODELS_DIR / "swept-base" / "config.json").write_text("{}")
    world = world_build(make_user)
    project_a = world["project_a"]
    users = get_user_model().objects
    bystander = users.create_user(username="bystander")
    services.membership_set(project=project_a, user=bystander, role=Role.LABELER)
    world["newcomer"] = users.create_user(username="newcomer")
    world["objects_a"] = project_objects_build(
        project_a, text=A_MARKER, author=world["admin_a"], labeler=world["member_a"]
    )
    world["objects_a"]["membership"] = project_a.memberships.get(user=bystander)
    # A launch reads its data's manifest.
    snapshot_dir = write_snapshot(
        tmp_path / "snapshot-a", "sft", {"train": [{"prompt": "p", "completion": "c"}]}
    )
    model_dir = tmp_path / "model-a"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    ModelArtifact.objects.filter(pk=world["objects_a"]["modelartifact"].pk).update(path=model_dir)
    # (of the kind of its rows: a launch checks the snapshot's kind against the stage)
    world["objects_a"]["snapshot"].path = str(snapshot_dir)
    world["objects_a"]["snapshot"].kind = "sft"
    world["objects_a"]["snapshot"].save(update_fields=["path", "kind"])
    # A failed run beside the queued one: the resume and re-run actions have one to act on.
    config = preset_config("sft-lora")
    config.pop("stage")
    failed = TrainingRun.objects.create(
        project=project_a, stage="sft", name=f"Failed {A_MARKER}",
        status=TrainingRun.Status.FAILED, config=config,
        parent_artifact=world["objects_a"]["modelartifact"],
    )  # fmt: skip
    failed.snapshots.add(world["objects_a"]["snapshot"])
    world["alone"] = {Role.LABELER: world["member_a"]} | {
        role: world[name] for role, name in STAFF_OUTSIDERS.items()
    }
    world["also_admin_of_c"] = {}
    project_c = services.project_create(name="Gamma", slug="gamma")
    for role in LOWER:
        user = users.create_user(username=f"{role}_a_admin_c")
        services.membership_set(project=project_a, user=user, role=role)
        services.membership_set(project=project_c, user=user, role=Role.ADMIN)
        world["also_admin_of_c"][role] = user
    return world


def _overrides(name: str) -> dict:
    overrides = dict(OVERRIDES.get(name) or {})
    if name == "admin:training_trainingrun_launch":  # the preset's own config, as the form has it
        config = preset_config("sft-lora")
        config.pop("stage")
        overrides["config"] = config_text(config)
    return overrides


def _base(model) -> str:
    return f"/admin/{model._meta.app_label}/{model._meta.model_name}/"


def _report(findings: list[str], counts: dict) -> None:
    print(f"\nswept: {dict(counts)}")
    assert not findings, f"{len(findings)} finding(s):\n" + "\n".join(findings)


def _b_query(model, model_admin, project, owner) -> dict:
    """B's ids under the name of every relation field of the model and of its admin form."""
    names = {f.name: f.related_model for f in relation_fields(model)}
    for _prefix, fields in admin_page_forms(model_admin)[:1]:
        for name, field in fields.items():
            if hasattr(field, "queryset") and field.queryset is not None:
                names.setdefault(name, field.queryset.model)
    query = {}
    for name, related in names.items():
        ids = [owner.pk] if related is get_user_model() else project_rows(related, project)
        if ids:
            query[name] = ",".join(map(str, ids))
    return query


def _custom_admin_views() -> list[tuple[str, str]]:
    """(route, view name) of the admin pages a ModelAdmin adds to its standard ones."""
    found = []
    for route, name in named_routes():
        if not route.startswith("admin/") or name is None or name in ADMIN_SITE_VIEWS:
            continue
        if name.rsplit("_", 1)[-1] in STANDARD_ADMIN:
            continue
        found.append((route, name))
    return found


@pytest.mark.parametrize("role", list(STAFF_OUTSIDERS))
def test_admin_pages_prefilled_with_b_ids_show_nothing_of_b(world, role):
    """The curator, engineer and admin of A open every admin add page with B's ids in the query
    of every relation field (with and without `_popup=1&_to_field=id`), every changelist as a
    popup, searched for B's text and filtered on B's rows, B's objects as popups, the admin's
    autocomplete of every relation of every registered model, and the pages a ModelAdmin adds
    (the launch form) with B's ids: no 200 shows B's text, nothing answers 500, B is unchanged."""
    user, project_b, owner_b = world[STAFF_OUTSIDERS[role]], world["project_b"], world["owner_b"]
    sweep = Sweep(user, f"the {role} of A", watch=BState(project_b))
    popup = {"_popup": "1", "_to_field": "id"}
    all_relations: dict = {}
    for model, model_admin in admin.site._registry.items():
        base = _base(model)
        query = _b_query(model, model_admin, project_b, owner_b)
        all_relations.update(query)
        urls = [f"{base}add/?{urlencode(query)}", f"{base}add/?{urlencode({**query, **popup})}",
                f"{base}?{urlencode(popup)}", f"{base}?{urlencode({'q': SEARCH})}",
                f"{base}?{urlencode({**popup, 'q': SEARCH})}"]  # fmt: skip
        urls += [
            f"{base}?{urlencode({f'{name}__id__exact': ids.split(',')[0]})}"
            for name, ids in query.items()
        ]
        for pk in (
            project_rows(model, project_b)[:1] if project_paths(model) or model is Project else []
        ):
            urls += [f"{base}{pk}/change/?{urlencode(popup)}", f"{base}{pk}/delete/?_popup=1"]
        for field in relation_fields(model):
            for term in ("", SEARCH):
                params = {"app_label": model._meta.app_label, "model_name": model._meta.model_name,
                          "field_name": field.name, "term": term}  # fmt: skip
                urls.append(f"/admin/autocomplete/?{urlencode(params)}")
        for url in urls:
            sweep.send("get", url, kind="urls")
    for route, _name in _custom_admin_views():
        if "<" in route or "(?P" in route:
            continue
        for query in (all_relations, {**all_relations, "preset": "sft-lora"}):
            sweep.send("get", f"/{route}?{urlencode(query)}", kind="urls")
    autocomplete = sum(1 for f in sweep.findings if "autocomplete" in f)
    print(f"autocomplete findings: {autocomplete}")
    assert sweep.counts["urls"] >= 200, sweep.counts
    _report(sweep.findings, sweep.counts)


@pytest.mark.parametrize("role", list(STAFF_OUTSIDERS))
def test_admin_forms_posted_with_b_ids_link_nothing_to_b(world, role):
    """The curator, engineer and admin of A post every admin add form, and the change form of
    A's own object, with A as the project and B's rows in every relation field (and in a new row
    of every inline), plausible values in the others; and the launch and generate forms with B's
    snapshot, models and project. No row of A comes to use a row of B (BState counts a row that
    reaches B through any foreign key or many-to-many link), no row of B changes."""
    user, project_a, project_b = (
        world[STAFF_OUTSIDERS[role]],
        world["project_a"],
        world["project_b"],
    )
    sweep = Sweep(user, f"the {role} of A", watch=BState(project_b))
    b_rows = picker(project_b, world["owner_b"])

    def pick(field):  # A as the project, B's rows in every other relation
        if field.queryset.model is Project:
            return [project_a.pk]
        return b_rows(field)

    for model, model_admin in admin_models():
        base, label = _base(model), model._meta.label
        own = project_rows(model, project_a)[:1] if project_paths(model) or model is Project else []
        pages = [(f"{base}add/", None)] + [(f"{base}{pk}/change/", pk) for pk in own]
        for url, pk in pages:
            obj = model._default_manager.get(pk=pk) if pk else None
            data = {}
            initial = model_admin.get_form(root_request(), obj)(instance=obj).initial if obj else {}
            for prefix, fields in admin_page_forms(model_admin, obj):
                data |= form_data(fields, pick, prefix=prefix, overrides=OVERRIDES.get(label),
                                  unique=f"{model._meta.model_name[:4]}-{role[:3]}",
                                  initial=initial if not prefix else None)  # fmt: skip
            for suffix in ("", "?_popup=1&_to_field=id"):
                sweep.send("post", url + suffix, kind="forms", data=data)
    for route, name in named_routes():
        if name not in VIEW_FORMS:
            continue
        url = fill(route, world["objects_a"])
        form = _view_form(name, root_request().user, world["objects_a"])
        data = form_data(form.fields, pick, overrides=_overrides(name))
        data |= {k: v for k, v in _overrides(name).items() if v is not None}
        for project_field in ("project",):  # a training form's project: B's this time
            if project_field in data:
                sweep.send("post", url, kind="forms", data={**data, project_field: project_b.pk})
        sweep.send("post", url, kind="forms", data=data)
    assert sweep.counts["forms"] >= 40, sweep.counts
    _report(sweep.findings, sweep.counts)


def _things(objects_a: dict, newcomer) -> list[tuple]:
    """(key of MINIMUM, method, url, body) of everything the third sweep tries in A: every admin
    page of every model, every admin action on A's rows, every training page."""
    things = []
    project_a = objects_a["project"]
    request = root_request()
    for model, model_admin in admin_models():
        base, label = _base(model), model._meta.label
        rows = project_rows(model, project_a) if project_paths(model) or model is Project else []
        if model._meta.label_lower == "training.workerheartbeat":
            rows = list(model._default_manager.values_list("pk", flat=True))
        pick_a = picker(project_a, newcomer)
        add = {}
        for prefix, fields in admin_page_forms(model_admin):
            add |= form_data(fields, pick_a, prefix=prefix, overrides=OVERRIDES.get(label),
                             unique=model._meta.model_name[:6])  # fmt: skip
        things += [((label, "view"), "get", base, {}), ((label, "add"), "get", f"{base}add/", {}),
                   ((label, "add"), "post", f"{base}add/", add)]  # fmt: skip
        for pk in rows[:1]:
            obj = model._default_manager.get(pk=pk)
            change = {}
            initial = model_admin.get_form(request, obj)(instance=obj).initial

            def pick_other(field, model=model, pk=pk, pick_a=pick_a):
                # A relation to its own model (a model's parent) names another row: a row
                # made its own parent is refused even to a superuser.
                return [p for p in pick_a(field) if not (field.queryset.model is model and p == pk)]

            for prefix, fields in admin_page_forms(model_admin, obj):
                change |= form_data(fields, pick_other, prefix=prefix, overrides=OVERRIDES.get(label),
                                    unique=f"{model._meta.model_name[:4]}-c",
                                    initial=initial if not prefix else None)  # fmt: skip
            things += [
                ((label, "view"), "get", f"{base}{pk}/change/", {}),
                ((label, "view"), "get", f"{base}{pk}/history/", {}),
                ((label, "change"), "post", f"{base}{pk}/change/", change),
                ((label, "delete"), "get", f"{base}{pk}/delete/", {}),
                ((label, "delete"), "post", f"{base}{pk}/delete/", {"post": "yes"}),
            ]
        for action in {*model_admin.get_actions(request), "delete_selected"}:
            key = (label, "delete") if action == "delete_selected" else (label, f"action:{action}")
            body = {"action": action, "_selected_action": rows, "index": 0, "post": "yes"}
            things.append((key, "post", base, body))
    for route, name in named_routes():
        if not (name or "").startswith("training:") and name not in dict(
            (n, r) for r, n in _custom_admin_views()
        ):
            continue
        url = fill(route, objects_a)
        body = {}
        if name in VIEW_FORMS:
            form = _view_form(name, request.user, objects_a)
            body = form_data(form.fields, picker(project_a, newcomer), overrides=_overrides(name))
            body |= {k: v for k, v in _overrides(name).items() if v is not None}
        things += [(name, "get", url, {}), (name, "post", url, body)]
    return things


def _highest_role(user) -> str | None:
    roles = set(user.memberships.values_list("role", flat=True))
    return max(roles, key=LADDER.index) if roles else None


@pytest.mark.parametrize("role", LOWER)
def test_lower_roles_write_nothing_above_their_role_in_their_own_project(world, role):
    """A user of `role` in project A, alone and as the admin of a project C of their own, tries
    every thing MINIMUM reserves to a higher role of A (every admin page, form and action on
    A's rows, every training page), GET and POST: nothing of the platform is written, nothing
    answers 500, a labeler sees no text of A, and every admin model, action and training page is
    in MINIMUM."""
    things = _things(world["objects_a"], world["newcomer"])
    findings = [
        f"{key!r} is not in MINIMUM: add it to tests/web/test_isolation_sweep.py with the lowest "
        "role of a project that may do it"
        for key in sorted({t[0] for t in things} - set(MINIMUM), key=str)
    ]
    counts = {}
    for variant in ("alone", "also_admin_of_c"):
        user = world[variant][role]
        hidden = (MARKER, A_MARKER) if role == Role.LABELER else (MARKER,)
        sweep = Sweep(user, f"the {role} of A ({variant})", watch=BState(None), hidden=hidden)
        anywhere = _highest_role(user)
        for key, method, url, body in things:
            minimum = MINIMUM.get(key)
            held = anywhere if key in NOT_IN_A else role
            if minimum is None or role_at_least(held, minimum):
                continue
            kind = "actions" if "action" in body else "posts" if method == "post" else "gets"
            what = f"{key[1] if isinstance(key, tuple) else key}, needs {minimum}"
            sweep.send(method, url, kind=kind, what=what, data=body)
        findings += sweep.findings
        counts[variant] = dict(sweep.counts)
    print(f"\nswept: {counts}")
    least = {Role.LABELER: 150, Role.CURATOR: 40, Role.ENGINEER: 25}[role]
    assert all(c["requests"] >= least for c in counts.values()), counts
    assert not findings, f"{len(findings)} finding(s):\n" + "\n".join(findings)


# Things that write nothing even for a superuser: actions that only pre-fill another form, change
# forms whose every field is read-only, pages (their POST is no write), what the world cannot
# offer (no worker row; the run pages address the queued run, which cannot be resumed; A's model
# is protected by its generation job).
WRITE_NOTHING = {
    ("annotation.Snapshot", "action:train_on_snapshot"),
    ("training.ModelArtifact", "action:train_from"),
    ("training.ModelArtifact", "action:generate_from"),
    ("training.ModelArtifact", "action:arena_from"), ("training.ArenaBattleSet", "change"),
    "training:leaderboard", "training:artifact_arena",
    "training:artifact_promote",  # A's model has no parent to be promoted over
    ("training.ModelArtifact", "action:start_next_round"), ("training.Round", "change"),
    ("annotation.Snapshot", "change"), ("training.GenerationJob", "change"),
    ("training.BaseModelFetch", "change"),
    "training:run", "training:run_live", "training:run_tensorboard", "training:workers",
    "training:run_resume",
    "training:run_rerun", ("training.WorkerHeartbeat", "delete"), ("training.ModelArtifact", "delete"),
    ("annotation.Project", "delete"),  # the admin refuses it to superusers too (403)
    ("training.TrainingRun", "action:resume_runs"),  # no run of the world has a checkpoint
    ("annotation.Membership", "action:resume"),  # no labeler of the world is paused
    ("annotation.Task", "action:mark_gold"),  # no judgment of the world is approved
    # The playground's pages and its polled part; a cancel with nothing generating; a
    # demonstration needs a corrected reply, which the sweep's body does not write.
    "training:playground_session", "training:playground_live", "training:playground_cancel",
    "training:playground_save_demonstration",
    # The world's fetch has failed: a cancel has nothing to stop (its role is checked first).
    "training:base_model_fetch_cancel",
}  # fmt: skip


def test_the_sweep_fills_every_form_well_enough_to_save(world, django_user_model):
    """The third sweep's bodies, posted by a superuser, each write (or the admin refuses the
    superuser too: a record's add page): else that sweep would pass for nothing. A body that
    saves nothing is reported with its form's errors; fix OVERRIDES."""
    root = django_user_model.objects.create_superuser(username="root")
    sweep = Sweep(root, "a superuser", watch=BState(None), hidden=())
    request = root_request()
    request.user = root
    registry = {model._meta.label: model_admin for model, model_admin in admin_models()}
    for key, method, url, body in _things(world["objects_a"], world["newcomer"]):
        if method != "post" or key in WRITE_NOTHING:
            continue
        if isinstance(key, tuple) and not key[1].startswith("action:"):
            model_admin = registry[key[0]]
            pk = url.split("/")[4] if url.count("/") > 5 else None
            obj = model_admin.model._default_manager.get(pk=pk) if pk else None
            may = getattr(model_admin, f"has_{key[1]}_permission")
            if not (may(request) if key[1] == "add" else may(request, obj)):
                continue
        sweep.send(method, url, kind="posts", what=str(key), expect_write=True, data=body)
    _report(sweep.findings, sweep.counts)
