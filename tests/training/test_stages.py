"""A few steps of each stage on tiny models: finite loss, changed weights, complete outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_testutils import assert_output_dir, base_config, finite, params_changed

from training.engine import ProgressSink, read_events, run_stage
from training.engine.checkpoints import MARKER, list_checkpoints
from training.engine.evaluation import reward_accuracy


def _run(cfg, **kwargs):
    result = run_stage(cfg, **kwargs)
    assert result.status == "succeeded", (result.error, result.advice)
    return result


def _progress(output_dir) -> list[dict]:
    return [e for e in read_events(Path(output_dir) / "progress.jsonl") if e["event"] == "progress"]


def test_sft_prompt_completion(tiny, tmp_path):
    seen = []
    sink = ProgressSink(tmp_path / "events.jsonl", seen.append)
    result = _run(base_config(tiny, "sft", tmp_path / "out"), sink=sink)
    assert result.global_step == 3
    assert finite(result.metrics["train_loss"]) and finite(result.metrics["perplexity"])
    assert params_changed(tiny["policy"], result.output_dir)
    assert_output_dir(result.output_dir, "sft")
    events = [e["event"] for e in seen]
    assert events[0] == "start" and events[-1] == "end" and "eval" in events
    progress = [e for e in seen if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3]
    for e in progress:
        assert e["total_steps"] == 3 and finite(e["loss"]) and e["learning_rate"] > 0
        assert e["tokens_per_s"] > 0 and e["eta_s"] is not None and e["epoch"] > 0
    assert len(read_events(tmp_path / "events.jsonl")) == len(seen)


def test_instruction_on_messages_with_assistant_only_loss(tiny, tmp_path):
    cfg = base_config(tiny, "instruction", tmp_path / "out", dataset=tiny["snap_instruction"])
    result = _run(cfg)
    assert finite(result.metrics["train_loss"])
    assert params_changed(tiny["policy"], result.output_dir)
    assert_output_dir(result.output_dir, "instruction")


def test_sft_lora_adapter_only(tiny, tmp_path):
    cfg = base_config(tiny, "sft", tmp_path / "out", use_lora=True, lora_r=4, merge_lora=False)
    result = _run(cfg)
    out = Path(result.output_dir)
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in _weights(out).items())


def _weights(out):
    from engine_testutils import load_weights

    return load_weights(out)


def test_reward_model_learns_a_separable_preference_and_reports_accuracy_and_margin(tiny, tmp_path):
    """The toy pairs are separable (chosen: a sentence, rejected: "no no no ..."): three steps
    take the model from ordering most training pairs the wrong way round to ordering them all
    right, and the accuracy it reports on the held-out pairs is above chance.

    Kills mutations: training/engine/evaluation.py reward_accuracy `m > 0` -> `m < 0`;
    training/engine/stages/reward.py run `train(trainer, run)` -> `pass`."""
    cfg = base_config(
        tiny, "reward", tmp_path / "out", dataset=tiny["snap_preference"], learning_rate=1e-3
    )
    rows = [json.loads(line) for line in (Path(tiny["snap_preference"]) / "train.jsonl").open()]
    before = reward_accuracy(tiny["reward"], rows)
    result = _run(cfg)
    after = reward_accuracy(result.output_dir, rows)
    assert before["accuracy"] < 0.5 and after["accuracy"] == 1.0, (before, after)
    assert after["margin"] > before["margin"] + 0.5
    assert finite(result.metrics["train_loss"])
    assert result.metrics["accuracy"] > 0.5 and result.metrics["margin"] > 0
    assert params_changed(tiny["reward"], result.output_dir, prefix="model.")
    config = json.loads((Path(result.output_dir) / "config.json").read_text())
    assert config["num_labels"] == 1 if "num_labels" in config else len(config["id2label"]) == 1
    assert_output_dir(result.output_dir, "reward")


def test_dpo(tiny, tmp_path):
    cfg = base_config(
        tiny, "dpo", tmp_path / "out", dataset=tiny["snap_preference"], learning_rate=3e-5
    )
    result = _run(cfg)
    assert finite(result.metrics["train_loss"]) and "accuracy" in result.metrics
    assert params_changed(tiny["policy"], result.output_dir)
    assert_output_dir(result.output_dir, "dpo")


def test_dpo_with_an_sft_term_on_the_chosen_side(tiny, tmp_path):
    # RPO: the SFT term raises the chosen answers' likelihood, which plain DPO may lower.
    out = {}
    for weight in (0.0, 1.0):
        cfg = base_config(
            tiny, "dpo", tmp_path / f"w{weight}", dataset=tiny["snap_preference"],
            learning_rate=1e-3, sft_weight=weight, max_steps=4,
        )  # fmt: skip
        out[weight] = _run(cfg)
    plain, rpo = out[0.0], out[1.0]
    assert finite(rpo.metrics["train_loss"])
    # The same DPO loss plus a positive NLL term: the combined loss is larger.
    assert rpo.metrics["train_loss"] > plain.metrics["train_loss"]
    assert params_changed(tiny["policy"], rpo.output_dir)


def test_cancel_stops_within_one_step_and_saves(tiny, tmp_path):
    calls = []

    def cancel_check():
        calls.append(1)
        return len(calls) >= 2

    cfg = base_config(tiny, "sft", tmp_path / "out", max_steps=6)
    result = run_stage(cfg, cancel_check=cancel_check)
    assert result.status == "cancelled" and result.global_step == 2
    assert [(s, ok) for s, _, ok in list_checkpoints(tmp_path / "out" / "checkpoints")] == [
        (2, True)
    ]
    assert not (tmp_path / "out" / "README.md").exists()  # no final model for a cancelled run


def test_resume_continues_from_the_last_complete_checkpoint(tiny, tmp_path):
    out = tmp_path / "out"
    cfg = base_config(tiny, "sft", out, max_steps=5, save_steps=2)
    calls = []
    first = run_stage(cfg, cancel_check=lambda: calls.append(1) or len(calls) >= 3)
    assert first.status == "cancelled" and first.global_step == 3
    # A crash mid-write leaves a checkpoint without the marker: it must be ignored.
    broken = out / "checkpoints" / "checkpoint-4"
    broken.mkdir()
    (broken / "trainer_state.json").write_text("{")
    assert (out / "checkpoints" / "checkpoint-3" / MARKER).is_file()

    second = run_stage({**cfg, "resume": True})
    assert second.status == "succeeded" and second.global_step == 5
    events = read_events(out / "progress.jsonl")
    starts = [e for e in events if e["event"] == "start"]
    assert [s["step"] for s in starts] == [0, 3]
    after = [e["step"] for e in events[events.index(starts[1]) :] if e["event"] == "progress"]
    assert after == [4, 5]
    state = json.loads((out / "checkpoints" / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    assert (out / "checkpoints" / "checkpoint-5" / "optimizer.pt").is_file()


def test_a_non_finite_loss_fails_the_run_quickly(tiny, tmp_path):
    cfg = base_config(tiny, "sft", tmp_path / "out", max_steps=30, learning_rate=1e12)
    result = run_stage(cfg)
    assert result.status == "failed"
    assert "loss became" in result.error and "learning_rate" in result.advice
    assert result.global_step < 30
    assert not (tmp_path / "out" / "README.md").exists()


def test_out_of_memory_ends_with_advice(tiny, tmp_path, monkeypatch):
    from trl import SFTTrainer

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SFTTrainer, "training_step", boom)
    result = run_stage(base_config(tiny, "sft", tmp_path / "out"))
    assert result.status == "failed" and "out of memory" in result.error
    assert "per_device_train_batch_size" in result.advice and "use_lora" in result.advice
    end = read_events(tmp_path / "out" / "progress.jsonl")[-1]
    assert end["event"] == "end" and end["status"] == "failed"


@pytest.mark.parametrize("from_scratch", [True, False])
def test_pretrain(tiny, tmp_path, from_scratch):
    extra = {} if from_scratch else {"model": tiny["policy"]}
    cfg = base_config(
        tiny, "pretrain", tmp_path / "out", dataset=tiny["snap_pretrain"], vocab_size=300, **extra
    )
    if from_scratch:
        cfg.pop("model")
    result = _run(cfg)
    assert finite(result.metrics["train_loss"]) and finite(result.metrics["perplexity"])
    lineage = assert_output_dir(result.output_dir, "pretrain")
    if from_scratch:
        assert lineage["parent"] == {}
        assert (Path(result.output_dir) / "tokenizer" / "tokenizer.json").is_file()
    else:
        assert params_changed(tiny["policy"], result.output_dir)


def _ppo_config(tiny, out, **overrides):
    options = dict(
        prompts=tiny["snap_prompts"],
        reward_model=tiny["reward"],
        dataset="",
        max_steps=2,
        per_device_train_batch_size=4,
        local_rollout_forward_batch_size=4,
        num_ppo_epochs=1,
        response_length=8,
        learning_rate=1e-3,
    )
    return base_config(tiny, "ppo", out, **(options | overrides))


def test_ppo(tiny, tmp_path):
    seen = []
    result = run_stage(_ppo_config(tiny, tmp_path / "out"), sink=seen.append)
    assert result.status == "succeeded", result.error
    assert result.global_step == 2
    for key in ("objective/kl", "objective/scores", "objective/rlhf_reward"):
        assert finite(result.metrics[key]), key
    assert params_changed(tiny["policy"], result.output_dir)
    assert_output_dir(result.output_dir, "ppo")
    progress = [e for e in seen if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2]
    assert all("objective/kl" in e["metrics"] for e in progress)


def test_ppo_cancel_writes_a_resumable_checkpoint(tiny, tmp_path):
    result = run_stage(_ppo_config(tiny, tmp_path / "out", max_steps=4), cancel_check=lambda: True)
    assert result.status == "cancelled" and result.global_step == 1
    ckpt = tmp_path / "out" / "checkpoints" / "checkpoint-1"
    assert (ckpt / MARKER).is_file() and (ckpt / "model.safetensors").is_file()
    resumed = run_stage(_ppo_config(tiny, tmp_path / "out", max_steps=4, resume=True))
    assert resumed.status == "succeeded" and resumed.global_step == 4
    steps = [e["step"] for e in read_events(tmp_path / "out" / "progress.jsonl")
             if e["event"] == "progress"]  # fmt: skip
    assert steps == [1, 2, 3, 4]


def test_ppo_honours_gradient_checkpointing(tiny, tmp_path, monkeypatch):
    """TRL 1.12's PPO ignored it while the memory estimate and the OOM advice relied on it:
    with it on, the update's forward passes go through activation checkpoints."""
    import transformers.modeling_utils as modeling_utils

    calls = {"n": 0}
    checkpoint = modeling_utils.checkpoint

    def counting(*args, **kwargs):
        calls["n"] += 1
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting)
    for on in (False, True):
        calls["n"] = 0
        out = tmp_path / f"gc-{on}"
        result = run_stage(_ppo_config(tiny, out, max_steps=1, gradient_checkpointing=on))
        assert result.status == "succeeded", result.error
        assert (calls["n"] > 0) == on
