"""Candidates for the next labeling round: sample K responses per prompt from a model in a
worker and create one ranking task per prompt. A job whose worker is lost is reaped by
`core.jobs.jobs_reap_stale` (its message: `GenerationJob.lost_fields`)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotation.models import Project, Prompt, Source, Task, TaskKind
from core.jobs import job_claim, job_fingerprint, job_get_or_create, job_heartbeat
from core.queue import enqueue_on_commit
from training.artifacts import engineer_require, generation_refusal
from training.execution import torch_threads_apply
from training.models import GenerationJob, ModelArtifact
from training.rounds import round_next_number

logger = logging.getLogger(__name__)
DUPLICATE_RETRIES = 2  # extra sampling passes for prompts short of K distinct responses


@transaction.atomic
def generation_job_create(
    *,
    project: Project,
    artifact: ModelArtifact,
    prompts: Sequence[Prompt],
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int = 64,
    seed: int | None = None,
    round: int | None = None,
    user=None,
    battle_set=None,
) -> GenerationJob:
    """Queue a generation job on commit. The same request (model, prompts and sampling
    settings) made while such a job is still queued or running gets that job, marked `reused`,
    and queues nothing.

    A model writes candidates only into its own project (one of no project, from before models
    had one: where a superuser or the shell says); with a `user`, an engineer of it only.
    Without a `seed`, a fresh one: generating again samples new candidates. Without a `round`,
    the tasks open the project's next round."""
    if user is not None:
        engineer_require(user, project)
    errors = {}
    if artifact.project_id != project.pk and not (
        artifact.project_id is None and (user is None or user.is_superuser)
    ):
        errors["project"] = (
            f"{artifact} is a model of another project: it generates only into its own."
        )
    if not artifact.generates:
        errors["artifact"] = generation_refusal(artifact, "generate candidates")
    if battle_set is not None and k != 1:
        errors["k"] = "an arena model answers each prompt once."
    elif battle_set is None and not 2 <= k <= 9:
        errors["k"] = "a ranking task takes 2–9 responses."
    if temperature <= 0:
        errors["temperature"] = "must be positive."
    if not 0 < top_p <= 1:
        errors["top_p"] = "must be in (0, 1]."
    if not prompts:
        errors["prompts"] = "choose at least one prompt."
    if any(p.project_id != project.pk for p in prompts):
        errors["prompts"] = "every prompt must belong to the project."
    if errors:
        raise ValidationError(errors)
    if round is None:
        round = round_next_number(project)
    sampling = {"k": k, "temperature": float(temperature), "top_p": float(top_p),
                "max_new_tokens": max_new_tokens, "seed": seed, "round": round}  # fmt: skip
    arena = {"battle_set": battle_set.pk} if battle_set is not None else {}
    job, created = job_get_or_create(
        GenerationJob,
        fingerprint=job_fingerprint(
            project=project.pk, artifact=artifact.pk, prompts=sorted(p.pk for p in prompts),
            **sampling, **arena,
        ),  # fmt: skip
        defaults={"project": project, "artifact": artifact, **sampling, "battle_set": battle_set,
                  "seed": secrets.randbelow(2**31) if seed is None else seed,
                  "created_by": user if getattr(user, "is_authenticated", False) else None},
    )  # fmt: skip
    if not created:
        return job
    job.prompts.set(prompts)
    enqueue_on_commit("training.tasks.generation_run", job.pk)
    return job


def generation_job_repeat(*, job: GenerationJob, user=None) -> GenerationJob:
    """A new job with the same model, prompts and sampling settings and a fresh seed (the same
    seed would sample the same candidates again)."""
    return generation_job_create(
        project=job.project, artifact=job.artifact, prompts=list(job.prompts.order_by("pk")),
        k=job.k, temperature=job.temperature, top_p=job.top_p,
        max_new_tokens=job.max_new_tokens, round=job.round, user=user,
    )  # fmt: skip


def generation_execute(*, job_id: int, worker: str = "local") -> str:
    """Claim a job, sample K responses per prompt and create one ranking task per prompt.

    While it works a heartbeat thread keeps `heartbeat_at` fresh, so that a job whose worker is
    killed is failed by `core.jobs.jobs_reap_stale` instead of staying "running" for ever."""
    if not job_claim(GenerationJob, job_id, worker=worker):
        return "skipped"
    with job_heartbeat(GenerationJob, job_id, worker=worker):
        torch_threads_apply()  # torch's first import: seconds, under the heartbeat
        return _generate(job_id)


