"""Labeling rounds: "start next round" from a policy is one job that creates the round, selects
prompts, samples K distinct candidates per prompt from one or several models and creates the
tasks (rank or compare, as the project sets), within a labeling budget named up front.

Selection (recorded in `Round.selection`): prompts of the project (never imported documents),
optionally narrowed to a prompts snapshot, an import batch or tags (`annotation.bulk`'s
selection), of which those never judged nor waiting in an open rank/compare task are eligible,
oldest first. With `active`, a pool of up to `POOL_FACTOR` times the budget is sampled and
scored by an ensemble of reward models, and the prompts the ensemble is least sure about go
first (`training.engine.candidates.most_uncertain_first`, which gives the criterion and its
references)."""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Sequence

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from annotation import bulk, rules
from annotation import services as annotation_services
from annotation.exports import snapshot_request
from annotation.models import Annotation, Project, Prompt, Snapshot, Source, Task, TaskKind
from core.jobs import job_claim, job_fingerprint, job_get_or_create, job_heartbeat
from core.queue import enqueue_on_commit
from training.artifacts import engineer_require, generation_refusal
from training.execution import torch_threads_apply
from training.models import GenerationJob, ModelArtifact, Round, Stage

logger = logging.getLogger(__name__)

TASK = "training.tasks.round_run"
POOL_FACTOR = 4  # active selection samples this many times the budget and keeps the budget
MAX_BUDGET = 10_000
CRITERION_ACTIVE = (
    "ensemble disagreement (variance of P(i preferred to j) across reward models, Christiano et "
    "al. 2017 §2.2.4), ties by closest rewards (|mean P - 1/2|; Gleave & Irving 2022)"
)
CRITERION_PLAIN = "not yet judged, oldest first"


def round_kind(project: Project) -> str:
    """The task kind the project asks for: rank if enabled, else compare."""
    if project.enabled(TaskKind.RANK):
        return TaskKind.RANK
    if project.enabled(TaskKind.COMPARE):
        return TaskKind.COMPARE
    raise ValidationError(
        {"kind": f"{project} enables neither rank nor compare tasks: enable one to run rounds."}
    )


def round_next_number(project: Project) -> int:
    """One more than the project's last round, or than the highest round of its tasks."""
    last_round = Round.objects.filter(project=project).aggregate(n=Max("number"))["n"] or 0
    last_task = Task.objects.filter(project=project).aggregate(n=Max("round"))["n"] or 0
    return max(last_round, last_task) + 1


def prompts_eligible(project: Project, prompt_ids: Sequence[int]) -> list[int]:
    """Of `prompt_ids`, those not judged yet in a rank or compare task and not waiting in an
    open one, in the order given: a round never re-asks what was asked."""
    voting = list(rules.VOTING_KINDS)
    judged = Annotation.objects.filter(task__project=project, kind__in=voting).values(
        "task__prompt_id"
    )
    waiting = Task.objects.filter(project=project, kind__in=voting, status=Task.Status.OPEN).values(
        "prompt_id"
    )
    taken = set(
        Prompt.objects.filter(project=project)
        .filter(Q(id__in=judged) | Q(id__in=waiting))
        .values_list("id", flat=True)
    )
    return [pk for pk in prompt_ids if pk not in taken]


def prompts_unjudged_first(project: Project, prompt_ids: Sequence[int]) -> list[int]:
    """`prompt_ids` with those `prompts_eligible` keeps first (for "Generate candidates", which
    may sample judged prompts again once the others are used up)."""
    first = prompts_eligible(project, prompt_ids)
    kept = set(first)
    return first + [pk for pk in prompt_ids if pk not in kept]


def prompts_selectable(project: Project, source: dict) -> list[int]:
    """The prompts `source` names (`annotation.bulk` selection; empty: all), never documents."""
    if source:
        source = bulk.selection_clean(project, source)
    return bulk.prompt_ids_selected(project, source or {})


