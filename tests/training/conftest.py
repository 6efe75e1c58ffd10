"""Shared tiny fixtures: one tokenizer, tiny Llama policy/reward models and snapshots in TRL's
row formats, built once per session; the users, project and inputs of the run tests. Nothing
here touches the hub."""

from __future__ import annotations

import os
import random

import pytest
from engine_testutils import _sentence, make_rows
from runs_testutils import base_artifact, filesystem_broker, snapshot_row

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
                    ("prompts", 16), ("kto", 32)]:  # fmt: skip
        paths[f"snap_{kind}"] = write_snapshot(
            root / f"snap_{kind}",
            kind,
            {"train": make_rows(kind, n, seed=1), "test": make_rows(kind, 8, seed=2)},
        )
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def data_dir(settings, tmp_path):
    """Runs write under the test's own folder, never var/ (modules that start runs use it)."""
    settings.DATA_DIR = tmp_path / "data"
    # In-process runs share the test's transaction: the heartbeat thread must stay idle.
    settings.TRAINING_HEARTBEAT_SECONDS = 3600
    return settings.DATA_DIR


@pytest.fixture
def users(make_user, project_factory):
    from annotation.models import Role

    owner = make_user("owner", is_staff=True)
    member = make_user("member", is_staff=True)
    outsider = make_user("outsider", is_staff=True)
    project = project_factory(
        "alpha", prompts=2, members=[(owner, Role.ENGINEER), (member, Role.LABELER)]
    )
    outsider_project = project_factory("beta", prompts=1, members=[(outsider, Role.ENGINEER)])
    return {"owner": owner, "member": member, "outsider": outsider, "project": project,
            "other": outsider_project}  # fmt: skip


@pytest.fixture
def sft_inputs(tiny, users):
    snapshot = snapshot_row(users["project"], "sft", tiny["snap_sft"])
    parent = base_artifact(tiny["policy"], project=users["project"])
    return snapshot, parent


@pytest.fixture(scope="module")
def broker_dir(tmp_path_factory):
    """A module's private filesystem broker (None with Redis), for the worker tests."""
    with filesystem_broker(tmp_path_factory) as root:
        yield root
