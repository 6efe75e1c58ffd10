"""A battle set's own round (training.arena): numbered like the project's other rounds, so a
labeler who ranked a prompt may judge its battles and the next labeling round follows it; and a
set whose create-battles message is lost, or whose generation job was lost, is settled by the
workers' sweep instead of staying "running" for ever."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from runs_testutils import base_artifact

from annotation import leasing, services
from annotation.models import Role, Source, Task, TaskKind
from core.jobs import jobs_sweep
from training import arena, rounds
from training.models import ArenaBattleSet, GenerationJob, Round


@pytest.fixture
def world(make_user, project_factory):
    curator = make_user("curator")
    labeler = make_user("labeler")
    # One ranked prompt, of labeling round 1.
    project = project_factory(
        "alpha", prompts=1, k=2, members=[(curator, Role.CURATOR), (labeler, Role.LABELER)]
    )
    ranked = project.tasks.get()
    assignment = leasing.next_task_for(project=project, labeler=labeler)
    services.annotation_submit(
        task=ranked, labeler=labeler, payload={"ranking": [[i] for i in assignment.shown_order]}
    )
    models = [base_artifact(f"/models/{n}", name=n, project=project) for n in ("old", "new")]
    return {"project": project, "curator": curator, "labeler": labeler, "models": models,
            "prompt": ranked.prompt}  # fmt: skip


def generated(battle_set: ArenaBattleSet) -> None:
    """What the generation jobs store for a set: one answer per model and prompt, then done."""
    for job in battle_set.generation_jobs.all():
        for prompt in battle_set.prompts.all():
            services.response_create(
                prompt=prompt, text=f"{job.artifact.name} says {prompt.pk}", origin=Source.MODEL,
                model_artifact=job.artifact,
                generation={"job": job.pk, "battle_set": battle_set.pk},
            )  # fmt: skip
    battle_set.generation_jobs.update(status=GenerationJob.Status.SUCCEEDED)


def test_a_battle_set_judges_in_a_round_of_its_own(world):
    project = world["project"]
    battle_set = arena.battle_set_create(
        project=project, artifacts=world["models"], prompts=[world["prompt"]],
        user=world["curator"],
    )  # fmt: skip
    own = battle_set.round
    assert own.kind == Round.Kind.ARENA and own.number == 2  # after the ranking's round 1
    assert own.status == Round.Status.DONE and own.project == project
    assert set(own.generators.all()) == set(world["models"])
    assert {job.round for job in battle_set.generation_jobs.all()} == {2}
    assert set(own.generation_jobs.all()) == set(battle_set.generation_jobs.all())
    generated(battle_set)
    assert arena.battles_create(battle_set_id=battle_set.pk) == "created"
    battle = Task.objects.get(kind=TaskKind.ARENA)
    assert battle.round == own.number and Round.objects.get(pk=own.pk).counts["battles"] == 1

    # The labeler ranked this prompt in round 1, and may still judge its battle.
    lease = leasing.next_task_for(project=project, labeler=world["labeler"])
    assert lease is not None and lease.task == battle
    # The next labeling round follows the arena's (not a round 101 after a magic 100).
    assert rounds.round_next_number(project) == 3
    # A second set takes the round after.
    again = arena.battle_set_create(project=project, artifacts=world["models"],
                                    prompts=[world["prompt"]], seed=1)  # fmt: skip
    assert again.round.number == 3


def test_a_set_whose_message_was_lost_is_settled_by_the_sweep(world):
    project = world["project"]
    battle_set = arena.battle_set_create(
        project=project, artifacts=world["models"], prompts=[world["prompt"]]
    )
    generated(battle_set)  # the jobs finished, and the create-battles message never came
    assert battle_set.status == ArenaBattleSet.Status.RUNNING
    jobs_sweep()
    battle_set.refresh_from_db()
    assert battle_set.status == ArenaBattleSet.Status.DONE and battle_set.battles_created == 1
    assert Task.objects.filter(kind=TaskKind.ARENA, round=battle_set.round.number).count() == 1
    jobs_sweep()  # settled once: nothing more
    assert Task.objects.filter(kind=TaskKind.ARENA).count() == 1


def test_a_set_whose_generation_was_lost_fails_naming_it_and_a_waiting_one_waits(world):
    project = world["project"]
    lost = arena.battle_set_create(
        project=project, artifacts=world["models"], prompts=[world["prompt"]]
    )
    first, second = lost.generation_jobs.order_by("pk")
    GenerationJob.objects.filter(pk=first.pk).update(status=GenerationJob.Status.SUCCEEDED)
    long_ago = timezone.now() - timedelta(hours=2)
    GenerationJob.objects.filter(pk=second.pk).update(
        status=GenerationJob.Status.RUNNING, worker="gpu-1 pid 7", heartbeat_at=long_ago
    )
    waiting = arena.battle_set_create(
        project=project, artifacts=world["models"], prompts=[world["prompt"]], seed=5
    )
    assert jobs_sweep() == 1  # the lost job is reaped, then its set settled
    lost.refresh_from_db()
    assert lost.status == ArenaBattleSet.Status.FAILED
    assert f"generation #{second.pk}" in lost.error and "Worker lost" in lost.error
    waiting.refresh_from_db()
    assert waiting.status == ArenaBattleSet.Status.RUNNING  # its jobs are still queued
    assert not Task.objects.filter(kind=TaskKind.ARENA).exists()


def test_a_set_whose_round_was_deleted_fails_saying_so(world):
    battle_set = arena.battle_set_create(
        project=world["project"], artifacts=world["models"], prompts=[world["prompt"]]
    )
    generated(battle_set)
    battle_set.round.delete()  # an admin deleted the round: the set stays, without one
    assert arena.battles_create(battle_set_id=battle_set.pk) == "failed"
    battle_set.refresh_from_db()
    assert battle_set.error == "its round was deleted before its battles were made."
    assert not Task.objects.filter(kind=TaskKind.ARENA).exists()