@transaction.atomic
def round_start(
    *,
    policy: ModelArtifact,
    budget: int,
    project: Project | None = None,
    source: dict | None = None,
    active: bool = False,
    reward_models: Sequence[ModelArtifact] = (),
    generators: Sequence[ModelArtifact] = (),
    k: int | None = None,
    temperature: float = 1.0,
    top_p: float = 0.95,
    max_new_tokens: int = 64,
    seed: int | None = None,
    retries: int = 2,
    user=None,
) -> Round:
    """Record the next round of the policy's project and queue it on commit. The same request
    made while it is unfinished gets that round (`reused`). `generators`: models whose samples
    share each task besides the policy; `seed`: a fresh one unless given."""
    project = project or policy.project
    if project is None:
        raise ValidationError({"project": f"{policy} belongs to no project: name one."})
    if user is not None:
        engineer_require(user, project)
    project = Project.objects.select_for_update().get(pk=project.pk)  # numbers one at a time
    kind = round_kind(project)
    k = 2 if kind == TaskKind.COMPARE else (k or project.k_responses)
    models = [policy, *[g for g in generators if g.pk != policy.pk]]
    errors: dict[str, str] = {}
    for field, artifacts in (("policy", models), ("reward_models", list(reward_models))):
        for artifact in artifacts:
            if artifact.project_id != project.pk:
                errors[field] = f"{artifact} is a model of another project."
    for artifact in models:
        if not artifact.generates:
            errors["policy" if artifact == policy else "generators"] = generation_refusal(
                artifact, "start a round"
            )
    if any(a.stage != Stage.REWARD for a in reward_models):
        errors["reward_models"] = "every model of the ensemble must be a reward model."
    if active and not reward_models:
        errors["reward_models"] = "active selection needs at least one reward model."
    if not isinstance(budget, int) or not 1 <= budget <= MAX_BUDGET:
        errors["budget"] = f"name the labeling budget: 1–{MAX_BUDGET} prompts."
    if not 2 <= k <= 9:
        errors["k"] = "a task takes 2–9 responses."
    if temperature <= 0:
        errors["temperature"] = "must be positive."
    if not 0 < top_p <= 1:
        errors["top_p"] = "must be in (0, 1]."
    if not 0 <= retries <= 10:
        errors["retries"] = "0–10 extra sampling passes."
    if errors:
        raise ValidationError(errors)
    source = bulk.selection_clean(project, source) if source else {}
    request = {
        "project": project.pk, "policy": policy.pk, "models": [m.pk for m in models],
        "reward_models": sorted(m.pk for m in reward_models), "budget": budget, "source": source,
        "active": active, "k": k, "temperature": float(temperature), "top_p": float(top_p),
        "max_new_tokens": max_new_tokens, "seed": seed, "retries": retries,
    }  # fmt: skip
    job, created = job_get_or_create(
        Round,
        fingerprint=job_fingerprint(what="round", **request),
        defaults={
            "project": project, "number": round_next_number(project), "policy": policy,
            "kind": kind, "budget": budget, "source": source, "active": active, "k": k,
            "temperature": float(temperature), "top_p": float(top_p),
            "max_new_tokens": max_new_tokens, "retries": retries,
            "seed": secrets.randbelow(2**31) if seed is None else seed,
            "created_by": user if getattr(user, "is_authenticated", False) else None,
        },
    )  # fmt: skip
    if not created:
        return job
    job.generators.set(models)
    job.reward_models.set(reward_models)
    enqueue_on_commit(TASK, job.pk)
    return job


def round_execute(*, round_id: int, worker: str = "local") -> str:
    """Claim a queued round and do it; the outcome is recorded on the row."""
    if not job_claim(Round, round_id, worker=worker):
        return "skipped"
    with job_heartbeat(Round, round_id, worker=worker):
        torch_threads_apply()  # torch's first import: seconds, under the heartbeat
        try:
            _run(Round.objects.select_related("project", "policy").get(pk=round_id), worker)
        except Exception as exc:  # noqa: BLE001 - recorded on the round
            logger.exception("round %s failed", round_id)
            Round.objects.filter(pk=round_id, status=Round.Status.RUNNING).update(
                status=Round.Status.FAILED,
                error=f"{type(exc).__name__}: {exc}",
                finished_at=timezone.now(),
            )
            return "failed"
    return "succeeded"


