"""The stages of the RLHF loop, one function each, through the platform's own services.

Each takes the `Demo` whose state it reads and fills in: projects, prompts and labeler accounts
(annotation services), snapshots (requested like a user's and built by the Celery task of the
demo's worker), training runs (`run_launch`, trained on the worker of `worker.DemoWorker`),
candidates for ranking (rounds started as "Start next round" does, `training.rounds`, whose
generation jobs sample them), the active-versus-random selection comparison, an arena battle
set between SFT, PPO and DPO with its leaderboard, and the evaluation (the engine's sampler and
reward scorer, judged by the hidden oracle).
"""

from __future__ import annotations

import random
import time
from functools import lru_cache

from django.contrib.auth import get_user_model
from django.utils import timezone

from annotation import services
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import (
    Annotation,
    Project,
    Prompt,
    Response,
    Role,
    Snapshot,
    Source,
    Task,
    TaskKind,
)
from training import execution, rounds, runs
from training.engine.evaluation import RewardScorer
from training.engine.generation import load_policy, sample_responses
from training.models import ModelArtifact, Round

from . import DemoError, compare, evaluate, labelers, oracle, world
from .evaluate import Sample
from .state import Demo

GUIDELINES = """# RLHF demo guidelines

Rank the answers best first. Prefer, in this order:

1. Answers that **follow the instruction**: one word when asked for one word, capitals when
   asked for capitals, exactly three comma-separated words, a first word Yes or No, a question
   at the end, no more words than allowed, the word asked for. For a sum or a "name a ...",
   the correct answer.
2. Answers **about what was asked** (the item, its colour or its kind).
3. **Polite** answers: no insults, no eye-rolling.
4. **Concise** answers: seven words are plenty; padding makes an answer worse.
5. Answers that **finish**; a cut-off answer is worse.
"""

# The tags of the two halves of the training prompts left after the rounds: the active and the
# random arm of the prompt-selection comparison (`selection_compare`).
ARMS = ("select-active", "select-random")

# Rows (prompts times samples each) per `generate` call when evaluating: thousands of short
# answers, sampled the same way for every compared policy.
EVAL_BATCH_ROWS = 128

# The engine's loader, cached: evaluation samples the same policy at several settings.
_policy = lru_cache(maxsize=4)(load_policy)


def shown_text(text: str) -> str:
    """A sampled answer as the demo shows it to the oracle, the labelers and the report:
    trimmed, without the control characters a byte-level model can emit (PostgreSQL rejects
    NUL in text columns, and no labeler should see the others either)."""
    return "".join(ch for ch in text if ch >= " " or ch in "\n\t").strip()


# --- Platform plumbing: snapshots and training runs ------------------------------------------


def snapshot(
    demo: Demo,
    key: str,
    project: Project,
    kind: str,
    *,
    filters: dict | None = None,
    round: Round | None = None,
    only_this_round: bool = False,
) -> Snapshot:
    """Request a snapshot as a user does (linked to `round` when one is named, of that round's
    judgments alone with `only_this_round`) and wait for the Celery task of the demo's worker to
    build it; with `--no-worker`, the same build service runs here."""
    filters = {"test_size": 0.05, "seed": str(demo.seed), **(filters or {})}
    if round is not None:
        request = rounds.round_snapshot_request(
            round=round, kind=kind, filters=filters, user=demo.engineer,
            enqueue=demo.use_worker, only_this_round=only_this_round,
        )  # fmt: skip
    else:
        request = snapshot_request(
            project=project, kind=kind, filters=filters, user=demo.engineer,
            enqueue=demo.use_worker,
        )  # fmt: skip
    if demo.use_worker:
        demo.worker.ensure()
        snap = demo.worker.wait_job(request, what=f"snapshot {key} ({kind}) #{request.pk}")
    else:
        snap = snapshot_build(snapshot=request, worker="rlhf_demo --no-worker")
    if snap.status != snap.Status.READY:
        raise DemoError(f"snapshot {key} ({kind}) {snap.status}: {snap.error}")
    demo.snapshots[key] = snap
    demo.log(
        f"     snapshot {kind} #{snap.pk}: {snap.row_count} rows, sha256 {snap.sha256[:12]}"
        + (f", built by {snap.worker}" if snap.worker else "")
    )
    return snap


