"""Round trip: import → annotate → snapshot → `datasets.load_dataset` → one TRL training step,
with no code between the snapshot and TRL. A tiny tokenizer and model are built locally."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from snapshot_testutils import judge, prompt_with

from annotation import services
from annotation.exports import snapshot_build, snapshot_request
from annotation.imports import import_file
from annotation.models import TaskKind

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from training.engine.tiny import tiny_llama, tiny_score_model, train_tokenizer

    root = tmp_path_factory.mktemp("tiny-trl")
    words = "the a cat dog sat ran on mat red blue good bad answer question why yes no".split()
    corpus = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(200)]
    train_tokenizer(corpus, root / "tok", vocab_size=300)
    policy = tiny_llama(root / "tok", root / "policy", hidden_size=32, intermediate=64)
    reward = tiny_score_model(policy, root / "reward")
    return {"policy": str(policy), "reward": str(reward)}


@pytest.fixture
def snapshots(db, settings, tmp_path, make_user):
    settings.DATA_DIR = tmp_path / "data"
    labeler = make_user("lab")
    project = services.project_create(name="Trip", slug="trip")
    rows = [
        {"prompt": f"why is the cat {i}?", "chosen": " good answer", "rejected": " bad"}
        for i in range(6)
    ]
    rows += [{"prompt": f"question {i}", "completion": " yes the dog sat"} for i in range(6)]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert import_file(project=project, path=path).ok
    _, (a, b), task = prompt_with(project, "red or blue?", ["red", "blue"], kind=TaskKind.COMPARE)
    judge(task, labeler, {"winner": a.pk, "strength": 2})

    def build(kind):
        # Seed 7 holds out one of the 7 preference prompts (each prompt is held out by its own
        # hash; with seed 0 none of these is), so the test split exists.
        snap = snapshot_request(
            project=project, kind=kind, filters={"test_size": 0.2, "seed": "7"}, enqueue=False
        )
        return Path(snapshot_build(snapshot=snap).path)

    return {"preference": build("preference"), "sft": build("sft")}


def _args(config_cls, out, **extra):
    return config_cls(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        max_length=64,
        **extra,
    )


def _one_step(trainer) -> None:
    result = trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(result.training_loss)


def test_reward_and_dpo_trainers_accept_the_preference_snapshot(snapshots, tiny_model, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    files = {
        "train": str(snapshots["preference"] / "train.jsonl"),
        "test": str(snapshots["preference"] / "test.jsonl"),
    }
    ds = load_dataset("json", data_files=files)
    assert ds["train"].num_rows + ds["test"].num_rows == 7
    assert not set(ds["train"]["prompt"]) & set(ds["test"]["prompt"])
    tok = AutoTokenizer.from_pretrained(tiny_model["policy"])

    reward = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(
            tiny_model["reward"], num_labels=1
        ),
        args=_args(RewardConfig, tmp_path / "rm"),
        train_dataset=ds["train"],
        processing_class=tok,
    )
    _one_step(reward)

    dpo = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model["policy"]),
        args=_args(DPOConfig, tmp_path / "dpo"),
        train_dataset=ds["train"],
        processing_class=tok,
    )
    _one_step(dpo)


def test_sft_trainer_accepts_the_sft_snapshot(snapshots, tiny_model, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    ds = load_dataset("json", data_files=str(snapshots["sft"] / "train.jsonl"))["train"]
    assert ds.column_names == ["completion", "prompt"]
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model["policy"]),
        args=_args(SFTConfig, tmp_path / "sft"),
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(tiny_model["policy"]),
    )
    _one_step(trainer)