@transaction.atomic
def candidates_rank_task_create(
    *,
    project: Project,
    prompt: Prompt,
    artifact: ModelArtifact,
    samples: Sequence[dict],
    round: int,
    required: int | None = None,
    generation: dict | None = None,
) -> Task:
    """Store a prompt's samples (rows of the engine's `sample_responses`) as model responses and
    give them one ranking task (`required` judgments; the project's overlap unless given).

    Each response records the decoding parameters and the seed the engine actually used, so it
    can be reproduced from its own row, plus `generation` (the job, the round...)."""
    from annotation import services as annotation_services

    candidates = [
        annotation_services.response_create(
            prompt=prompt,
            text=sample["text"],
            origin=Source.MODEL,
            model_artifact=artifact,
            generation={
                **{key: value for key, value in sample.items() if key != "text"},
                **(generation or {}),
            },
        )
        for sample in samples
    ]
    return annotation_services.task_create(
        project=project, kind=TaskKind.RANK, prompt=prompt, candidates=candidates,
        required=required, round=round,
    )  # fmt: skip


def _generate(job_id: int) -> str:
    from training.engine.candidates import distinct_candidates
    from training.engine.generation import sample_responses

    job = GenerationJob.objects.select_related("artifact", "project").get(pk=job_id)
    prompts = list(job.prompts.order_by("pk"))

    def sample(texts: list, k: int, seed: int) -> list[list[dict]]:
        return sample_responses(
            job.artifact.path, texts, k=k, temperature=job.temperature, top_p=job.top_p,
            max_new_tokens=job.max_new_tokens, seed=seed,
            batch_size=settings.TRAINING_GENERATION_BATCH_SIZE,
        )  # fmt: skip

    try:
        # Identical samples (after whitespace normalisation) are dropped and made up for by a
        # bounded number of resamplings; a prompt left with fewer than two gets no task.
        samples = distinct_candidates(
            [p.messages or p.text for p in prompts], [("", sample)], k=job.k, seed=job.seed,
            retries=DUPLICATE_RETRIES,
        ).rows  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - recorded on the job
        logger.exception("generation job %s failed", job_id)
        GenerationJob.objects.filter(pk=job_id, status=GenerationJob.Status.RUNNING).update(
            status=GenerationJob.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}",
            finished_at=timezone.now(),
        )
        if job.battle_set_id is not None:  # the set fails, naming this job
            enqueue_on_commit("training.tasks.arena_battles_create", job.battle_set_id)
        return "failed"
    with transaction.atomic():
        # Finished only if still ours: a job the reaper failed meanwhile (its heartbeats stopped
        # reaching the database) keeps "nothing was written", as its error says. The row stays
        # locked until the responses are in, so the reaper cannot fail it half-written.
        if not GenerationJob.objects.filter(pk=job_id, status=GenerationJob.Status.RUNNING).update(
            status=GenerationJob.Status.SUCCEEDED, finished_at=timezone.now()
        ):
            logger.warning("generation job %s: no longer running, its samples are dropped", job_id)
            return "failed"
        responses = tasks_made = 0
        for prompt, row in zip(prompts, samples, strict=True):
            row = [{k: v for k, v in sample.items() if k != "sampler"} for sample in row]
            if job.battle_set_id is not None:  # arena: the set pairs the models' responses
                _samples_store(job, prompt, row)
                responses += len(row)
                continue
            if len(row) < 2:
                continue
            candidates_rank_task_create(
                project=job.project, prompt=prompt, artifact=job.artifact, samples=row,
                round=job.round, generation={"k": job.k, "job": job.pk},
            )  # fmt: skip
            responses += len(row)
            tasks_made += 1
        GenerationJob.objects.filter(pk=job_id).update(
            responses_created=responses, tasks_created=tasks_made
        )
        if job.battle_set_id is not None:
            enqueue_on_commit("training.tasks.arena_battles_create", job.battle_set_id)
    return "succeeded"


def _samples_store(job: GenerationJob, prompt: Prompt, samples: Sequence[dict]) -> None:
    from annotation import services as annotation_services

    for sample in samples:
        annotation_services.response_create(
            prompt=prompt, text=sample["text"], origin=Source.MODEL, model_artifact=job.artifact,
            generation={**{key: value for key, value in sample.items() if key != "text"},
                        "job": job.pk, "battle_set": job.battle_set_id},
        )  # fmt: skip
