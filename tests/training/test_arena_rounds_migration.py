"""training 0010_arena_rounds on existing data: battle sets of the old fixed round 100 get a
round of their own, with their jobs and battles; statuses become the job statuses."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("training", "0009_rounds"), ("annotation", "0014_playground")]
AFTER = [("training", "0010_arena_rounds")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.fixture
def latest_after():
    """Back to the latest migrations when the test ends, whatever happened: the tests after it
    share the database and need every later migration's tables and columns."""
    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_existing_battle_sets_move_to_rounds_of_their_own(latest_after):
    apps = migrate(BEFORE)
    User = apps.get_model("auth", "User")
    Project = apps.get_model("annotation", "Project")
    Prompt = apps.get_model("annotation", "Prompt")
    Response = apps.get_model("annotation", "Response")
    Task = apps.get_model("annotation", "Task")
    Artifact = apps.get_model("training", "ModelArtifact")
    Job = apps.get_model("training", "GenerationJob")
    BattleSet = apps.get_model("training", "ArenaBattleSet")
    Round = apps.get_model("training", "Round")
    user = User.objects.create(username="old")
    project = Project.objects.create(name="Old", slug="old")
    prompt = Prompt.objects.create(project=project, text="q", content_hash="h")
    a, b = (Artifact.objects.create(project=project, name=n, stage="sft", path=n) for n in "ab")
    ranked = Task.objects.create(project=project, kind="rank", prompt=prompt, round=3)
    labelled = Round.objects.create(project=project, number=3, policy=a, budget=1, seed=0,
                                    status="succeeded")  # fmt: skip
    sets = []
    for status in ("ready", "generating"):
        battle_set = BattleSet.objects.create(project=project, status=status, created_by=user)
        battle_set.artifacts.set([a, b])
        battle_set.prompts.set([prompt])
        jobs = [Job.objects.create(project=project, artifact=m, k=1, round=100,
                                   battle_set=battle_set, status="succeeded") for m in (a, b)]  # fmt: skip
        answers = [Response.objects.create(prompt=prompt, text=f"{status} {j.pk}", origin="model",
                                           model_artifact=j.artifact,
                                           generation={"job": j.pk, "battle_set": battle_set.pk})
                   for j in jobs]  # fmt: skip
        battle = Task.objects.create(project=project, kind="arena", prompt=prompt, round=100)
        battle.candidates.set(answers)
        sets.append((battle_set, jobs, battle))

    apps = migrate(AFTER)
    Round = apps.get_model("training", "Round")
    BattleSet = apps.get_model("training", "ArenaBattleSet")
    Task = apps.get_model("annotation", "Task")
    Job = apps.get_model("training", "GenerationJob")
    assert Round.objects.get(pk=labelled.pk).status == "done"
    for (old, jobs, battle), number, status in zip(sets, (4, 5), ("done", "running"), strict=True):
        battle_set = BattleSet.objects.get(pk=old.pk)
        assert battle_set.status == status
        own = battle_set.round
        assert (own.number, own.kind, own.status) == (number, "arena", "done")
        assert own.policy_id == b.pk and set(own.generators.values_list("pk", flat=True)) == {
            a.pk, b.pk}  # fmt: skip
        assert Task.objects.get(pk=battle.pk).round == number
        assert {j.round for j in Job.objects.filter(pk__in=[j.pk for j in jobs])} == {number}
        assert set(own.generation_jobs.values_list("pk", flat=True)) == {j.pk for j in jobs}
    assert Task.objects.get(pk=ranked.pk).round == 3
