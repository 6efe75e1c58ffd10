"""Rounds in process: selection of unjudged prompts (never documents), K distinct candidates
from several models, mixed-model tasks, uncertainty sampling, numbers assigned, labels and the
snapshot cut from the round; and what a labeler can read never names the model."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from rounds_testutils import HIDDEN, rank_all, round_world

from annotation.exports import snapshot_build
from annotation.models import Response, Task
from training import rounds
from training.models import GenerationJob, ModelArtifact, Round, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(tiny, make_user, data_dir):
    return round_world(tiny, make_user)


def run(job: Round) -> Round:
    assert rounds.round_execute(round_id=job.pk, worker="here") == "succeeded", Round.objects.get(
        pk=job.pk
    ).error
    return Round.objects.get(pk=job.pk)


def test_a_round_asks_unjudged_prompts_with_distinct_mixed_model_candidates(world):
    job = rounds.round_start(
        policy=world["policy"], generators=[world["sft"]], budget=3, k=4,
        max_new_tokens=8, user=world["engineer"],
    )  # fmt: skip
    assert job.number == 2, "assigned: one more than the highest round of the project's tasks"
    job = run(job)

    asked = job.selection["prompts"]
    assert asked == [p.pk for p in world["prompts"][1:4]], "unjudged first, oldest first"
    assert world["judged"].pk not in job.selection["pool"]
    assert world["document"].pk not in job.selection["pool"]
    tasks = list(Task.objects.filter(project=world["project"], round=job.number))
    assert len(tasks) == 3 == job.counts["tasks"]
    for task in tasks:
        candidates = task.candidate_list()
        texts = [" ".join(r.text.split()) for r in candidates]
        assert len(set(texts)) == len(texts), "no two candidates of a task are the same text"
        models = {r.model_artifact_id for r in candidates}
        assert models == {world["policy"].pk, world["sft"].pk}, "a task mixes the two models"
        for response in candidates:
            assert {"seed", "temperature", "top_p", "round", "job"} <= set(response.generation)
    assert job.counts["shortfall"] + job.counts["responses"] == 3 * 4
    # The round links a generation job per model, each with its prompts and seed.
    assert sorted(job.generation_jobs.values_list("artifact_id", flat=True)) == sorted(
        [world["policy"].pk, world["sft"].pk]
    )
    assert all(g.round == job.number for g in GenerationJob.objects.all())

    # Labels, then a snapshot cut from the round: its pairs are all of distinct texts.
    assert rank_all(world["project"], world["labeler"], job.number) == 3
    snapshot = snapshot_build(
        snapshot=rounds.round_snapshot_request(round=job, filters={"test_size": 0}, enqueue=False)
    )
    assert list(job.snapshots.all()) == [snapshot] and snapshot.row_count > 0

    # The next round never re-asks them: only the two prompts left are asked.
    second = run(rounds.round_start(policy=world["policy"], budget=5, max_new_tokens=8))
    assert second.number == 3
    assert set(second.selection["prompts"]) <= {p.pk for p in world["prompts"][4:]}
    assert second.selection["already_asked"] == 4
    assert second.counts["budget_unmet"] >= 3


def test_identical_samples_are_dropped_and_the_shortfall_counted(world):
    # Nearly greedy: one model gives the same answer K times.
    job = run(
        rounds.round_start(
            policy=world["policy"], budget=2, k=4, temperature=0.001, max_new_tokens=8, retries=1
        )  # fmt: skip
    )

    assert job.counts["duplicates"] > 0
    assert job.counts["shortfall"] > 0
    assert job.counts["tasks"] == 0, "a prompt with one distinct response is not asked"
    assert job.counts["budget_unmet"] == 2


def test_a_round_samples_its_prompts_in_batches_as_generation_jobs_do(world, settings):
    settings.TRAINING_GENERATION_BATCH_SIZE = 2
    job = run(rounds.round_start(policy=world["policy"], budget=3, k=2, max_new_tokens=8))

    responses = Response.objects.filter(generation__round=job.number)
    assert responses.exists()
    assert {r.generation["batch_size"] for r in responses} == {2}


def test_active_selection_asks_where_the_ensemble_is_least_sure(world):
    job = run(
        rounds.round_start(
            policy=world["policy"],
            budget=2,
            k=2,
            max_new_tokens=8,
            active=True,
            reward_models=world["reward_models"],
        )  # fmt: skip
    )

    scores = job.selection["scores"]
    assert set(scores) == {str(pk) for pk in job.selection["pool"]}
    assert len(job.selection["pool"]) == 5  # every unjudged prompt (up to 4 × the budget)
    ranked = sorted(scores, key=lambda pk: (-scores[pk][0], scores[pk][1], int(pk)))
    assert job.selection["prompts"] == [int(pk) for pk in ranked[:2]]
    assert "Christiano" in job.selection["criterion"]


def test_a_new_seed_per_round_unless_one_is_given(world):
    a = rounds.round_start(policy=world["policy"], budget=1)
    again = rounds.round_start(policy=world["policy"], budget=1)
    assert again.pk == a.pk and again.reused, "a double click is one round"
    run(a)
    b = rounds.round_start(policy=world["policy"], budget=1, seed=3)
    c = rounds.round_start(policy=world["policy"], budget=1)
    assert a.seed != c.seed and b.seed == 3
    assert [a.number, b.number, c.number] == [2, 3, 4]


def test_bad_requests_name_the_field(world, make_user):
    with pytest.raises(ValidationError) as error:
        rounds.round_start(policy=world["policy"], budget=0, active=True)
    assert {"budget", "reward_models"} <= set(error.value.message_dict)
    outsider = make_user("outsider", is_staff=True)
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        rounds.round_start(policy=world["policy"], budget=1, user=outsider)
    assert not Round.objects.exists()


def test_the_labeler_never_sees_which_model_wrote_what(world, client):
    run(rounds.round_start(policy=world["policy"], generators=[world["sft"]], budget=1,
                           max_new_tokens=8))  # fmt: skip
    assert Response.objects.filter(model_artifact__name__startswith=HIDDEN).exists()
    client.force_login(world["labeler"])
    project = world["project"]

    page = client.post(f"/projects/{project.slug}/next/", follow=True)
    api = client.post(f"/api/v1/projects/{project.pk}/tasks/next/", content_type="application/json")
    assert page.status_code == 200 and api.status_code == 200, api.content
    task = client.get(f"/api/v1/tasks/{api.json()['task']['id']}/")

    assert task.status_code == 200
    assert "candidate" in page.content.decode()
    for body in (page.content.decode(), api.content.decode(), task.content.decode()):
        assert HIDDEN not in body
        assert "model_artifact" not in body and "temperature" not in body
    assert any(c["text"] for c in api.json()["task"]["candidates"])


def test_generate_candidates_takes_unjudged_prompts_never_documents(world, client):
    from django.urls import reverse

    from training import generation

    client.force_login(world["engineer"])
    url = reverse("training:generate", args=[world["policy"].pk])
    choices = {"project": world["project"].pk, "tag": "", "limit": 7, "k": 2,
               "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 4, "round": 2}  # fmt: skip

    assert client.post(url, choices).status_code == 302

    job = GenerationJob.objects.get()
    chosen = list(job.prompts.order_by("pk"))
    assert world["document"] not in chosen
    assert chosen == world["prompts"], "every prompt, the judged one too (all others are used)"
    GenerationJob.objects.update(status="failed")
    again = generation.generation_job_repeat(job=GenerationJob.objects.get())
    assert again.pk != job.pk and again.seed != job.seed, "no seed given: a fresh one per job"

    GenerationJob.objects.all().delete()
    assert client.post(url, {**choices, "limit": 2}).status_code == 302
    chosen = list(GenerationJob.objects.get().prompts.order_by("pk"))
    assert chosen == world["prompts"][1:3], "those not judged yet first"


def test_generate_candidates_defaults_to_the_round_after_the_projects_latest(
    tiny, make_user, project_factory, client
):
    """The form once offered round 2 to a project that had no round 1. Its default is one more
    than the project's latest round (1 when it has none), and a round left empty is that one."""
    from django.urls import reverse

    from annotation import services
    from annotation.models import Role

    engineer = make_user("engineer", is_staff=True)
    project = project_factory("fresh", prompts=0, members=[(engineer, Role.ENGINEER)])
    services.prompts_create(project=project, items=[{"text": "A first question:"}])
    policy = ModelArtifact.objects.create(
        name="policy", stage="sft", path=tiny["policy"], project=project
    )
    url = reverse("training:generate", args=[policy.pk])
    client.force_login(engineer)

    page = client.get(url)
    assert page.context["form"]["round"].value() == 1
    assert 'name="round" value="1"' in page.content.decode()

    prompt = project.prompts.get()
    services.task_create(project=project, kind="rank", prompt=prompt, round=3, candidates=[
        services.response_create(prompt=prompt, text=t, origin="seed") for t in "ab"
    ])  # fmt: skip
    assert client.get(url).context["form"]["round"].value() == 4

    choices = {"project": project.pk, "tag": "", "limit": 1, "k": 2, "temperature": 1.0,
               "top_p": 0.95, "max_new_tokens": 4, "round": ""}  # fmt: skip
    assert client.post(url, choices).status_code == 302
    assert GenerationJob.objects.get().round == 4


