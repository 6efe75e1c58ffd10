"""Arena battle sets: blind side-by-side battles between a project's models, judged by its
labelers (Chatbot Arena's design, kept private to the project).

A battle set names the models, the prompts and the decoding settings. Each model answers each
prompt once through the generation-job path (`training.generation`, one job per model, k=1);
when the last job has stored its responses, `battles_create` gives every pair of models one
arena task per prompt, in the set's own labeling round (an arena `Round`, numbered like the
project's other rounds). Which response a labeler sees first is shuffled per labeler by the
lease (`annotation.leasing`), and nothing a labeler can read names a model: the task page and
the API show the responses' text only. The battles' outcomes feed the leaderboard
(`training.leaderboard`).

A set whose create-battles message is lost (a broker restart, a worker killed between the
last job's commit and its send), or whose job was reaped, would wait for ever: every worker's
heartbeat settles such sets (`battle_sets_settle`, registered with `core.jobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from annotation import services as annotation_services
from annotation.access import role_require
from annotation.models import Project, Prompt, Response, Role, TaskKind
from training import generation
from training.artifacts import generation_refusal
from training.models import ArenaBattleSet, GenerationJob, ModelArtifact, Round


@transaction.atomic
def battle_set_create(
    *,
    project: Project,
    artifacts: Sequence[ModelArtifact],
    prompts: Sequence[Prompt],
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_new_tokens: int = 64,
    seed: int = 0,
    required: int = 1,
    name: str = "",
    user=None,
) -> ArenaBattleSet:
    """Queue the generation of a battle set: one generation job per model (all with the same
    prompts, decoding settings and seed). A curator or above of the project, with `user`."""
    if user is not None:
        role_require(user, project, Role.CURATOR)
    artifacts = list(dict.fromkeys(artifacts))
    errors = {}
    if len(artifacts) < 2:
        errors["artifacts"] = "choose at least two models to battle."
    if any(a.project_id != project.pk for a in artifacts):
        errors["artifacts"] = "every model must belong to the project."
    elif scorers := [a for a in artifacts if not a.generates]:
        errors["artifacts"] = generation_refusal(scorers[0], "battle")
    if not prompts:
        errors["prompts"] = "choose at least one prompt."
    elif any(p.project_id != project.pk for p in prompts):
        errors["prompts"] = "every prompt must belong to the project."
    if not 1 <= required <= 50:
        errors["required"] = "between 1 and 50 labelers per battle."
    if errors:
        raise ValidationError(errors)
    created_by = user if getattr(user, "is_authenticated", False) else None
    arena_round = arena_round_create(
        project=project, artifacts=artifacts, prompts=prompts, temperature=temperature,
        top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, created_by=created_by,
    )  # fmt: skip
    battle_set = ArenaBattleSet.objects.create(
        project=project, name=name, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, seed=seed, required=required, round=arena_round,
        created_by=created_by,
    )  # fmt: skip
    battle_set.artifacts.set(artifacts)
    battle_set.prompts.set(prompts)
    arena_round.selection["battle_set"] = battle_set.pk
    arena_round.save(update_fields=["selection"])
    for artifact in artifacts:
        job = generation.generation_job_create(
            project=project, artifact=artifact, prompts=prompts, k=1, temperature=temperature,
            top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, round=arena_round.number,
            battle_set=battle_set,
        )  # fmt: skip
        arena_round.generation_jobs.add(job)
    return battle_set


def arena_round_create(
    *,
    project: Project,
    artifacts: Sequence[ModelArtifact],
    prompts: Sequence[Prompt],
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    created_by=None,
) -> Round:
    """The labeling round of a battle set's tasks: the project's next round number (taken under
    the project's lock, as `training.rounds` numbers rounds), of kind arena. It is made done:
    there is nothing for the round job to run, the set generates and creates its battles."""
    from training.rounds import round_next_number

    Project.objects.select_for_update().filter(pk=project.pk).first()  # numbers one at a time
    newest = max(artifacts, key=lambda a: a.pk)
    now = timezone.now()
    arena_round = Round.objects.create(
        project=project, number=round_next_number(project), policy=newest, kind=Round.Kind.ARENA,
        budget=len(prompts), k=2, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, seed=seed, retries=0, status=Round.Status.DONE,
        started_at=now, finished_at=now, created_by=created_by,
        selection={"criterion": "the battle set's prompts, chosen by its author",
                   "prompts": sorted(p.pk for p in prompts)},
    )  # fmt: skip
    arena_round.generators.set(artifacts)
    return arena_round


def battles_create(*, battle_set_id: int) -> str:
    """Once every generation job of the set has succeeded: one arena task per prompt and pair
    of models. Idempotent (the set's status, read under a lock, says whether it was done): a
    message sent twice creates the battles once. A failed job fails the set, naming it."""
    with transaction.atomic():
        battle_set = ArenaBattleSet.objects.select_for_update().get(pk=battle_set_id)
        if battle_set.status != ArenaBattleSet.Status.RUNNING:
            return "skipped"
        jobs = list(battle_set.generation_jobs.all())
        failed = [job for job in jobs if job.status == GenerationJob.Status.FAILED]
        if battle_set.round_id is None:  # its round was deleted: no round to judge in
            battle_set.status = ArenaBattleSet.Status.FAILED
            battle_set.error = "its round was deleted before its battles were made."
            battle_set.save(update_fields=["status", "error"])
            return "failed"
        if failed:
            battle_set.status = ArenaBattleSet.Status.FAILED
            battle_set.error = "; ".join(f"generation #{job.pk}: {job.error}" for job in failed)
            battle_set.save(update_fields=["status", "error"])
            return "failed"
        if any(job.status != GenerationJob.Status.SUCCEEDED for job in jobs):
            return "waiting"
        job_ids = [job.pk for job in jobs]
        answers: dict[int, dict[int, Response]] = {}  # prompt -> artifact -> its response
        for response in Response.objects.filter(
            prompt__in=battle_set.prompts.all(), model_artifact__in=battle_set.artifacts.all()
        ).order_by("pk"):
            if response.generation.get("job") in job_ids:
                answers.setdefault(response.prompt_id, {})[response.model_artifact_id] = response
        prompts = {p.pk: p for p in battle_set.prompts.all()}
        items = []
        for prompt_id, by_artifact in sorted(answers.items()):
            for a, b in combinations(sorted(by_artifact), 2):
                items.append((prompts[prompt_id], [by_artifact[a], by_artifact[b]]))
        annotation_services.tasks_bulk_create(
            project=battle_set.project, kind=TaskKind.ARENA, items=items,
            required=battle_set.required, round=battle_set.round.number,
        )  # fmt: skip
        battle_set.status = ArenaBattleSet.Status.DONE
        battle_set.battles_created = len(items)
        battle_set.save(update_fields=["status", "battles_created"])
        Round.objects.filter(pk=battle_set.round_id).update(
            counts={"prompts": len(answers), "tasks": len(items), "battles": len(items)}
        )
    return "created"


def battle_sets_settle() -> dict[str, int]:
    """Finish every battle set still running whose generation jobs have all finished (their
    create-battles message lost, or a job reaped or failed without sending one): its battles
    are created, or it fails naming the failed job. Outcomes counted by name. Cheap when none
    is waiting: one query."""
    unfinished = GenerationJob.objects.filter(
        battle_set=OuterRef("pk"), status__in=GenerationJob.unfinished()
    )
    waiting = ArenaBattleSet.objects.filter(status=ArenaBattleSet.Status.RUNNING).exclude(
        Exists(unfinished)
    )
    outcomes: dict[str, int] = {}
    for pk in waiting.order_by("pk").values_list("pk", flat=True):
        outcome = battles_create(battle_set_id=pk)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


@transaction.atomic
def artifact_promote(*, artifact: ModelArtifact, user=None) -> dict:
    """Mark a policy promoted when it passes the promotion gate (`training.leaderboard`), an
    engineer of its project asking; ValidationError saying why not otherwise. Answers the gate."""
    from training.leaderboard import promotion_gate

    if user is not None:
        role_require(user, artifact.project, Role.ENGINEER)
    gate = promotion_gate(artifact)
    if not gate["passed"]:
        raise ValidationError({"promotion": gate["reason"]})
    if artifact.promoted_at is None:
        ModelArtifact.objects.filter(pk=artifact.pk).update(promoted_at=timezone.now())
        artifact.refresh_from_db(fields=["promoted_at"])
    return {**gate, "promoted": True}


def promoted_policy(artifacts: QuerySet[ModelArtifact]) -> ModelArtifact | None:
    """The newest promoted policy of `artifacts` (a project's, or those a user may train from):
    the default parent of the next run."""
    return artifacts.filter(promoted_at__isnull=False).order_by("-promoted_at", "-pk").first()