def round_run(demo: Demo, key: str, **request) -> Round:
    """Start a round as "Start next round" does (`training.rounds.round_start`: selection,
    generation jobs, distinct candidates, tasks) and wait for the demo's worker to do it; with
    `--no-worker` the same service runs here (the message it queued then finds the round
    claimed and does nothing)."""
    job = rounds.round_start(user=demo.engineer, **request)
    if demo.use_worker:
        demo.worker.ensure()
        job = demo.worker.wait_job(job, what=f"round {job.number} ({key}) #{job.pk}")
    else:
        rounds.round_execute(round_id=job.pk, worker="rlhf_demo --no-worker")
        job.refresh_from_db()
    if job.status != Round.Status.DONE:
        raise DemoError(f"round {job.number} ({key}) #{job.pk} {job.status}: {job.error}")
    demo.round_rows[key] = job
    c = job.counts
    demo.log(
        f"     round {job.number} #{job.pk}: {c.get('tasks')} tasks on {c.get('prompts')} prompts "
        f"({c.get('duplicates')} duplicate samples dropped, shortfall {c.get('shortfall')}), "
        f"by {job.worker}"
    )
    return job


def train(
    demo: Demo,
    key: str,
    stage: str,
    config: dict,
    snapshots: list,
    parent: ModelArtifact | None = None,
    reward: ModelArtifact | None = None,
) -> ModelArtifact:
    """Launch a training run through the platform and wait for its artifact.

    With a worker (the default) the run is queued by `run_launch` and trained by a Celery
    worker process; with `--no-worker` the same `run_execute` service trains it here.
    """
    if demo.use_worker:
        demo.worker.ensure()
    run = runs.run_launch(
        project=demo.project,
        stage=stage,
        name=f"{demo.project.slug} {key}",
        config={**config, "stage": stage},
        snapshots=snapshots,
        parent=parent,
        reward=reward,
        user=demo.engineer,
        enqueue=demo.use_worker,
    )
    if not demo.use_worker:
        execution.run_execute(run_id=run.pk, worker="rlhf_demo --no-worker")
    run, artifact = demo.worker.wait(run)
    demo.runs[key] = run
    if artifact is None:
        raise DemoError(
            f"training run {run.pk} ({key}, {stage}) {run.status}: {run.error or 'no artifact'}"
            + (f"\n{run.advice}" if run.advice else "")
        )
    demo.artifacts[key] = artifact
    demo.log(f"     run #{run.pk} {stage}: {run.status}, artifact #{artifact.pk} {artifact.path}")
    return artifact


def _progress(demo: Demo):
    return lambda n: demo.log(f"     {n} annotations submitted ...")


# --- Stages ----------------------------------------------------------------------------------