def test_start_next_round_from_the_admin_the_api_and_the_command(world, client):
    from django.core.management import call_command
    from django.urls import reverse
    from runs_testutils import admin_action

    client.force_login(world["engineer"])
    response = admin_action(client, "training_modelartifact", "start_next_round", [world["policy"]])
    url = reverse("training:round_start", args=[world["policy"].pk])
    assert response.status_code == 302 and response["Location"] == url
    assert client.get(url).status_code == 200
    refused = client.post(url, {"temperature": 1, "top_p": 0.9, "max_new_tokens": 4})
    assert "budget" in refused.context["form"].errors and not Round.objects.exists()

    started = client.post(url, {"budget": 2, "temperature": 1, "top_p": 0.9,
                                "max_new_tokens": 4, "generators": [world["sft"].pk]})  # fmt: skip
    assert started.status_code == 302, started.context["form"].errors
    by_admin = Round.objects.get()
    assert (by_admin.number, by_admin.budget, by_admin.created_by) == (2, 2, world["engineer"])
    assert set(by_admin.generators.all()) == {world["policy"], world["sft"]}

    api = client.post("/api/v1/rounds/", {"policy": world["policy"].pk, "budget": 1,
                      "max_new_tokens": 4}, content_type="application/json")  # fmt: skip
    assert api.status_code == 202, api.content
    assert api.json()["number"] == 3

    call_command("round_start", "--policy", str(world["policy"].pk), "--budget", "1",
                 "--max-new-tokens", "4", "--k", "2", "--now")  # fmt: skip
    by_command = Round.objects.get(number=4)
    assert by_command.status == "done" and by_command.counts["tasks"] == 1

    listed = client.get("/api/v1/rounds/").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert sorted(r["number"] for r in rows) == [2, 3, 4]
    assert rows[0]["progress"]["tasks"] == 1