def _samplers(job: Round, models: list[ModelArtifact]):
    from training.engine.generation import load_policy, sample_responses

    def sampler(artifact: ModelArtifact):
        loaded: dict = {}

        def sample(prompts: list, k: int, seed: int) -> list[list[dict]]:
            if not loaded:
                loaded["model"], loaded["tokenizer"] = load_policy(artifact.path)
            # Batched as a generation job's are: one prompt per `generate` made an active
            # round's pool (four times the budget) the slowest step of the demo.
            return sample_responses(
                artifact.path, prompts, k=k, temperature=job.temperature, top_p=job.top_p,
                max_new_tokens=job.max_new_tokens, seed=seed,
                batch_size=settings.TRAINING_GENERATION_BATCH_SIZE, **loaded,
            )  # fmt: skip

        return sample

    return [(str(artifact.pk), sampler(artifact)) for artifact in models]


def _rewards(reward_models: list[ModelArtifact], prompts: list[Prompt], rows) -> list:
    """rewards[p][m][c]: member m's reward for candidate c of prompt p."""
    from training.engine.evaluation import RewardScorer

    flat_prompts = [p.messages or p.text for p, row in zip(prompts, rows, strict=True) for _ in row]
    flat_texts = [s["text"] for row in rows for s in row]
    per_member = [RewardScorer(m.path).score(flat_prompts, flat_texts) for m in reward_models]
    out, at = [], 0
    for row in rows:
        out.append([scores[at : at + len(row)] for scores in per_member])
        at += len(row)
    return out


def _run(job: Round, worker: str) -> None:
    from training.engine.candidates import distinct_candidates, most_uncertain_first

    project = job.project
    selectable = prompts_selectable(project, job.source)
    eligible = prompts_eligible(project, selectable)
    pool_size = job.budget * (POOL_FACTOR if job.active else 1)
    by_id = Prompt.objects.in_bulk(eligible[:pool_size])
    pool = [by_id[pk] for pk in eligible[:pool_size]]
    models = list(job.generators.order_by("pk"))
    if job.policy in models:  # the policy's share first
        models.remove(job.policy)
        models.insert(0, job.policy)
    candidates = distinct_candidates(
        [p.messages or p.text for p in pool], _samplers(job, models),
        k=job.k, seed=job.seed, retries=job.retries,
    )  # fmt: skip
    rows = candidates.rows
    order = list(range(len(pool)))
    scores = {}
    if job.active and pool:
        ranked = most_uncertain_first(_rewards(list(job.reward_models.order_by("pk")), pool, rows))
        order = [u.index for u in ranked]
        scores = {
            str(pool[u.index].pk): [round(u.disagreement, 6), round(u.closeness, 6)] for u in ranked
        }
    # A prompt left with fewer than two distinct responses cannot be judged: not asked.
    chosen = [i for i in order if len(rows[i]) >= 2][: job.budget]
    names = {str(m.pk): m for m in models}
    shuffle = random.Random(job.seed)
    with transaction.atomic():
        if not Round.objects.filter(pk=job.pk, status=Round.Status.RUNNING).update(
            status=Round.Status.DONE, finished_at=timezone.now()
        ):
            logger.warning("round %s: no longer running, its samples are dropped", job.pk)
            return
        now = timezone.now()
        jobs = {
            name: GenerationJob.objects.create(
                project=project,
                artifact=artifact,
                k=job.k,
                temperature=job.temperature,
                top_p=job.top_p,
                max_new_tokens=job.max_new_tokens,
                seed=job.seed,
                round=job.number,
                status=GenerationJob.Status.SUCCEEDED,
                worker=worker,
                started_at=job.started_at,
                finished_at=now,
                created_by=job.created_by,
            )  # fmt: skip
            for name, artifact in names.items()
        }
        made = {name: 0 for name in names}
        tasks = 0
        for i in chosen:
            prompt, samples = pool[i], list(rows[i])
            # Stored (so shown by id) in a shuffled order: a response's position says nothing
            # of which model wrote it.
            shuffle.shuffle(samples)
            responses = []
            for sample in samples:
                name = sample["sampler"]
                made[name] += 1
                responses.append(
                    annotation_services.response_create(
                        prompt=prompt,
                        text=sample["text"],
                        origin=Source.MODEL,
                        model_artifact=names[name],
                        generation={
                            **{k: v for k, v in sample.items() if k not in ("text", "sampler")},
                            "round": job.number,
                            "job": jobs[name].pk,
                        },
                    )  # fmt: skip
                )
            for group in bulk.candidate_sets(job.kind, responses, 2) or []:
                annotation_services.task_create(
                    project=project, kind=job.kind, prompt=prompt, candidates=group,
                    round=job.number,
                )  # fmt: skip
                tasks += 1
        for name, generation_job in jobs.items():
            generation_job.prompts.set([pool[i] for i in chosen])
            GenerationJob.objects.filter(pk=generation_job.pk).update(
                responses_created=made[name], tasks_created=tasks
            )
        job.generation_jobs.add(*jobs.values())
        Round.objects.filter(pk=job.pk).update(
            selection={
                "criterion": CRITERION_ACTIVE if job.active else CRITERION_PLAIN,
                "source": job.source or "all prompts",
                "selectable": len(selectable),
                "already_asked": len(selectable) - len(eligible),
                "pool": [p.pk for p in pool],
                "prompts": [pool[i].pk for i in chosen],
                "scores": scores,
            },
            counts={
                "prompts": len(chosen), "tasks": tasks, "responses": sum(made.values()),
                "duplicates": candidates.duplicates, "retries": candidates.retries,
                "shortfall": candidates.shortfall,
                "budget_unmet": job.budget - len(chosen),
            },
        )  # fmt: skip


