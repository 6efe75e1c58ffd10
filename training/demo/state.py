"""The sizes of the demo and the state of one run of it, which the stages read and fill in."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from annotation.models import Project

from . import world
from .worker import DemoWorker


@dataclass(frozen=True)
class Sizes:
    """Everything that scales: the full demo, or `--quick` for tests."""

    corpus_docs: int = 6000
    # Test and dev prompts, split evenly over the nine prompt families (40 and 20 each).
    n_test: int = 360
    n_dev: int = 180
    demo_prompts: int = 1200  # train prompts that get demonstration tasks
    demo_overlap: int = 2  # demonstrations per prompt (distinct labelers)
    rank_prompts: int = 400  # prompts per round that get K candidates to rank
    rank_overlap: int = 3
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
    # 8 epochs at lr 1e-3, chosen on the dev split (seed 0, 180 prompts, one sample each): at 2
    # epochs and 5e-4 (loss 1.41) SFT's samples at temperature 1.0 were on topic 31% of the time
    # and followed the constraint 0-30% by type; at 8 epochs and 1e-3 (loss 0.58), 84% and 5-35%,
    # the demonstrations' own mixture (35% compliant), with greedy decoding on the plain,
    # non-compliant answer, as the world intends. 8 epochs at 5e-4: 76%, 5-45%.
    sft_epochs: float = 8.0
    sft_lr: float = 1e-3
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
    # Prompts each arm of the active-versus-random comparison asks (the same budget for both);
    # the active arm's pool is four times as many (`training.rounds.POOL_FACTOR`).
    select_budget: int = 100
    arena_prompts: int = 250  # held-out prompts the arena's models answer (a battle per pair)


QUICK = Sizes(
    corpus_docs=400,
    n_test=40,
    n_dev=20,
    demo_prompts=80,
    demo_overlap=2,
    rank_prompts=32,
    rank_overlap=3,
    arch_overrides={},
    vocab_size=400,
    pretrain_max_steps=8,
    sft_max_steps=8,
    rm_max_steps=6,
    ppo_episodes=32,
    ppo_batch=16,
    dpo_max_steps=6,
    # 24 new tokens, as the full demo: at 12 the barely trained policy's answers never end and
    # are too short to pay the length penalty, so the oracle tied 85% of the candidate pairs
    # (all -1.0) and no labeler's ranking could be told from the careless one's (46% at 24).
    max_new_tokens=24,
    temperatures=(0.0, 1.0),
    dev_samples=1,
    bootstrap=300,
    select_budget=24,
    arena_prompts=40,
)


@dataclass
class Demo:
    """One run of the demo: what it was asked for, then what its stages made, by key."""

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
    round_rows: dict = field(default_factory=dict)  # name -> training.models.Round
    results: dict = field(default_factory=dict)
    worker: DemoWorker = field(init=False)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.worker = DemoWorker(out_dir=self.out_dir, log=self.log)

    @contextmanager
    def stage(self, name: str):
        self.log(f"[{len(self.stages) + 1:>2}] {name} ...")
        t0 = time.monotonic()
        yield
        seconds = round(time.monotonic() - t0, 2)
        self.stages.append({"name": name, "seconds": seconds})
        self.log(f"     {name} done in {seconds:.1f} s")