def world_build(demo: Demo) -> None:
    """The synthetic world, the labeling project with its train prompts, the corpus project
    and the labeler accounts."""
    s = demo.sizes
    demo.world = world.build_world(
        demo.seed, n_test=s.n_test, n_dev=s.n_dev, corpus_docs=s.corpus_docs
    )
    User = get_user_model()
    demo.engineer, _ = User.objects.get_or_create(
        username="demo-engineer", defaults={"is_staff": True}
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    demo.project = services.project_create(
        name=f"RLHF demo {stamp} (seed {demo.seed})",
        slug=f"rlhf-demo-{stamp}-s{demo.seed}",
        owner=demo.engineer,
        task_kinds=[TaskKind.DEMONSTRATION, TaskKind.RANK, TaskKind.COMPARE, TaskKind.ARENA],
        k_responses=s.k,
        # The overlap of the rounds' ranking tasks; demonstration tasks name their own.
        overlap=s.rank_overlap,
        guidelines=GUIDELINES,
        description="Synthetic world of `manage.py rlhf_demo`: questions about items with a "
        "checkable constraint (one word, capitals, three items, Yes/No, ...), a little "
        "arithmetic and colour/category. Labelers are simulated.",
    )
    services.membership_set(project=demo.project, user=demo.engineer, role=Role.ENGINEER)
    demo.corpus_project = services.project_create(
        name=f"RLHF demo corpus {stamp}",
        slug=f"rlhf-demo-corpus-{stamp}-s{demo.seed}",
        owner=demo.engineer,
        description="Pretraining documents of the RLHF demo world.",
    )
    services.prompts_create(
        project=demo.corpus_project,
        items=[{"text": t, "metadata": {"document": True}} for t in demo.world.corpus],
        source=Source.IMPORTED,
        author=demo.engineer,
    )
    # Only training prompts enter the labeling project: dev and test stay unseen.
    services.prompts_create(
        project=demo.project,
        items=[
            {"text": p, "tags": [world.parse(p).family, tag]}
            for p, tag in zip(demo.world.train, prompt_tags(demo), strict=True)
        ],
        author=demo.engineer,
    )
    demo.users = labelers.labelers_ensure(project=demo.project)


def prompt_tags(demo: Demo) -> list[str]:
    """Where each training prompt (in the world's shuffled order) goes: the first
    `rank_prompts` to round 1, the next to round 2 and so on; the rest alternately to the
    active and the random arm of the prompt-selection comparison (`selection`), so that both
    arms choose from equal random halves. A round's source names its tag, as a user's would."""
    s, out = demo.sizes, []
    for i in range(len(demo.world.train)):
        r = i // s.rank_prompts + 1
        if r <= demo.rounds:
            out.append(round_tag(r))
        else:
            out.append(ARMS[i % 2])
    return out


def pretrain(demo: Demo) -> None:
    s = demo.sizes
    snap = snapshot(demo, "pretrain", demo.corpus_project, "pretrain")
    config = {
        "dataset": snap.path,
        "architecture": s.arch,
        "architecture_overrides": s.arch_overrides,
        "vocab_size": s.vocab_size,
        "max_length": 128,
        "num_train_epochs": s.pretrain_epochs,
        "max_steps": s.pretrain_max_steps,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 20 if s.pretrain_max_steps < 0 else 2,
        "per_device_train_batch_size": 16,
        "logging_steps": 5,
        "save_steps": 100_000,
        "seed": demo.seed,
    }
    train(demo, "base", "pretrain", config, [snap])


def demonstrations(demo: Demo) -> None:
    prompts = list(demo.project.prompts.order_by("id"))
    rng = random.Random(demo.seed)
    for prompt in rng.sample(prompts, min(demo.sizes.demo_prompts, len(prompts))):
        services.task_create(
            project=demo.project,
            kind=TaskKind.DEMONSTRATION,
            prompt=prompt,
            required=demo.sizes.demo_overlap,
        )
    n = labelers.labelers_work(
        project=demo.project, users=demo.users, seed=demo.seed, progress=_progress(demo)
    )
    demo.log(f"     {n} demonstrations submitted")


def sft(demo: Demo) -> None:
    s = demo.sizes
    snap = snapshot(demo, "sft", demo.project, "sft")
    config = {
        "model": demo.artifacts["base"].path,
        "dataset": snap.path,
        "learning_rate": s.sft_lr,
        "num_train_epochs": s.sft_epochs,
        "max_steps": s.sft_max_steps,
        "per_device_train_batch_size": 32,
        "max_length": 64,
        "warmup_steps": 10 if s.sft_max_steps < 0 else 1,
        "logging_steps": 5,
        "save_steps": 100_000,
        "seed": demo.seed,
    }
    train(demo, "sft", "sft", config, [snap], parent=demo.artifacts["base"])


def round_tag(r: int) -> str:
    """The tag of the training prompts set aside for feedback round `r` (`world_build`)."""
    return f"round-{r}"


def candidates(demo: Demo, r: int, policy: ModelArtifact) -> None:
    """Round `r` through "Start next round": the current policy samples K distinct candidates
    for each of the prompts set aside for the round, which become ranking tasks."""
    s = demo.sizes
    job = round_run(
        demo, f"r{r}", policy=policy, budget=s.rank_prompts, source={"tags": [round_tag(r)]},
        k=s.k, temperature=1.0, top_p=1.0, max_new_tokens=s.max_new_tokens, seed=demo.seed + r,
    )  # fmt: skip
    demo.rounds_info.append(
        {
            "round": r,
            "round_id": job.pk,
            "number": job.number,
            "policy": policy.name,
            "rank_tasks": job.counts.get("tasks", 0),
            "criterion": job.selection.get("criterion"),
            "duplicates": job.counts.get("duplicates", 0),
            "shortfall": job.counts.get("shortfall", 0),
        }
    )


def labeling(demo: Demo, r: int) -> None:
    n = labelers.labelers_work(
        project=demo.project, users=demo.users, seed=demo.seed + 1000 * r,
        progress=_progress(demo),
    )  # fmt: skip
    demo.rounds_info[-1]["annotations"] = n
    demo.log(f"     {n} rankings and comparisons submitted")


# The preference pairs the reward models and DPO learn from: those every labeler who ordered
# the pair agreed on (the snapshot filter a curator sets, `min_agreement`), not the majority's.
# Chosen on seed 0 (the pairs judged by the hidden oracle, the policies on dev prompts): round
# 1's pairs agreed with the oracle 84% of the time, the unanimous ones (54% of them) 94%; round
# 2's 73% and 85%. Round 2's PPO on a reward model of the unanimous pairs won 0.72 against SFT on
# dev (0.69 on all pairs), round 1's DPO 0.63 (0.61), in less time.
CURATED = {"min_agreement": 1.0}


def preferences(demo: Demo, r: int) -> None:
    """The round's curated preference snapshots: every round's pairs so far (the reward model's
    data) and, after round 1, this round's alone (DPO's, `dpo`), each linked to the round."""
    row = demo.round_rows[f"r{r}"]
    snap = snapshot(demo, f"preference_r{r}", demo.project, "preference", filters=CURATED,
                    round=row)  # fmt: skip
    demo.rounds_info[-1]["preference_pairs"] = snap.row_count
    demo.rounds_info[-1]["preference_pairs_dropped"] = snap.manifest.get("below_min_agreement")
    if r == 1:
        snapshot(demo, "prompts", demo.project, "prompts")
    else:
        snapshot(demo, f"preference_only_r{r}", demo.project, "preference", filters=CURATED,
                 round=row, only_this_round=True)  # fmt: skip


def reward_model(demo: Demo, r: int) -> None:
    reward_train(demo, f"rm_r{r}", demo.snapshots[f"preference_r{r}"], seed=demo.seed)


def reward_train(demo: Demo, key: str, snap: Snapshot, *, seed: int) -> ModelArtifact:
    """A reward model on SFT from a preference snapshot: every reward model of the demo is
    trained alike, so their accuracies compare the data only."""
    s = demo.sizes
    config = {
        "model": demo.artifacts["sft"].path,
        "dataset": snap.path,
        "learning_rate": 1e-4,
        "num_train_epochs": s.rm_epochs,
        "max_steps": s.rm_max_steps,
        "per_device_train_batch_size": 32,
        "max_length": 64,
        "logging_steps": 5,
        "save_steps": 100_000,
        "seed": seed,
    }
    return train(demo, key, "reward", config, [snap], parent=demo.artifacts["sft"])


def ppo(demo: Demo, r: int, policy: ModelArtifact) -> None:
    s = demo.sizes
    prompts = demo.snapshots["prompts"]
    rm = demo.artifacts[f"rm_r{r}"]
    config = {
        "model": policy.path,
        "reward_model": rm.path,
        "prompts": prompts.path,
        "learning_rate": 1e-4,
        "kl_coef": 0.05,
        "num_ppo_epochs": 4,
        "num_mini_batches": 2,
        # Rollouts of 2 x ppo_batch prompts in minibatches of ppo_batch: the sizes TRL's PPO
        # used for this config before the engine had its own.
        "per_device_train_batch_size": s.ppo_batch,
        "gradient_accumulation_steps": 2,
        "local_rollout_forward_batch_size": s.ppo_batch,
        "total_episodes": s.ppo_episodes,
        "response_length": s.max_new_tokens,
        "temperature": 1.0,
        "missing_eos_penalty": 1.0,
        "max_prompt_length": 32,
        "logging_steps": 1,
        "save_steps": 100_000,
        "seed": demo.seed,
    }
    train(demo, f"ppo_r{r}", "ppo", config, [prompts], parent=policy, reward=rm)


def dpo(demo: Demo, r: int) -> None:
    """DPO from SFT on round 1's preferences; each later round continues from the round before's
    DPO policy on that round's preferences alone, as PPO continues from its last policy. Chosen
    on seed 0's dev prompts: round 2 from SFT on both rounds' pairs won 0.64 [0.61, 0.68] against
    SFT (compliance 55%); from round 1's DPO on round 2's pairs, 0.70 [0.66, 0.74] (71%), in half
    the steps."""
    s = demo.sizes
    if r == 1:
        snap, start = demo.snapshots["preference_r1"], demo.artifacts["sft"]
    else:
        snap, start = demo.snapshots[f"preference_only_r{r}"], demo.artifacts[f"dpo_r{r - 1}"]
    config = {
        "model": start.path,
        "dataset": snap.path,
        "learning_rate": s.dpo_lr,
        "beta": s.dpo_beta,
        "sft_weight": s.dpo_sft_weight,
        "num_train_epochs": s.dpo_epochs,
        "max_steps": s.dpo_max_steps,
        "per_device_train_batch_size": 32,
        "max_length": 64,
        "logging_steps": 5,
        "save_steps": 100_000,
        "seed": demo.seed,
    }
    train(demo, f"dpo_r{r}", "dpo", config, [snap], parent=start)


# --- Prompt selection: active versus random, for the same labeling budget --------------------


def selection_compare(demo: Demo) -> dict:
    """The next round twice through "Start next round", each with the same budget of prompts
    from its half of the unused training prompts (`ARMS`): once with active selection (the
    ensemble of the last round's reward model and a second one trained on the same snapshot
    with another seed scores a pool of four times the budget; the prompts it is least sure
    about go first, `training.rounds.CRITERION_ACTIVE`), once not (oldest first of a half in
    the world's shuffled order: a uniform random sample). The labelers judge both; each arm's
    preference snapshot (its tag only) trains a reward model alike; both are judged by the
    oracle on the same held-out pairs as the report's reward model, with intervals."""
    s, last = demo.sizes, demo.rounds
    ensemble = [
        demo.artifacts[f"rm_r{last}"],
        reward_train(
            demo, f"rm_r{last}_seed2", demo.snapshots[f"preference_r{last}"], seed=demo.seed + 1
        ),
    ]
    policy = demo.artifacts[f"ppo_r{last}"]  # the newest policy, as the next round would take
    request = dict(
        policy=policy, budget=s.select_budget, k=s.k, temperature=1.0, top_p=1.0,
        max_new_tokens=s.max_new_tokens, seed=demo.seed + 31,
    )  # fmt: skip
    jobs = {
        "active": round_run(
            demo,
            "active",
            source={"tags": [ARMS[0]]},
            active=True,
            reward_models=ensemble,
            **request,
        ),  # fmt: skip
        "random": round_run(demo, "random", source={"tags": [ARMS[1]]}, **request),
    }
    n = labelers.labelers_work(
        project=demo.project, users=demo.users, seed=demo.seed + 3000, progress=_progress(demo)
    )
    demo.log(f"     {n} rankings submitted for the two arms")
    groups = heldout_groups(demo)
    flat = [x for g in groups for x in g]
    scores, arms = {}, {}
    for (arm, job), tag in zip(jobs.items(), ARMS, strict=True):
        snap = snapshot(
            demo, f"preference_{arm}", demo.project, "preference", filters={"tags": [tag]},
            round=job,
        )  # fmt: skip
        rm = reward_train(demo, f"rm_{arm}", snap, seed=demo.seed)
        scores[arm] = _nested(_reward_scores(rm, flat), groups)
        chosen = Prompt.objects.filter(pk__in=job.selection.get("prompts", []))
        mix: dict[str, int] = {}
        for prompt in chosen:
            family = world.parse(prompt.text).family
            mix[family] = mix.get(family, 0) + 1
        arms[arm] = {
            "round": job.number,
            "round_id": job.pk,
            "criterion": job.selection.get("criterion"),
            "pool": len(job.selection.get("pool", [])),
            "prompts": job.counts.get("prompts", 0),
            "tasks": job.counts.get("tasks", 0),
            "pairs_trained": snap.row_count,
            "snapshot": snap.pk,
            "artifact": rm.pk,
            "families": dict(sorted(mix.items())),
        }
    accuracy = compare.accuracies(
        groups, scores, n=s.bootstrap, seed=demo.seed + 41, baseline="random"
    )
    for arm in arms:
        arms[arm].update(accuracy[arm])
    return {
        "budget": s.select_budget,
        "ensemble": [a.pk for a in ensemble],
        "arms": arms,
        "heldout_prompts": len(groups),
    }


# --- Arena: SFT, PPO and DPO judged blind by the labelers ---------------------------------------


def arena_battles(demo: Demo) -> dict:
    """A battle set between SFT and the last round's PPO and DPO on held-out test prompts
    (added to the project tagged `arena` once every model is trained), generated by the
    generation jobs and judged by the simulated labelers; the project's leaderboard beside the
    oracle's verdict on the same battles and the report's win-rates."""
    from training import arena, generation, leaderboard

    s, last = demo.sizes, demo.rounds
    models = {
        "sft": demo.artifacts["sft"],
        f"ppo_r{last}": demo.artifacts[f"ppo_r{last}"],
        f"dpo_r{last}": demo.artifacts[f"dpo_r{last}"],
    }
    texts = demo.world.test[: s.arena_prompts]
    services.prompts_create(
        project=demo.project,
        items=[{"text": p, "tags": ["arena", world.parse(p).family]} for p in texts],
        author=demo.engineer,
    )
    prompts = list(demo.project.prompts.filter(tags__icontains='"arena"').order_by("id"))
    battle_set = arena.battle_set_create(
        project=demo.project, artifacts=list(models.values()), prompts=prompts,
        temperature=1.0, top_p=1.0, max_new_tokens=s.max_new_tokens, seed=demo.seed + 51,
        required=1, name="rlhf_demo arena", user=demo.engineer,
    )  # fmt: skip
    for job in battle_set.generation_jobs.order_by("pk"):
        if demo.use_worker:
            demo.worker.ensure()
            job = demo.worker.wait_job(job, what=f"arena generation #{job.pk}")
        else:
            generation.generation_execute(job_id=job.pk, worker="rlhf_demo --no-worker")
            job.refresh_from_db()
        if job.status != job.Status.SUCCEEDED:
            raise DemoError(f"arena generation #{job.pk} {job.status}: {job.error}")
    if not demo.use_worker:
        arena.battles_create(battle_set_id=battle_set.pk)
    while True:  # the last job's message creates the battles
        battle_set.refresh_from_db()
        if battle_set.status != battle_set.Status.RUNNING:
            break
        if demo.worker.proc is not None and demo.worker.proc.poll() is not None:
            raise DemoError(f"the Celery worker exited before battle set #{battle_set.pk} was made")
        time.sleep(0.5)
    if battle_set.status != battle_set.Status.DONE:
        raise DemoError(f"battle set #{battle_set.pk} {battle_set.status}: {battle_set.error}")
    n = labelers.labelers_work(
        project=demo.project, users=demo.users, seed=demo.seed + 5000, progress=_progress(demo)
    )
    demo.log(f"     {battle_set.battles_created} battles, {n} votes")
    board = leaderboard.leaderboard(demo.project)
    names = {a.pk: key for key, a in models.items()}
    truth = compare.oracle_battles(
        [
            {
                "a": a.model_artifact_id,
                "b": b.model_artifact_id,
                "prompt": task.prompt.text,
                "a_text": a.text,
                "b_text": b.text,
                "a_ended": a.generation.get("ended", True),
                "b_ended": b.generation.get("ended", True),
            }  # fmt: skip
            for task in Task.objects.filter(project=demo.project, kind=TaskKind.ARENA)
            .select_related("prompt")
            .prefetch_related("candidates")
            for a, b in [list(task.candidates.order_by("pk"))]
        ]
    )
    oracle_scores = leaderboard.bt_points(truth)
    oracle_rates = compare.win_rates(truth)
    for row in board["rows"]:
        row["key"] = names.get(row["artifact"], row["name"])
        row["oracle_score"] = round(oracle_scores.get(row["artifact"], 0.0), 1)
    pairs = []
    for me in board["matrix"]:
        for cell in me["against"]:
            if cell["artifact"] == me["artifact"]:
                continue
            o = oracle_rates.get((me["artifact"], cell["artifact"]), {})
            pairs.append(
                {
                    "model": names.get(me["artifact"]),
                    "against": names.get(cell["artifact"]),
                    "votes": cell["battles"],
                    "labelers_win_rate": cell["win_rate"],
                    "oracle_battles": o.get("battles", 0),
                    "oracle_win_rate": o.get("win_rate"),
                }
            )
    return {
        "battle_set": battle_set.pk,
        "prompts": len(prompts),
        "battles_created": battle_set.battles_created,
        "votes": board["battles"],
        "leaderboard": board,
        "pairs": pairs,
    }


# --- Evaluation ------------------------------------------------------------------------------


def heldout_groups(demo: Demo) -> list[list[Sample]]:
    """K SFT samples on each held-out test prompt: the pairs every reward model is judged on."""
    s = demo.sizes
    return _sample(
        demo.artifacts["sft"], demo.world.test, n=s.k, temperature=1.0,
        max_new_tokens=s.max_new_tokens, seed=demo.seed + 16,
    )  # fmt: skip


def _nested(scores: list[float], groups: list[list[Sample]]) -> list[list[float]]:
    nested, i = [], 0
    for g in groups:
        nested.append(scores[i : i + len(g)])
        i += len(g)
    return nested


def _sample(
    artifact: ModelArtifact,
    prompts: list[str],
    *,
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
) -> list[list[Sample]]:
    """`n` samples per prompt by the engine's sampler (temperature 0 decodes greedily, then n
    should be 1), in batches: every compared policy is sampled the same way."""
    model, tokenizer = _policy(artifact.path)
    rows = sample_responses(
        artifact.path,
        [world.format_prompt(p) for p in prompts],
        k=n,
        temperature=temperature,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=max(1, EVAL_BATCH_ROWS // n),
        model=model,
        tokenizer=tokenizer,
    )
    return [
        [Sample(prompt, shown_text(s["text"]), s["ended"]) for s in row]
        for prompt, row in zip(prompts, rows, strict=True)
    ]


def _reward_scores(rm: ModelArtifact, samples: list[Sample]) -> list[float]:
    """The reward model's score of each sample, in one load of the reward model."""
    return RewardScorer(rm.path).score(
        [world.format_prompt(x.prompt) for x in samples],
        [x.text for x in samples],
        batch_size=EVAL_BATCH_ROWS,
    )


def evaluation(demo: Demo) -> dict:
    """Every figure of the report: win-rates over SFT under the oracle (against SFT at 1.0 and
    at its best dev temperature), what each policy does, per prompt family, the reward model
    against the oracle and the labelers' quality."""
    s, w = demo.sizes, demo.world
    last = demo.rounds
    sft, ppo, dpo = (
        demo.artifacts["sft"],
        demo.artifacts[f"ppo_r{last}"],
        demo.artifacts[f"dpo_r{last}"],
    )
    rm = demo.artifacts[f"rm_r{last}"]
    mnt = s.max_new_tokens

    def one(art, prompts, temperature, seed):
        draws = _sample(art, prompts, n=1, temperature=temperature, max_new_tokens=mnt, seed=seed)
        return [d[0] for d in draws]

    # Best SFT temperature, chosen on the dev split (never on test).
    dev_scores = {}
    for t in s.temperatures:
        n = 1 if t == 0 else s.dev_samples
        draws = _sample(sft, w.dev, n=n, temperature=t, max_new_tokens=mnt, seed=demo.seed + 7)
        dev_scores[t] = evaluate.mean_score([x for d in draws for x in d])
    best_t = max(s.temperatures, key=lambda t: (dev_scores[t], t))

    seed = demo.seed + 11
    sft_1 = one(sft, w.test, 1.0, seed)
    ppo_1 = one(ppo, w.test, 1.0, seed + 1)
    dpo_1 = one(dpo, w.test, 1.0, seed + 2)
    sft_best = one(sft, w.test, best_t, seed + 3)

    def wr(a, b, k):
        return evaluate.win_rate(a, b, seed=demo.seed + k)

    results = {
        "ppo_vs_sft": wr(ppo_1, sft_1, 1),
        "dpo_vs_sft": wr(dpo_1, sft_1, 2),
        "ppo_vs_sft_best_temp": wr(ppo_1, sft_best, 3),
        "dpo_vs_sft_best_temp": wr(dpo_1, sft_best, 4),
        "sft_best_temperature": best_t,
        "sft_dev_scores": {str(t): v for t, v in dev_scores.items()},
        "policies": {
            "sft@1.0": evaluate.style_profile(sft_1),
            f"sft@{best_t}": evaluate.style_profile(sft_best),
            "ppo@1.0": evaluate.style_profile(ppo_1),
            "dpo@1.0": evaluate.style_profile(dpo_1),
        },
        "examples": [
            {"prompt": a.prompt, "sft": a.text, "sft_best": b.text, "ppo": c.text, "dpo": d.text}
            for a, b, c, d in list(zip(sft_1, sft_best, ppo_1, dpo_1, strict=True))[:12]
        ],
        "families": families(
            {"sft@1.0": sft_1, f"sft@{best_t}": sft_best, "ppo@1.0": ppo_1, "dpo@1.0": dpo_1}
        ),
        "test_prompts": len(w.test),
        "dev_prompts": len(w.dev),
        # Every judged test sample, so the report's tables can be recomputed from the report
        # (SFT at its best dev temperature as `sft@best`: that temperature can be 1.0).
        "samples": {
            name: [[x.prompt, x.text, x.ended] for x in samples]
            for name, samples in (
                ("sft@1.0", sft_1),
                ("sft@best", sft_best),
                ("ppo@1.0", ppo_1),
                ("dpo@1.0", dpo_1),
            )
        },
    }
    # Reward model vs the oracle, on held-out prompts: K SFT samples each, all pairs.
    groups = heldout_groups(demo)
    nested = _nested(_reward_scores(rm, [x for g in groups for x in g]), groups)
    results["reward_model"] = {
        **evaluate.reward_accuracy(groups, nested),
        "artifact": rm.pk,
        "train_metrics": demo.runs[f"rm_r{last}"].metrics,
        "policy_scores": policy_reward_scores(
            demo, rm, {"sft@1.0": sft, "ppo@1.0": ppo, "dpo@1.0": dpo}, seed=seed + 6
        ),
    }
    results["labeling"] = labeler_report(demo)
    return results


def policy_reward_scores(
    demo: Demo, rm: ModelArtifact, policies: dict[str, ModelArtifact], *, seed: int
) -> dict:
    """What PPO maximised: the reward model's mean score of each policy's samples (one per
    prompt, temperature 1.0) on training prompts, the prompts PPO trained on."""
    rng = random.Random(f"{demo.seed}:reward-scores")
    prompts = rng.sample(demo.world.train, min(demo.sizes.n_test, len(demo.world.train)))
    samples: list[Sample] = []
    for i, artifact in enumerate(policies.values()):
        draws = _sample(artifact, prompts, n=1, temperature=1.0,
                        max_new_tokens=demo.sizes.max_new_tokens, seed=seed + i)  # fmt: skip
        samples += [d[0] for d in draws]
    # One load of the reward model for every policy's samples, in policy order.
    scores = _reward_scores(rm, samples)
    out: dict = {"prompts": len(prompts)}
    for i, name in enumerate(policies):
        mine = scores[i * len(prompts) : (i + 1) * len(prompts)]
        out[name] = round(sum(mine) / len(mine), 4)
    return out


def families(policies: dict[str, list[Sample]]) -> dict:
    """Per prompt family: where feedback helped (win-rates over SFT, with their 95% intervals:
    a family can hold a handful of prompts) and each policy's share of fully correct
    answers."""
    by_family: dict[str, list[int]] = {}
    for i, smp in enumerate(policies["sft@1.0"]):
        by_family.setdefault(world.parse(smp.prompt).family, []).append(i)
    out = {}
    for family, idx in sorted(by_family.items()):
        pick = {name: [samples[i] for i in idx] for name, samples in policies.items()}
        ppo = evaluate.win_rate(pick["ppo@1.0"], pick["sft@1.0"])
        dpo = evaluate.win_rate(pick["dpo@1.0"], pick["sft@1.0"])
        out[family] = {
            "prompts": len(idx),
            "ppo_vs_sft": ppo["win_rate"],
            "ppo_vs_sft_ci95": ppo["ci95"],
            "dpo_vs_sft": dpo["win_rate"],
            "dpo_vs_sft_ci95": dpo["ci95"],
            "correct": {
                name: evaluate.style_profile(samples)["correct"] for name, samples in pick.items()
            },
        }
    return out


def labeler_report(demo: Demo) -> dict:
    """Each labeler's quality (leave-one-out agreement) beside the oracle's hidden truth."""
    rankings = [
        {"task": a.task_id, "labeler": a.labeler.username, "ranking": a.payload["ranking"]}
        for a in Annotation.objects.filter(task__project=demo.project, kind=TaskKind.RANK)
        .select_related("labeler")
    ]  # fmt: skip
    ids = {rid for r in rankings for g in r["ranking"] for rid in g}
    responses = {x.pk: x for x in Response.objects.filter(pk__in=ids).select_related("prompt")}
    oracle_order = {}
    for r in rankings:
        flat = [rid for g in r["ranking"] for rid in g]
        for a in flat:
            for b in flat:
                if a < b and (a, b) not in oracle_order:
                    ra, rb = responses[a], responses[b]
                    pref = oracle.prefer(
                        ra.prompt.text, ra.text, rb.text,
                        a_ended=ra.generation.get("ended", True),
                        b_ended=rb.generation.get("ended", True),
                    )  # fmt: skip
                    oracle_order[(a, b)] = {1.0: 1, 0.0: -1}.get(pref, 0)
    q = evaluate.labeler_quality(rankings, oracle_order)
    profiles = {p.name: p for p in labelers.PROFILES}
    rows = []
    for name, stats in sorted(q["labelers"].items(), key=lambda kv: -kv[1]["quality"]):
        p = profiles.get(name)
        rows.append(
            {
                "name": name,
                "quality": stats["quality"],
                "careless": bool(p and p.careless),
                "noise": p.noise if p else None,
                "oracle_agreement": stats["oracle_agreement"],
                "pairs": stats["pairs"],
                "annotations": Annotation.objects.filter(
                    task__project=demo.project, labeler__username=name
                ).count(),
            }
        )
    careless = [r for r in rows if r["careless"]]
    return {
        "labelers": rows,
        "pairwise_agreement": q["pairwise_agreement"],
        "careless_ranks_last": bool(careless) and rows[-1]["careless"],
    }
