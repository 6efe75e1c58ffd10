"""Arena battles from battle set to leaderboard and promotion (training/arena.py,
training/leaderboard.py): blind to labelers, scoped to the project, counted in quality figures
and, when a snapshot asks, in preference data."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone
from runs_testutils import base_artifact

from annotation import quality, services
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import Annotation, Assignment, Role, Source, Task, TaskKind
from training import arena, generation
from training.forms import LaunchForm
from training.leaderboard import battles_of, leaderboard, promotion_gate
from training.models import ArenaBattleSet, GenerationJob, ModelArtifact

SECRET = ("Zephyr-parent-7731", "Quokka-child-4419")
ARENA_ROUND = 2  # the round a battle set would take: the project's tasks are of round 1


@pytest.fixture
def world(make_user, project_factory):
    owner = make_user("owner", is_staff=True)
    curator = make_user("curator")
    labeler = make_user("labeler")
    second = make_user("second")
    outsider = make_user("outsider", is_staff=True)
    project = project_factory(
        "alpha",
        prompts=0,
        members=[(owner, Role.ENGINEER), (curator, Role.CURATOR), (labeler, Role.LABELER),
                 (second, Role.LABELER)],
    )  # fmt: skip
    other = project_factory("beta", prompts=0, members=[(outsider, Role.ENGINEER)])
    parent = base_artifact("/models/secret-folder-5150", name=SECRET[0], project=project)
    child = base_artifact("/models/secret-folder-5150", name=SECRET[1], project=project)
    child.parent = parent
    child.save()
    prompts, _ = services.prompts_create(
        project=project,
        items=[{"text": f"Question {i}: tell me", "tags": ["math" if i % 2 else "chat"]}
               for i in range(3)],
    )  # fmt: skip
    return {"owner": owner, "curator": curator, "labeler": labeler, "second": second,
            "outsider": outsider, "project": project, "other": other, "parent": parent,
            "child": child, "prompts": prompts}  # fmt: skip


def battle(world, prompt, required=1) -> Task:
    """An arena task between the child's and the parent's answers, as battles_create makes."""
    answers = [
        services.response_create(
            prompt=prompt, text=f"answer of {a.pk}", origin=Source.MODEL, model_artifact=a
        )
        for a in (world["parent"], world["child"])
    ]
    return services.task_create(
        project=world["project"], kind=TaskKind.ARENA, prompt=prompt, candidates=answers,
        required=required, round=ARENA_ROUND,
    )  # fmt: skip


def vote(task, labeler, winner_artifact=None, both_bad=False):
    Assignment.objects.get_or_create(
        task=task, labeler=labeler,
        defaults={"expires_at": timezone.now() + timedelta(minutes=10),
                  "shown_order": task.candidate_ids()},
    )  # fmt: skip
    winner = None
    if winner_artifact is not None:
        winner = task.candidates.get(model_artifact=winner_artifact).pk
    payload = {"winner": winner, "both_bad": both_bad}
    annotation, _ = services.annotation_submit(task=task, labeler=labeler, payload=payload)
    return annotation


def test_it_turns_a_battle_set_into_blind_battles_through_generation_jobs(world, data_dir, tiny):
    project, prompts = world["project"], world["prompts"]
    ModelArtifact.objects.filter(project=project).update(path=tiny["policy"])
    battle_set = arena.battle_set_create(
        project=project, artifacts=[world["parent"], world["child"]], prompts=prompts,
        max_new_tokens=4, seed=3, required=2, user=world["curator"],
    )  # fmt: skip
    jobs = list(battle_set.generation_jobs.order_by("pk"))
    assert [job.artifact for job in jobs] == [world["parent"], world["child"]]
    assert all(job.k == 1 and job.seed == 3 for job in jobs)
    assert arena.battles_create(battle_set_id=battle_set.pk) == "waiting"
    for job in jobs:
        assert generation.generation_execute(job_id=job.pk) == "succeeded"
    assert not Task.objects.filter(kind=TaskKind.RANK).exists()  # no ranking task from them

    assert arena.battles_create(battle_set_id=battle_set.pk) == "created"
    assert arena.battles_create(battle_set_id=battle_set.pk) == "skipped"  # a second message
    battle_set.refresh_from_db()
    assert battle_set.status == ArenaBattleSet.Status.DONE and battle_set.battles_created == 3
    tasks = Task.objects.filter(kind=TaskKind.ARENA)
    assert tasks.count() == 3 and {t.required for t in tasks} == {2}
    for task in tasks:
        assert {r.model_artifact for r in task.candidates.all()} == {
            world["parent"],
            world["child"],
        }


def test_it_fails_a_battle_set_whose_generation_failed(world):
    battle_set = arena.battle_set_create(
        project=world["project"], artifacts=[world["parent"], world["child"]],
        prompts=world["prompts"][:1],
    )  # fmt: skip
    battle_set.generation_jobs.update(status=GenerationJob.Status.FAILED, error="out of memory")
    assert arena.battles_create(battle_set_id=battle_set.pk) == "failed"
    battle_set.refresh_from_db()
    assert "out of memory" in battle_set.error and not Task.objects.exists()


def test_it_refuses_a_battle_set_that_is_not_the_projects(world):
    project = world["project"]
    stranger = base_artifact("/nowhere", name="theirs", project=world["other"])
    with pytest.raises(ValidationError) as error:
        arena.battle_set_create(project=project, artifacts=[world["child"]], prompts=[])
    assert {"artifacts", "prompts"} <= set(error.value.message_dict)
    with pytest.raises(ValidationError) as error:
        arena.battle_set_create(
            project=project, artifacts=[world["child"], stranger], prompts=world["prompts"]
        )
    assert "every model must belong to the project" in str(error.value)
    with pytest.raises(PermissionDenied):
        arena.battle_set_create(
            project=project, artifacts=[world["parent"], world["child"]],
            prompts=world["prompts"], user=world["labeler"],
        )  # fmt: skip
    assert not ArenaBattleSet.objects.exists()


def test_a_labeler_votes_without_ever_learning_which_model_wrote_what(client, world):
    task = battle(world, world["prompts"][0])
    client.force_login(world["labeler"])
    page = client.post("/projects/alpha/next/").content.decode()
    assignment = Assignment.objects.get(labeler=world["labeler"])
    assert 'data-kind="arena"' in page and "Both are bad" in page
    api = json.dumps(client.get(f"/api/v1/tasks/{task.pk}/").json())
    lease = json.dumps(client.get(f"/api/v1/projects/{world['project'].pk}/").json())
    for secret in (*SECRET, str(world["child"].path)):
        assert secret not in page and secret not in api and secret not in lease
    assert "model_artifact" not in api and "generation" not in api

    response = client.post(f"/tasks/{task.pk}/submit/", {"choice": "b", "idempotency_key": "k1"})
    assert response.status_code == 200
    annotation = Annotation.objects.get(task=task)
    assert annotation.payload["winner"] == assignment.shown_order[1]  # B: the second shown
    assert len(battles_of(world["project"])) == 1


def test_it_takes_a_tie_and_both_bad_and_refuses_a_winner_that_is_both_bad(world):
    task = battle(world, world["prompts"][0], required=2)
    assert vote(task, world["labeler"], both_bad=True).payload == {
        "winner": None, "loser": None, "tie": True, "both_bad": True}  # fmt: skip
    with pytest.raises(ValidationError) as error:
        vote(task, world["second"], winner_artifact=world["child"], both_bad=True)
    assert "payload.both_bad" in error.value.message_dict
    [(a, b, result)] = battles_of(world["project"])
    assert result == 0.5  # both bad is a tie on the leaderboard


def test_the_leaderboard_scores_and_filters_by_tag(world):
    math, chat = world["prompts"][1], world["prompts"][0]
    for _ in range(3):
        vote(battle(world, math), world["labeler"], winner_artifact=world["child"])
    vote(battle(world, chat), world["labeler"], winner_artifact=world["parent"])
    board = leaderboard(world["project"])
    assert board["battles"] == 4
    top, second = board["rows"]
    assert top["name"] == SECRET[1] and (top["wins"], top["losses"]) == (3, 1)
    assert top["lower"] <= top["score"] <= top["upper"] and top["lineage"] == list(SECRET)
    assert board["matrix"][0]["against"][1] == {
        "artifact": second["artifact"], "battles": 4, "win_rate": 0.75}  # fmt: skip
    assert leaderboard(world["project"], "chat")["rows"][0]["name"] == SECRET[0]


def test_only_the_projects_curators_see_its_leaderboard(client, world):
    vote(battle(world, world["prompts"][0]), world["labeler"], winner_artifact=world["child"])
    project = world["project"]
    client.force_login(world["curator"])
    page = client.get("/training/arena/alpha/?tag=")
    assert page.status_code == 200 and SECRET[1] in page.content.decode()
    api = client.get(f"/api/v1/leaderboard/{project.pk}/")
    assert api.status_code == 200 and api.json()["rows"][0]["name"] == SECRET[1]
    assert client.get(f"/api/v1/leaderboard/{project.pk}/?tag=math").json()["battles"] == 0
    assert client.get(f"/api/v1/leaderboard/{project.pk}/?sort=x").status_code == 400

    client.force_login(world["labeler"])
    assert client.get("/training/arena/alpha/").status_code == 403
    assert client.get(f"/api/v1/leaderboard/{project.pk}/").status_code == 403
    assert client.get("/training/arena/alpha/new/").status_code == 403

    client.force_login(world["outsider"])
    for url in ("/training/arena/alpha/", "/training/arena/alpha/new/",
                f"/api/v1/leaderboard/{project.pk}/",
                f"/training/artifacts/{world['child'].pk}/arena/"):  # fmt: skip
        response = client.get(url)
        assert response.status_code == 404 and SECRET[1] not in response.content.decode()


def test_a_curator_starts_a_battle_set_from_the_page(client, world):
    client.force_login(world["curator"])
    ids = f"{world['parent'].pk},{world['child'].pk}"
    form = client.get(f"/training/arena/alpha/new/?artifacts={ids}").content.decode()
    assert form.count("checked") == 2
    response = client.post("/training/arena/alpha/new/", {
        "artifacts": [world["parent"].pk, world["child"].pk], "tag": "math", "limit": 5,
        "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8, "seed": 1, "required": 1})  # fmt: skip
    assert response.status_code == 302
    battle_set = ArenaBattleSet.objects.get()
    assert list(battle_set.prompts.all()) == [world["prompts"][1]]  # the one tagged math
    assert battle_set.generation_jobs.count() == 2


def test_a_policy_that_beats_its_parent_by_the_margin_is_promoted(client, world):
    project, child, parent = world["project"], world["child"], world["parent"]
    for i in range(24):
        winner = child if i % 6 else parent  # 20 wins of 24
        vote(battle(world, world["prompts"][i % 3]), world["labeler"], winner_artifact=winner)
    gate = promotion_gate(child)
    assert gate["passed"] and gate["battles"] == gate["head_to_head"] == 24
    assert gate["lead_lower"] <= gate["lead"] <= gate["lead_upper"] and gate["lead_lower"] > 0

    services.project_update(project=project, arena_margin=gate["lead_lower"] + 1)
    with pytest.raises(ValidationError, match="does not reach"):
        arena.artifact_promote(artifact=child, user=world["owner"])
    services.project_update(project=project, arena_margin=0)
    with pytest.raises(PermissionDenied):
        arena.artifact_promote(artifact=child, user=world["curator"])

    client.force_login(world["owner"])
    page = client.get(f"/training/artifacts/{child.pk}/arena/").content.decode()
    assert 'id="promote"' in page and "24 (24 against the parent)" in page
    client.post(f"/training/artifacts/{child.pk}/promote/")
    child.refresh_from_db()
    assert child.promoted_at is not None
    # The promoted policy is the parent the next run starts from.
    assert LaunchForm(user=world["owner"])["parent"].initial == child.pk
    assert not promotion_gate(parent)["passed"]  # no parent to beat


def test_battles_count_in_quality_and_become_preference_data_only_when_asked(world, data_dir):
    task = battle(world, world["prompts"][0], required=2)
    for labeler in (world["labeler"], world["second"]):
        vote(task, labeler, winner_artifact=world["child"])
    figures = quality.agreement_report(world["project"])["labelers"][world["labeler"].pk]
    assert figures["pairwise_n"] == 1 and figures["pairwise_agreement"] == 1.0

    project = world["project"]
    with pytest.raises(ValidationError, match="no training rows"):  # battles rate models
        snapshot_build(snapshot=snapshot_request(
            project=project, kind="preference", filters={"test_size": 0}, enqueue=False))  # fmt: skip
    with_arena = snapshot_build(snapshot=snapshot_request(
        project=project, kind="preference", filters={"test_size": 0, "arena": True},
        enqueue=False))  # fmt: skip
    assert with_arena.row_count == 1
