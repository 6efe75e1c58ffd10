"""Every admin page follows the user's projects and their role in each (annotation/admin.py's
RoleScopedAdmin): what a form shows and offers, what a save writes, what an action touches,
who changes memberships and settings. Users: the curator, engineer and admin of project A; B is
another project whose rows and names must never reach them."""

from __future__ import annotations

import pytest
from django.test import Client

from annotation import services
from annotation.models import Assignment, Membership, Project, Response, Role, Task, TaskKind
from training.models import ModelArtifact, TrainingRun

pytestmark = pytest.mark.django_db

SECRET = "zzB-private"


@pytest.fixture
def world(make_user, project_factory):
    curator, engineer, admin = make_user("cur"), make_user("eng"), make_user("adm")
    labeler, stranger = make_user("lab"), make_user(f"{SECRET}-stranger")
    a = project_factory("alpha", prompts=1, kinds=(TaskKind.COMPARE,), members=[
        (curator, Role.CURATOR), (engineer, Role.ENGINEER), (admin, Role.ADMIN),
        (labeler, Role.LABELER)])  # fmt: skip
    b = project_factory("beta", prompts=1, kinds=(TaskKind.COMPARE,))
    b_prompt = b.prompts.get()
    services.prompt_save(prompt=b_prompt, item={"text": f"{SECRET} prompt"})
    b_responses = [
        services.response_create(prompt=b_prompt, text=f"{SECRET} answer {i}", origin="seed")
        for i in range(2)
    ]
    b_model = ModelArtifact.objects.create(
        project=b, name=f"{SECRET}-model", stage="pretrain", path="/m/b"
    )
    return {"a": a, "b": b, "curator": curator, "engineer": engineer, "admin": admin,
            "labeler": labeler, "stranger": stranger, "b_prompt": b_prompt,
            "b_responses": b_responses, "b_model": b_model}  # fmt: skip


