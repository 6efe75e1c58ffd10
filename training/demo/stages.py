"""The stages of the RLHF loop, one function each, through the platform's own services.

Each takes the `Demo` whose state it reads and fills in: projects, prompts and labeler accounts
(annotation services), snapshots (the export service), training runs (`run_launch`, trained on
the worker of `worker.DemoWorker`), candidates for ranking (the engine's `sample_responses` and
the service that turns samples into ranking tasks), and the evaluation (the engine's sampler
and reward scorer, judged by the hidden oracle).
"""

from __future__ import annotations

import random
from functools import lru_cache

from django.contrib.auth import get_user_model
from django.utils import timezone

from annotation import services
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import Annotation, Project, Response, Role, Snapshot, Source, TaskKind
from training import execution, generation, runs
from training.engine.evaluation import RewardScorer
from training.engine.generation import load_policy, sample_responses
from training.models import ModelArtifact

from . import DemoError, evaluate, labelers, oracle, world
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


def snapshot(demo: Demo, key: str, project: Project, kind: str) -> Snapshot:
    request = snapshot_request(
        project=project,
        kind=kind,
        filters={"test_size": 0.05, "seed": str(demo.seed)},
        user=demo.engineer,
        enqueue=False,
    )
    snap = snapshot_build(snapshot=request)
    if snap.status != snap.Status.READY:
        raise DemoError(f"snapshot {key} ({kind}) {snap.status}: {snap.error}")
    demo.snapshots[key] = snap
    demo.log(f"     snapshot {kind} #{snap.pk}: {snap.row_count} rows, sha256 {snap.sha256[:12]}")
    return snap


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
        task_kinds=[TaskKind.DEMONSTRATION, TaskKind.RANK, TaskKind.COMPARE],
        k_responses=s.k,
        overlap=s.demo_overlap,
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
        items=[{"text": p, "tags": [world.parse(p).family]} for p in demo.world.train],
        author=demo.engineer,
    )
    demo.users = labelers.labelers_ensure(project=demo.project)


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


def candidates(demo: Demo, r: int, policy: ModelArtifact) -> None:
    """The current policy samples K distinct candidates per prompt → rank/compare tasks."""
    s = demo.sizes
    # Each round draws from every training prompt: a prompt ranked in round 1 gets the new
    # policy's candidates in round 2, as in iterated RLHF.
    pool = list(demo.project.prompts.order_by("id"))
    rng = random.Random(f"{demo.seed}:candidates:{r}")
    chosen = rng.sample(pool, min(s.rank_prompts, len(pool)))
    # Twice K samples per prompt, so that K distinct ones are usually among them.
    n = 2 * s.k
    model, tokenizer = _policy(policy.path)
    draws = sample_responses(
        policy.path,
        [world.format_prompt(p.text) for p in chosen],
        k=n,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=s.max_new_tokens,
        seed=demo.seed + r,
        batch_size=max(1, EVAL_BATCH_ROWS // n),
        model=model,
        tokenizer=tokenizer,
    )
    tasks = 0
    for prompt, samples in zip(chosen, draws, strict=True):
        distinct: dict[str, dict] = {}
        for smp in samples:
            text = shown_text(smp["text"])
            if text and text not in distinct:
                distinct[text] = {**smp, "text": text}
        picks = list(distinct.values())[: s.k]
        if len(picks) < 2:
            continue  # nothing to rank: every sample was the same
        task = generation.candidates_rank_task_create(
            project=demo.project,
            prompt=prompt,
            artifact=policy,
            samples=picks,
            round=r,
            required=s.rank_overlap,
            generation={"round": r},
        )
        tasks += 1
        if rng.random() < s.compare_share:
            services.task_create(
                project=demo.project,
                kind=TaskKind.COMPARE,
                prompt=prompt,
                candidates=rng.sample(list(task.candidates.order_by("pk")), 2),
                required=s.rank_overlap,
                round=r,
            )
    demo.rounds_info.append({"round": r, "policy": policy.name, "rank_tasks": tasks})
    demo.log(f"     {tasks} ranking tasks from {policy.name}")


def labeling(demo: Demo, r: int) -> None:
    n = labelers.labelers_work(
        project=demo.project, users=demo.users, seed=demo.seed + 1000 * r,
        progress=_progress(demo),
    )  # fmt: skip
    demo.rounds_info[-1]["annotations"] = n
    demo.log(f"     {n} rankings and comparisons submitted")


def preferences(demo: Demo, r: int) -> None:
    snap = snapshot(demo, f"preference_r{r}", demo.project, "preference")
    demo.rounds_info[-1]["preference_pairs"] = snap.row_count
    if r == 1:
        snapshot(demo, "prompts", demo.project, "prompts")


def reward_model(demo: Demo, r: int) -> None:
    s = demo.sizes
    snap = demo.snapshots[f"preference_r{r}"]
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
        "seed": demo.seed,
    }
    train(demo, f"rm_r{r}", "reward", config, [snap], parent=demo.artifacts["sft"])


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
    s = demo.sizes
    snap = demo.snapshots[f"preference_r{r}"]
    config = {
        "model": demo.artifacts["sft"].path,
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
    train(demo, f"dpo_r{r}", "dpo", config, [snap], parent=demo.artifacts["sft"])


# --- Evaluation ------------------------------------------------------------------------------


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
    groups = _sample(sft, w.test, n=s.k, temperature=1.0, max_new_tokens=mnt, seed=seed + 5)
    scores = _reward_scores(rm, [x for g in groups for x in g])
    nested, i = [], 0
    for g in groups:
        nested.append(scores[i : i + len(g)])
        i += len(g)
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