def test_rounds_are_not_a_labelers_to_read_and_the_curate_page_shows_progress(world, client):
    from django.urls import reverse
    from rounds_testutils import rank_all

    from annotation import services

    job = run(rounds.round_start(policy=world["policy"], budget=2, k=2, max_new_tokens=8))
    rank_all(world["project"], world["labeler"], job.number)
    snapshot_build(
        snapshot=rounds.round_snapshot_request(round=job, filters={"test_size": 0}, enqueue=False)
    )
    client.force_login(world["labeler"])
    assert client.get("/api/v1/rounds/").json() in ([], {"count": 0, "next": None,
                                                          "previous": None, "results": []})  # fmt: skip
    assert client.get(f"/api/v1/rounds/{job.pk}/").status_code == 404

    curator = world["engineer"]
    services.membership_set(project=world["project"], user=curator, role="curator")
    client.force_login(curator)
    page = client.get(reverse("annotation:curate", args=[world["project"].slug]))
    html = page.content.decode()
    assert page.status_code == 200 and page.context["panels"], [t.name for t in page.templates]
    assert 'id="rounds"' in html
    progress = rounds.round_progress(job)
    assert progress["tasks_done"] == progress["tasks"] == 2
    snapshot = Round.objects.get(pk=job.pk).snapshots.get()
    assert progress["pairs_gained"] == snapshot.row_count > 0
    trained = TrainingRun.objects.create(project=world["project"], stage="reward", name="rm")
    trained.snapshots.add(snapshot)
    TrainingRun.objects.create(project=world["project"], stage="reward", name="not on it")
    row = client.get(f"/api/v1/rounds/{job.pk}/").json()
    assert (row["snapshots"], row["runs"]) == ([snapshot.pk], [trained.pk])
    assert row["generation_jobs"] == list(job.generation_jobs.values_list("pk", flat=True))
    assert f"<td>{job.number}</td>" in html and "2 / 2" in html


def test_a_compare_project_gets_compare_tasks_from_the_tagged_prompts(world):
    from annotation import services

    project = world["project"]
    project.task_kinds = ["compare"]
    project.save()
    tagged, _ = services.prompts_create(
        project=project, items=[{"text": f"Question {i}: tagged", "tags": ["math"]} for i in (7, 8)]
    )

    job = run(rounds.round_start(policy=world["policy"], generators=[world["sft"]], budget=5,
                                 max_new_tokens=8, source={"tags": ["math"]}))  # fmt: skip

    assert (job.kind, job.k) == ("compare", 2)
    assert job.selection["prompts"] == [p.pk for p in tagged]
    tasks = Task.objects.filter(project=project, round=job.number)
    assert {t.kind for t in tasks} == {"compare"} and tasks.count() == 2
    assert job.counts["budget_unmet"] == 3


def test_an_unknown_source_is_refused_by_name(world):
    with pytest.raises(ValidationError) as error:
        rounds.round_start(policy=world["policy"], budget=1, source={"batch": 999})
    assert "selection.batch" in error.value.message_dict