@transaction.atomic
def round_snapshot_request(
    *, round: Round, kind: str = "preference", filters: dict | None = None, user=None,
    enqueue: bool = True, only_this_round: bool = False,
) -> Snapshot:  # fmt: skip
    """Cut a snapshot of the project after this round (its build queued like any other) and
    link it to the round, so the round's pairs gained and the runs trained on it are found.
    `only_this_round`: the snapshot holds this round's judgments only (the `round` filter,
    which its manifest records); otherwise every round's so far."""
    if user is not None:
        engineer_require(user, round.project)
    if only_this_round:
        filters = {**(filters or {}), "round": round.number}
    snapshot = snapshot_request(
        project=round.project, kind=kind, filters=filters, user=user, enqueue=enqueue
    )
    round.snapshots.add(snapshot)
    return snapshot


def round_progress(job: Round) -> dict:
    """Tasks done of the round's tasks, labelers' agreement with consensus on them, and the
    preference pairs gained: the rows of the newest ready preference snapshot of this round's
    judgments alone, else those of the newest one cut from this round less those of the one cut
    from the round before (all of them for the first)."""
    from annotation import quality

    tasks = Task.objects.filter(project_id=job.project_id, round=job.number)
    done = tasks.filter(status=Task.Status.COMPLETE).count()
    agreement = quality.consensus_agreement(
        Annotation.objects.filter(task__project_id=job.project_id, task__round=job.number)
    ).values()
    compared = sum(a.compared for a in agreement)

    def pairs(of: Round | None, *, only_round: bool = False) -> int | None:
        if of is None:
            return 0
        cut = of.snapshots.filter(kind="preference", status=Snapshot.Status.READY)
        for snapshot in cut.order_by("-created_at", "-id"):
            # A round's snapshot alone is its gain; the whole project's are subtracted.
            if bool(snapshot.filters.get("round")) == only_round:
                return snapshot.row_count
        return None

    alone = pairs(job, only_round=True)

    before = (
        Round.objects.filter(project_id=job.project_id, number__lt=job.number)
        .order_by("-number")
        .first()
    )
    now, then = pairs(job), pairs(before)
    return {
        "tasks": tasks.count(),
        "tasks_done": done,
        "agreement": round(sum(a.agreed for a in agreement) / compared, 4) if compared else None,
        "pairs_gained": alone
        if alone is not None
        else (None if now is None or then is None else now - then),
    }


def rounds_panel(project: Project):
    """The curate page's section on the project's rounds (`core.panels`), newest first."""
    rows = []
    for job in Round.objects.filter(project=project).order_by("-number")[:20]:
        progress = round_progress(job)
        agreement = progress["agreement"]
        rows.append({"round": job, "progress": progress,
                     "agreement_pct": None if agreement is None else round(100 * agreement)})  # fmt: skip
    return ("training/_rounds_panel.html", {"rows": rows}) if rows else None
