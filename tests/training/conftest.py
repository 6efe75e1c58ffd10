"""Shared tiny fixtures: one tokenizer, tiny Llama policy/reward models and snapshots in TRL's
row formats, built once per session. Nothing here touches the hub."""

from __future__ import annotations

import os
import random

import pytest
from engine_testutils import _sentence, make_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of the shared tokenizer, models and snapshots."""
    from training.engine.tiny import tiny_llama, tiny_score_model, train_tokenizer, write_snapshot

    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    corpus = [_sentence(rng, 12) for _ in range(300)] + [f"Question {i}:" for i in range(50)]
    train_tokenizer(corpus, root / "tokenizer", vocab_size=400)
    policy = tiny_llama(root / "tokenizer", root / "policy", seed=0)
    reward = tiny_score_model(policy, root / "reward", seed=1)
    paths = {"root": root, "tokenizer": root / "tokenizer", "policy": policy, "reward": reward}
    for kind, n in [("pretrain", 48), ("sft", 32), ("instruction", 32), ("preference", 32),
                    ("prompts", 16)]:  # fmt: skip
        paths[f"snap_{kind}"] = write_snapshot(
            root / f"snap_{kind}",
            kind,
            {"train": make_rows(kind, n, seed=1), "test": make_rows(kind, 8, seed=2)},
        )
    return {k: str(v) for k, v in paths.items()}