def as_user(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page(client: Client, url: str, **query) -> str:
    response = client.get(url, query)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


def action(client: Client, changelist: str, name: str, rows) -> object:
    return client.post(
        f"/admin/{changelist}/", {"action": name, "_selected_action": [r.pk for r in rows]}
    )


# --- 1. What the forms show and offer ----------------------------------------------------------


def test_the_task_add_form_prefilled_with_bs_ids_shows_nothing_of_b(world):
    """`?prompt=` and `?candidates=` with B's ids: neither B's prompt nor B's responses are
    named, and the candidates widget lists A's responses only."""
    a_response = Response.objects.filter(prompt__project=world["a"]).first()
    html = page(
        as_user(world["curator"]),
        "/admin/annotation/task/add/",
        prompt=world["b_prompt"].pk,
        candidates=",".join(str(r.pk) for r in world["b_responses"]),
    )
    assert SECRET not in html
    assert a_response.text in html  # the widget does list what the curator may choose


def test_user_and_model_dropdowns_offer_only_what_lies_in_the_users_projects(world):
    """A prompt's author is not a choice (the service records the user who adds it), a
    response's model and an artifact's parent list no model of B, and no form lists users who
    share no project with the user (the stranger). Before, `created_by` listed every user and
    every model registered without a run (B's too) was offered."""
    curator, engineer = as_user(world["curator"]), as_user(world["engineer"])
    for client, url in [
        (curator, "/admin/annotation/prompt/add/"),
        (curator, "/admin/annotation/response/add/"),
        (curator, f"/admin/annotation/prompt/{world['a'].prompts.get().pk}/change/"),
        (engineer, "/admin/training/modelartifact/add/"),
        (engineer, "/admin/annotation/membership/"),
    ]:
        html = page(client, url)
        assert SECRET not in html, url
    form = curator.get("/admin/annotation/prompt/add/").context["adminform"].form
    assert "created_by" not in form.fields


def test_autocomplete_and_the_changelists_find_nothing_of_b(world):
    curator = as_user(world["curator"])
    found = curator.get(
        "/admin/autocomplete/",
        {"term": "", "app_label": "annotation", "model_name": "task", "field_name": "prompt"},
    )
    assert SECRET not in found.content.decode()
    for url in ("/admin/annotation/response/", "/admin/annotation/prompt/",
                "/admin/training/modelartifact/", "/admin/annotation/project/"):  # fmt: skip
        assert SECRET not in page(curator, url), url


# --- 2. Writes go through the services' checks -------------------------------------------------


def test_a_task_in_a_on_bs_prompt_and_responses_is_refused(world):
    form = {"project": world["a"].pk, "kind": TaskKind.COMPARE, "prompt": world["b_prompt"].pk,
            "candidates": [r.pk for r in world["b_responses"]], "required": 1, "priority": 0,
            "round": 1, "gold_answer": "null", "instructions": ""}  # fmt: skip
    before = Task.objects.count()
    response = as_user(world["curator"]).post("/admin/annotation/task/add/", form)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert {"prompt", "candidates"} <= set(errors)
    assert Task.objects.count() == before


def test_a_response_is_written_by_the_service_as_its_adder_and_only_to_their_prompts(world):
    """A response for B's prompt is refused; one for A's is written with the user as author,
    whatever `created_by` the request names, and its text checked as the service checks it."""
    curator = as_user(world["curator"])
    url = "/admin/annotation/response/add/"
    a_prompt = world["a"].prompts.get()
    base = {"text": "A new answer", "origin": "seed", "created_by": world["admin"].pk}
    refused = curator.post(url, {**base, "prompt": world["b_prompt"].pk})
    assert refused.status_code == 200 and "prompt" in refused.context["adminform"].form.errors
    assert not world["b_prompt"].responses.filter(text="A new answer").exists()
    nul = curator.post(url, {**base, "prompt": a_prompt.pk, "text": "bad\x00text"})
    assert nul.status_code == 200 and "text" in nul.context["adminform"].form.errors
    assert curator.post(url, {**base, "prompt": a_prompt.pk}).status_code == 302
    written = a_prompt.responses.get(text="A new answer")
    assert written.created_by == world["curator"]
    changed = curator.post(
        f"/admin/annotation/response/{written.pk}/change/", {**base, "text": "Edited"}
    )
    assert changed.status_code == 403  # what judgments refer to is never edited
    assert Response.objects.get(pk=written.pk).text == "A new answer"


def test_assignments_are_made_by_leasing_only(world, make_user):
    """No one adds or edits a lease in the admin, B's admin least of all on A's task."""
    b_admin = make_user("badm")
    services.membership_set(project=world["b"], user=b_admin, role=Role.ADMIN)
    task = Task.objects.filter(project=world["a"]).first()
    for user in (b_admin, world["admin"]):
        response = as_user(user).post(
            "/admin/annotation/assignment/add/",
            {"task": task.pk, "labeler": world["labeler"].pk, "state": "active"},
        )
        assert response.status_code == 403
    assert not Assignment.objects.exists()
    assert page(as_user(world["curator"]), "/admin/annotation/assignment/")


# --- 3. Memberships and settings are the project admin's ----------------------------------------


def test_only_the_projects_admin_changes_its_memberships_and_settings(world):
    a = world["a"]
    own = Membership.objects.get(user=world["curator"], project=a)
    labeler = Membership.objects.get(user=world["labeler"], project=a)
    for user in (world["curator"], world["engineer"]):
        client = as_user(user)
        me = Membership.objects.get(user=user, project=a)
        assert client.post(f"/admin/annotation/membership/{me.pk}/change/",
                           {"project": a.pk, "user": user.pk, "role": Role.ADMIN}).status_code == 403  # fmt: skip
        assert client.post(f"/admin/annotation/membership/{labeler.pk}/change/",
                           {"project": a.pk, "user": world["labeler"].pk,
                            "role": Role.ENGINEER}).status_code == 403  # fmt: skip
        assert client.post("/admin/annotation/membership/add/",
                           {"project": a.pk, "user": world["stranger"].pk,
                            "role": Role.ADMIN}).status_code == 403  # fmt: skip
        assert client.post(f"/admin/annotation/membership/{labeler.pk}/delete/",
                           {"post": "yes"}).status_code == 403  # fmt: skip
        assert client.post(f"/admin/annotation/project/{a.pk}/change/",
                           {"name": "Renamed", "slug": a.slug}).status_code == 403  # fmt: skip
    assert Membership.objects.get(pk=own.pk).role == Role.CURATOR
    assert Membership.objects.get(pk=labeler.pk).role == Role.LABELER
    assert Project.objects.get(pk=a.pk).name == "Alpha"

    admin = as_user(world["admin"])
    response = admin.post(f"/admin/annotation/membership/{labeler.pk}/change/",
                          {"project": a.pk, "user": world["labeler"].pk, "role": Role.ENGINEER})  # fmt: skip
    assert response.status_code == 302
    world["labeler"].refresh_from_db()
    assert world["labeler"].is_staff and world["labeler"].groups.filter(name="engineer").exists()


# --- 4. Staff status and the ladder's groups ----------------------------------------------------


def test_a_user_whose_last_staff_role_ends_is_no_longer_staff(world, make_user):
    engineer = world["engineer"]
    membership = Membership.objects.get(user=engineer, project=world["a"])
    admin = as_user(world["admin"])
    assert admin.post(f"/admin/annotation/membership/{membership.pk}/change/",
                      {"project": world["a"].pk, "user": engineer.pk,
                       "role": Role.LABELER}).status_code == 302  # fmt: skip
    engineer.refresh_from_db()
    assert not engineer.is_staff
    assert as_user(engineer).get("/admin/").status_code == 302  # sent to the login page
    root = make_user("root", is_staff=True, is_superuser=True)
    services.membership_set(project=world["a"], user=root, role=Role.LABELER)
    root.refresh_from_db()
    assert root.is_staff


def test_each_role_group_holds_the_permissions_of_the_roles_below_it():
    from django.contrib.auth.models import Group

    def perms(role):
        return set(Group.objects.get(name=role).permissions.values_list("codename", flat=True))

    assert perms(Role.CURATOR) <= perms(Role.ENGINEER) <= perms(Role.ADMIN)
    assert "change_annotation" in perms(Role.ENGINEER)


# --- 5. Actions follow the role in each selected row's project -----------------------------------


def test_engineer_actions_are_refused_to_a_curator_even_one_who_trains_elsewhere(world):
    """A curator of A who is an engineer of B is offered "cancel" and cancels B's selected run,
    but A's, selected with it, is left alone; a plain curator is not offered it, while "mark as
    gold" stays theirs."""
    services.membership_set(project=world["b"], user=world["curator"], role=Role.ENGINEER)
    a_run = TrainingRun.objects.create(project=world["a"], stage="sft", status="running",
                                       fingerprint="a-run")  # fmt: skip
    a_model = ModelArtifact.objects.create(project=world["a"], name="a-model", stage="sft",
                                           path="/m/a")  # fmt: skip
    b_run = TrainingRun.objects.create(project=world["b"], stage="sft", status="running",
                                       fingerprint="b-run")  # fmt: skip
    curator = as_user(world["curator"])
    action(curator, "training/trainingrun", "cancel_runs", [a_run, b_run])
    assert not TrainingRun.objects.get(pk=a_run.pk).cancel_requested
    assert TrainingRun.objects.get(pk=b_run.pk).cancel_requested
    refused = action(curator, "training/modelartifact", "train_from", [a_model])
    assert "launch" not in refused.get("Location", "")
    services.membership_remove(membership=Membership.objects.get(user=world["curator"],
                                                                 project=world["b"]))  # fmt: skip
    assert "cancel_runs" not in page(curator, "/admin/training/trainingrun/")
    assert "mark_gold" in page(curator, "/admin/annotation/task/")

    engineer = as_user(world["engineer"])
    action(engineer, "training/trainingrun", "cancel_runs", [a_run])
    assert TrainingRun.objects.get(pk=a_run.pk).cancel_requested


# --- 6. A project made through the API gives no say over the others -----------------------------


def test_a_curator_who_creates_a_project_cannot_change_the_memberships_of_their_other(world):
    curator, a = world["curator"], world["a"]
    client = as_user(curator)
    made = client.post("/api/v1/projects/", {"name": "Gamma", "slug": "gamma"},
                       content_type="application/json")  # fmt: skip
    assert made.status_code == 201, made.content
    gamma = Project.objects.get(slug="gamma")
    assert gamma.role_of(curator) == Role.ADMIN
    own = Membership.objects.get(user=curator, project=a)
    response = client.post(f"/admin/annotation/membership/{own.pk}/change/",
                           {"project": a.pk, "user": curator.pk, "role": Role.ADMIN})  # fmt: skip
    assert response.status_code == 403
    added = client.post("/admin/annotation/membership/add/",
                        {"project": a.pk, "user": curator.pk, "role": Role.ADMIN})  # fmt: skip
    assert added.status_code == 200 and "project" in added.context["adminform"].form.errors
    inline = {"name": a.name, "slug": a.slug, "k_responses": 4, "overlap": 1,
              "lease_seconds": 900, "task_kinds": "[]",
              "memberships-TOTAL_FORMS": 1, "memberships-INITIAL_FORMS": 1,
              "memberships-0-id": own.pk, "memberships-0-project": a.pk,
              "memberships-0-user": curator.pk, "memberships-0-role": Role.ADMIN,
              "guidelines-TOTAL_FORMS": 0, "guidelines-INITIAL_FORMS": 0}  # fmt: skip
    assert client.post(f"/admin/annotation/project/{a.pk}/change/", inline).status_code == 403
    assert Membership.objects.get(pk=own.pk).role == Role.CURATOR
    assert list(Membership.objects.filter(user=curator).order_by("project__slug")
                .values_list("project__slug", "role")) == [("alpha", "curator"),
                                                           ("gamma", "admin")]  # fmt: skip
