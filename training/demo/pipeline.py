"""The RLHF loop end to end, one function per stage, through the platform's own services.

Every stage leaves what the platform leaves when people do the work: projects, prompts,
labeler accounts, tasks, leases and annotations; snapshots on disk with their rows; training
runs executed by a Celery worker with their metric points; model artifacts with lineage
(base → SFT → RM → PPO, SFT → DPO). Stage durations are recorded for the report.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from annotation import services
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import Annotation, Project, Role, Source, TaskKind

from . import evaluate, labelers, oracle, world
from .generate import reward_scores, sample

GUIDELINES = """# RLHF demo guidelines

Rank the answers best first. Prefer, in this order:

1. **Correct** answers (the right number, an item of the asked category *and* colour, a
   greeting that offers help).
2. **Polite** answers: no insults, no eye-rolling.
3. **Concise** answers: seven words are plenty; padding makes an answer worse.
4. Answers that **finish**; a cut-off answer is worse.
"""


@dataclass(frozen=True)
class Sizes:
    """Everything that scales: the full demo, or `--quick` for tests."""

    corpus_docs: int = 6000
    n_test: int = 250
    n_dev: int = 150
    demo_prompts: int = 1200  # train prompts that get demonstration tasks
    demo_overlap: int = 2  # demonstrations per prompt (distinct labelers)
    rank_prompts: int = 400  # prompts per round that get K candidates to rank
    rank_overlap: int = 3
    compare_share: float = 0.2  # of those prompts, also one pairwise comparison task
    k: int = 4
    arch: str = "llama-tiny"
    arch_overrides: dict = field(
        default_factory=lambda: {
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "intermediate_size": 384,
            "tie_word_embeddings": True,
        }
    )
    vocab_size: int = 750
    pretrain_epochs: float = 2.0
    pretrain_max_steps: int = -1
    sft_epochs: float = 2.0
    sft_lr: float = 5e-4
    sft_max_steps: int = -1
    rm_epochs: float = 2.0
    rm_max_steps: int = -1
    ppo_episodes: int = 2048
    ppo_batch: int = 64
    dpo_epochs: float = 4.0
    # beta 0.05, not TRL's 0.1: at 0.1 the policy stayed so close to SFT that it kept most of its
    # padded and rude answers. Plain DPO (lr 3e-5) barely moved the temperature-1.0 samples
    # (0.56-0.58 vs SFT): its loss can lower the chosen answers' likelihood too. An SFT term on
    # the chosen answers (RPO, weight 1) with lr 1e-4 and 4 epochs gave 0.60 (README).
    dpo_beta: float = 0.05
    dpo_lr: float = 1e-4
    dpo_sft_weight: float = 1.0
    dpo_max_steps: int = -1
    max_new_tokens: int = 24
    temperatures: tuple = (0.0, 0.3, 0.5, 0.7, 1.0)
    dev_samples: int = 2  # samples per dev prompt when choosing the best temperature
    bootstrap: int = 2000


QUICK = Sizes(
    corpus_docs=400,
    n_test=40,
    n_dev=20,
    demo_prompts=80,
    demo_overlap=2,
    rank_prompts=24,
    rank_overlap=3,
    arch_overrides={},
    vocab_size=400,
    pretrain_max_steps=8,
    sft_max_steps=8,
    rm_max_steps=6,
    ppo_episodes=32,
    ppo_batch=16,
    dpo_max_steps=6,
    max_new_tokens=12,
    temperatures=(0.0, 1.0),
    dev_samples=1,
    bootstrap=300,
)


@dataclass
class Demo:
    sizes: Sizes
    seed: int = 0
    rounds: int = 1
    use_worker: bool = True
    out_dir: Path = Path("var/demo")
    log: Callable[[str], None] = print
    # Filled in as the stages run.
    stages: list[dict] = field(default_factory=list)
    world: world.World | None = None
    project: Project | None = None
    corpus_project: Project | None = None
    users: dict = field(default_factory=dict)
    engineer: object = None
    artifacts: dict = field(default_factory=dict)  # name -> ModelArtifact
    runs: dict = field(default_factory=dict)  # name -> TrainingRun
    snapshots: dict = field(default_factory=dict)  # name -> Snapshot
    rounds_info: list[dict] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    worker_proc: subprocess.Popen | None = None
    _external_worker_noted: bool = False
    started: float = field(default_factory=time.monotonic)

    # --- plumbing --------------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str):
        self.log(f"[{len(self.stages) + 1:>2}] {name} ...")
        t0 = time.monotonic()
        yield
        seconds = round(time.monotonic() - t0, 2)
        self.stages.append({"name": name, "seconds": seconds})
        self.log(f"     {name} done in {seconds:.1f} s")

    def run(self) -> dict:
        from . import report

        try:
            self.stage_world()
            self.stage_pretrain()
            self.stage_demonstrations()
            self.stage_sft()
            policy = self.artifacts["sft"]
            for r in range(1, self.rounds + 1):
                self.stage_candidates(r, policy)
                self.stage_labeling(r)
                self.stage_preferences(r)
                self.stage_reward(r)
                self.stage_ppo(r, policy)
                self.stage_dpo(r)
                policy = self.artifacts[f"ppo_r{r}"]
            self.stage_evaluate()
        finally:
            self.worker_stop()
        t0 = time.monotonic()
        data = report.build(self)
        data["stages"].append({"name": "report", "seconds": round(time.monotonic() - t0, 2)})
        data["total_seconds"] = round(time.monotonic() - self.started, 2)
        data["checks"] = report.checks(data)
        json_path, html_path = report.write(data, self.out_dir)
        self.log(report.summary(data))
        self.log(f"\n  report: {json_path}\n          {html_path}")
        return data

    # --- worker ----------------------------------------------------------------------------

    def worker_env(self) -> dict:
        """The environment of a worker that sees this process's database, broker and data."""
        env = dict(os.environ)
        db = connection.settings_dict
        if db["ENGINE"].endswith("sqlite3"):
            env["DATABASE_URL"] = f"sqlite:///{Path(db['NAME']).resolve().as_posix()}"
        else:
            auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
            host = f"{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}"
            env["DATABASE_URL"] = f"postgres://{auth}@{host}/{db['NAME']}"
        env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
        env["PLATFORM_DATA_DIR"] = str(Path(settings.DATA_DIR).resolve())
        env.setdefault("DJANGO_DEBUG", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        return env

    def worker_ensure(self) -> None:
        """Use a live worker of the training queue, or start `manage.py worker` for this demo."""
        from training import selectors
        from training.models import TrainingRun

        if self.worker_proc is not None and self.worker_proc.poll() is None:
            return
        if self.worker_proc is None:
            queue = selectors.queue_of(TrainingRun)
            # A stopped worker is not live, however recent its last heartbeat.
            for beat in selectors.workers_live(queue=queue):
                if not self._external_worker_noted:
                    self.log(f"     using the running worker {beat.hostname}")
                    self._external_worker_noted = True
                return
        self.worker_start()

    def worker_start(self) -> None:
        """Start `manage.py worker` (training and default queues) as a child process."""
        manage = Path(settings.BASE_DIR) / "manage.py"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        logfile = (self.out_dir / "worker.log").open("ab")
        self.worker_proc = subprocess.Popen(
            [
                sys.executable,
                str(manage),
                "worker",
                "--queues=training,default",
                "--concurrency=1",
                # solo: the worker trains in its own process, so stopping it stops training too.
                "--pool=solo",
                "--loglevel=WARNING",
                f"--hostname=rlhf-demo-{os.getpid()}@%h",
            ],
            env=self.worker_env(),
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
        self.log(f"     started a Celery worker (pid {self.worker_proc.pid}, log {logfile.name})")

    def worker_stop(self) -> None:
        proc, self.worker_proc = self.worker_proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # warm shutdown: quick when idle, waits for a run in progress
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()  # interrupted mid-run: the run's heartbeat stops and the reaper fails it
            proc.wait()

    # --- training runs ---------------------------------------------------------------------

    def train(self, key: str, stage: str, config: dict, snapshots: list, parent=None, reward=None):
        """Launch a training run through the platform and wait for its artifact.

        With a worker (the default) the run is queued by `run_launch` and trained by a Celery
        worker process; with `--no-worker` the same `run_execute` service trains it here.
        """
        from training import execution, runs

        name = f"{self.project.slug} {key}"
        if self.use_worker:
            self.worker_ensure()
        run = runs.run_launch(
            project=self.project,
            stage=stage,
            name=name,
            config={**config, "stage": stage},
            snapshots=snapshots,
            parent=parent,
            reward=reward,
            user=self.engineer,
            enqueue=self.use_worker,
        )
        if not self.use_worker:
            execution.run_execute(run_id=run.pk, worker="rlhf_demo --no-worker")
        run, artifact = self.wait(run)
        self.runs[key] = run
        if artifact is None:
            raise DemoError(
                f"training run {run.pk} ({key}, {stage}) {run.status}: {run.error or 'no artifact'}"
                + (f"\n{run.advice}" if run.advice else "")
            )
        self.artifacts[key] = artifact
        self.log(
            f"     run #{run.pk} {stage}: {run.status}, artifact #{artifact.pk} {artifact.path}"
        )
        return artifact

    def wait(self, run, poll: float = 1.0, unserved_after: float | None = None):
        """Wait until the run finishes. On its own worker, stop if that worker exits; on a worker
        not its own, stop (and cancel the run) once the run has stayed queued for
        `unserved_after` seconds (the stale bound unless given) with no live worker taking its
        queue: nothing would ever start it."""
        from training import runs, selectors
        from training.models import ModelArtifact, TrainingRun

        if unserved_after is None:
            unserved_after = settings.TRAINING_STALE_AFTER_SECONDS
        last = -1
        unserved_since = None
        while True:
            run.refresh_from_db()
            if run.status in TrainingRun.FINISHED:
                break
            if self.worker_proc is not None:
                if self.worker_proc.poll() is not None:
                    raise DemoError(
                        f"the Celery worker exited (code {self.worker_proc.returncode}) while run "
                        f"{run.pk} was {run.status}; see {self.out_dir / 'worker.log'}"
                    )
            elif selectors.queued_without_worker(run):
                now = time.monotonic()
                unserved_since = now if unserved_since is None else unserved_since
                if now - unserved_since >= unserved_after:
                    try:
                        runs.run_cancel(run=run)
                    except ValidationError:
                        continue  # it finished meanwhile: the next look sees how
                    queue = selectors.queue_of(TrainingRun)
                    raise DemoError(
                        f"training run {run.pk} ({run.name}) stayed queued for "
                        f"{unserved_after:g} s with no live worker taking the '{queue}' queue "
                        "(the worker the demo found has stopped), so the demo cancelled it. Start "
                        "a worker (`python manage.py worker`, or `make run`) and run the demo "
                        "again, or run it while no worker runs and it starts its own."
                    )
            else:
                unserved_since = None
            if run.step != last and run.total_steps:
                self.log(f"     run #{run.pk} step {run.step}/{run.total_steps}")
                last = run.step
            time.sleep(poll)
        artifact = ModelArtifact.objects.filter(run=run).first()
        return run, artifact

    # --- stages ----------------------------------------------------------------------------

    def stage_world(self) -> None:
        with self.stage("world"):
            s = self.sizes
            self.world = world.build_world(
                self.seed, n_test=s.n_test, n_dev=s.n_dev, corpus_docs=s.corpus_docs
            )
            User = get_user_model()
            self.engineer, _ = User.objects.get_or_create(
                username="demo-engineer", defaults={"is_staff": True}
            )
            stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
            self.project = services.project_create(
                name=f"RLHF demo {stamp} (seed {self.seed})",
                slug=f"rlhf-demo-{stamp}-s{self.seed}",
                owner=self.engineer,
                task_kinds=[TaskKind.DEMONSTRATION, TaskKind.RANK, TaskKind.COMPARE],
                k_responses=s.k,
                overlap=s.demo_overlap,
                guidelines=GUIDELINES,
                description="Synthetic world of `manage.py rlhf_demo`: arithmetic, colours and "
                "categories, greetings. Labelers are simulated.",
            )
            services.membership_set(project=self.project, user=self.engineer, role=Role.ENGINEER)
            self.corpus_project = services.project_create(
                name=f"RLHF demo corpus {stamp}",
                slug=f"rlhf-demo-corpus-{stamp}-s{self.seed}",
                owner=self.engineer,
                description="Pretraining documents of the RLHF demo world.",
            )
            services.prompts_create(
                project=self.corpus_project,
                items=[{"text": t, "metadata": {"document": True}} for t in self.world.corpus],
                source=Source.IMPORTED,
                author=self.engineer,
            )
            # Only training prompts enter the labeling project: dev and test stay unseen.
            services.prompts_create(
                project=self.project,
                items=[{"text": p, "tags": [world.parse(p).family]} for p in self.world.train],
                author=self.engineer,
            )
            self.users = labelers.labelers_ensure(project=self.project)

    def stage_pretrain(self) -> None:
        with self.stage("pretrain"):
            s = self.sizes
            snap = self.snapshot("pretrain", self.corpus_project, "pretrain")
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
                "seed": self.seed,
            }
            self.train("base", "pretrain", config, [snap])

    def stage_demonstrations(self) -> None:
        with self.stage("demonstrations"):
            prompts = list(self.project.prompts.order_by("id"))
            rng = random.Random(self.seed)
            for prompt in rng.sample(prompts, min(self.sizes.demo_prompts, len(prompts))):
                services.task_create(
                    project=self.project,
                    kind=TaskKind.DEMONSTRATION,
                    prompt=prompt,
                    required=self.sizes.demo_overlap,
                )
            n = labelers.labelers_work(
                project=self.project, users=self.users, seed=self.seed, progress=self._progress
            )
            self.log(f"     {n} demonstrations submitted")

    def _progress(self, n: int) -> None:
        self.log(f"     {n} annotations submitted ...")

    def stage_sft(self) -> None:
        with self.stage("sft"):
            s = self.sizes
            snap = self.snapshot("sft", self.project, "sft")
            config = {
                "model": self.artifacts["base"].path,
                "dataset": snap.path,
                "learning_rate": s.sft_lr,
                "num_train_epochs": s.sft_epochs,
                "max_steps": s.sft_max_steps,
                "per_device_train_batch_size": 32,
                "max_length": 64,
                "warmup_steps": 10 if s.sft_max_steps < 0 else 1,
                "logging_steps": 5,
                "save_steps": 100_000,
                "seed": self.seed,
            }
            self.train("sft", "sft", config, [snap], parent=self.artifacts["base"])

    def stage_candidates(self, r: int, policy) -> None:
        """The current policy samples K distinct candidates per prompt → rank/compare tasks."""
        from training.models import ModelArtifact  # noqa: F401 - documents the FK target

        with self.stage(f"candidates_r{r}"):
            s = self.sizes
            # Each round draws from every training prompt: a prompt ranked in round 1 gets the
            # new policy's candidates in round 2, as in iterated RLHF.
            pool = list(self.project.prompts.order_by("id"))
            rng = random.Random(f"{self.seed}:candidates:{r}")
            chosen = rng.sample(pool, min(s.rank_prompts, len(pool)))
            temperature = 1.0
            draws = sample(
                policy.path,
                [p.text for p in chosen],
                n=2 * s.k,
                temperature=temperature,
                max_new_tokens=s.max_new_tokens,
                seed=self.seed + r,
            )
            tasks = 0
            for prompt, samples in zip(chosen, draws, strict=True):
                distinct: dict[str, object] = {}
                for smp in samples:
                    if smp.text and smp.text not in distinct:
                        distinct[smp.text] = smp
                picks = list(distinct.values())[: s.k]
                if len(picks) < 2:
                    continue  # nothing to rank: every sample was the same
                responses = [
                    services.response_create(
                        prompt=prompt,
                        text=smp.text,
                        origin=Source.MODEL,
                        model_artifact=policy,
                        generation={
                            "temperature": temperature,
                            "max_new_tokens": s.max_new_tokens,
                            "ended": smp.ended,
                            "round": r,
                        },
                    )
                    for smp in picks
                ]
                services.task_create(
                    project=self.project,
                    kind=TaskKind.RANK,
                    prompt=prompt,
                    candidates=responses,
                    required=s.rank_overlap,
                    round=r,
                )
                tasks += 1
                if rng.random() < s.compare_share:
                    services.task_create(
                        project=self.project,
                        kind=TaskKind.COMPARE,
                        prompt=prompt,
                        candidates=rng.sample(responses, 2),
                        required=s.rank_overlap,
                        round=r,
                    )
            self.rounds_info.append({"round": r, "policy": policy.name, "rank_tasks": tasks})
            self.log(f"     {tasks} ranking tasks from {policy.name}")

    def stage_labeling(self, r: int) -> None:
        with self.stage(f"labeling_r{r}"):
            n = labelers.labelers_work(
                project=self.project, users=self.users, seed=self.seed + 1000 * r,
                progress=self._progress,
            )  # fmt: skip
            self.rounds_info[-1]["annotations"] = n
            self.log(f"     {n} rankings and comparisons submitted")

    def stage_preferences(self, r: int) -> None:
        with self.stage(f"preference_snapshot_r{r}"):
            snap = self.snapshot(f"preference_r{r}", self.project, "preference")
            self.rounds_info[-1]["preference_pairs"] = snap.row_count
            if r == 1:
                self.snapshot("prompts", self.project, "prompts")

    def stage_reward(self, r: int) -> None:
        with self.stage(f"reward_r{r}"):
            s = self.sizes
            snap = self.snapshots[f"preference_r{r}"]
            config = {
                "model": self.artifacts["sft"].path,
                "dataset": snap.path,
                "learning_rate": 1e-4,
                "num_train_epochs": s.rm_epochs,
                "max_steps": s.rm_max_steps,
                "per_device_train_batch_size": 32,
                "max_length": 64,
                "logging_steps": 5,
                "save_steps": 100_000,
                "seed": self.seed,
            }
            self.train(f"rm_r{r}", "reward", config, [snap], parent=self.artifacts["sft"])

    def stage_ppo(self, r: int, policy) -> None:
        with self.stage(f"ppo_r{r}"):
            s = self.sizes
            prompts = self.snapshots["prompts"]
            rm = self.artifacts[f"rm_r{r}"]
            config = {
                "model": policy.path,
                "reward_model": rm.path,
                "prompts": prompts.path,
                "learning_rate": 1e-4,
                "kl_coef": 0.05,
                "num_ppo_epochs": 4,
                "num_mini_batches": 2,
                "per_device_train_batch_size": s.ppo_batch,
                "local_rollout_forward_batch_size": s.ppo_batch,
                "total_episodes": s.ppo_episodes,
                "response_length": s.max_new_tokens,
                "temperature": 1.0,
                "missing_eos_penalty": 1.0,
                "max_prompt_length": 32,
                "logging_steps": 1,
                "save_steps": 100_000,
                "seed": self.seed,
            }
            self.train(f"ppo_r{r}", "ppo", config, [prompts], parent=policy, reward=rm)

    def stage_dpo(self, r: int) -> None:
        with self.stage(f"dpo_r{r}"):
            s = self.sizes
            snap = self.snapshots[f"preference_r{r}"]
            config = {
                "model": self.artifacts["sft"].path,
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
                "seed": self.seed,
            }
            self.train(f"dpo_r{r}", "dpo", config, [snap], parent=self.artifacts["sft"])

    def snapshot(self, key: str, project: Project, kind: str):
        request = snapshot_request(
            project=project,
            kind=kind,
            filters={"test_size": 0.05, "seed": str(self.seed)},
            user=self.engineer,
            enqueue=False,
        )
        snap = snapshot_build(snapshot=request)
        if snap.status != snap.Status.READY:
            raise DemoError(f"snapshot {key} ({kind}) {snap.status}: {snap.error}")
        self.snapshots[key] = snap
        self.log(
            f"     snapshot {kind} #{snap.pk}: {snap.row_count} rows, sha256 {snap.sha256[:12]}"
        )
        return snap

    def stage_evaluate(self) -> None:
        with self.stage("evaluate"):
            self.results = self.evaluate()

    def evaluate(self) -> dict:
        s, w = self.sizes, self.world
        last = self.rounds
        sft, ppo, dpo = (
            self.artifacts["sft"],
            self.artifacts[f"ppo_r{last}"],
            self.artifacts[f"dpo_r{last}"],
        )
        rm = self.artifacts[f"rm_r{last}"]
        mnt = s.max_new_tokens

        def one(art, prompts, temperature, seed):
            draws = sample(
                art.path, prompts, n=1, temperature=temperature, max_new_tokens=mnt, seed=seed
            )
            return [d[0] for d in draws]

        # Best SFT temperature, chosen on the dev split (never on test).
        dev_scores = {}
        for t in s.temperatures:
            n = 1 if t == 0 else s.dev_samples
            draws = sample(
                sft.path, w.dev, n=n, temperature=t, max_new_tokens=mnt, seed=self.seed + 7
            )
            dev_scores[t] = evaluate.mean_score([x for d in draws for x in d])
        best_t = max(s.temperatures, key=lambda t: (dev_scores[t], t))

        seed = self.seed + 11
        sft_1 = one(sft, w.test, 1.0, seed)
        ppo_1 = one(ppo, w.test, 1.0, seed + 1)
        dpo_1 = one(dpo, w.test, 1.0, seed + 2)
        sft_best = one(sft, w.test, best_t, seed + 3)

        def wr(a, b, k):
            out = evaluate.win_rate(a, b, seed=self.seed + k)
            return out

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
                {
                    "prompt": a.prompt,
                    "sft": a.text,
                    "sft_best": b.text,
                    "ppo": c.text,
                    "dpo": d.text,
                }
                for a, b, c, d in list(zip(sft_1, sft_best, ppo_1, dpo_1, strict=True))[:12]
            ],
            "families": self.families(
                {"sft@1.0": sft_1, f"sft@{best_t}": sft_best, "ppo@1.0": ppo_1, "dpo@1.0": dpo_1}
            ),
            "test_prompts": len(w.test),
            "dev_prompts": len(w.dev),
        }
        # Reward model vs the oracle, on held-out prompts: K SFT samples each, all pairs.
        groups = [
            g
            for g in sample(
                sft.path, w.test, n=s.k, temperature=1.0, max_new_tokens=mnt, seed=seed + 5
            )
        ]
        flat = [(x.prompt, x.text) for g in groups for x in g]
        scores = reward_scores(rm.path, flat)
        nested, i = [], 0
        for g in groups:
            nested.append(scores[i : i + len(g)])
            i += len(g)
        results["reward_model"] = {
            **evaluate.reward_accuracy(groups, nested),
            "artifact": rm.pk,
            "train_metrics": self.runs[f"rm_r{last}"].metrics,
            "policy_scores": self.policy_reward_scores(
                rm, {"sft@1.0": sft, "ppo@1.0": ppo, "dpo@1.0": dpo}, seed=seed + 6
            ),
        }
        results["labeling"] = self.labeler_report()
        return results

    def policy_reward_scores(self, rm, policies: dict, *, seed: int) -> dict:
        """What PPO maximised: the reward model's mean score of each policy's samples (one per
        prompt, temperature 1.0) on training prompts, the prompts PPO trained on."""
        rng = random.Random(f"{self.seed}:reward-scores")
        prompts = rng.sample(self.world.train, min(self.sizes.n_test, len(self.world.train)))
        pairs: list[tuple[str, str]] = []
        for i, artifact in enumerate(policies.values()):
            draws = sample(artifact.path, prompts, n=1, temperature=1.0,
                           max_new_tokens=self.sizes.max_new_tokens, seed=seed + i)  # fmt: skip
            pairs += [(d[0].prompt, d[0].text) for d in draws]
        # One load of the reward model for every policy's samples, in policy order.
        scores = reward_scores(rm.path, pairs)
        out: dict = {"prompts": len(prompts)}
        for i, name in enumerate(policies):
            mine = scores[i * len(prompts) : (i + 1) * len(prompts)]
            out[name] = round(sum(mine) / len(mine), 4)
        return out

    def families(self, policies: dict[str, list]) -> dict:
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
                    name: evaluate.style_profile(samples)["correct"]
                    for name, samples in pick.items()
                },
            }
        return out

    def labeler_report(self) -> dict:
        from annotation.models import Response

        rankings = [
            {"task": a.task_id, "labeler": a.labeler.username, "ranking": a.payload["ranking"]}
            for a in Annotation.objects.filter(task__project=self.project, kind=TaskKind.RANK)
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
                        task__project=self.project, labeler__username=name
                    ).count(),
                }
            )
        careless = [r for r in rows if r["careless"]]
        return {
            "labelers": rows,
            "pairwise_agreement": q["pairwise_agreement"],
            "careless_ranks_last": bool(careless) and rows[-1]["careless"],
        }

    def sizes_dict(self) -> dict:
        return asdict(self.sizes)


class DemoError(RuntimeError):
    """A stage failed; the message says which and what to look at."""
