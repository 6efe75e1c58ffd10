"""Mixed precision: what each stage trains in and what it only reads, and what a step really ran
in (the `precision` progress event), for fp32, bf16 and fp16.

bf16/fp16 autocast runs on CPU too, so the GPU policy is checked here by building the run with
the precision a GPU would get (`choose_precision` refuses bf16/fp16 without CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_testutils import base_config, load_weights

from training.engine import ProgressSink, load_config, read_events
from training.engine.config import ConfigError
from training.engine.runtime import Run, choose_precision, load_model, load_tokenizer
from training.engine.stages import STAGE_RUNNERS

HALF = {"fp32": {}, "bf16": {"bf16": True}, "fp16": {"fp16": True}}


def _run(cfg: dict, precision: str) -> Run:
    """Train `cfg` in-process with the precision a GPU run would get, on the CPU."""
    config = load_config(cfg)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(config, ProgressSink(out / "progress.jsonl"), output_dir=out, device="cpu",
              **HALF[precision])  # fmt: skip
    STAGE_RUNNERS[config.stage](run)
    assert not run.failure, run.failure
    return run


def _layout(run: Run) -> dict:
    events = [
        e for e in read_events(run.output_dir / "progress.jsonl") if e["event"] == "precision"
    ]
    assert len(events) == 1, "one precision event, after the first step"
    return events[0]


@pytest.mark.parametrize(
    "stage, precision, extra",
    [
        ("sft", "fp32", {}),
        ("sft", "bf16", {}),
        # fp16 with every weight trained: the gradient scaler unscales fp32 gradients; fp16
        # weights would fail at the first clip ("Attempting to unscale FP16 gradients").
        ("sft", "fp16", {"max_grad_norm": 1.0}),
        ("reward", "bf16", {}),
        ("dpo", "bf16", {}),
        ("pretrain", "bf16", {"model": None}),
    ],
)
def test_trained_weights_and_optimizer_state_stay_float32_under_autocast(
    tiny, tmp_path, stage, precision, extra
):
    dataset = {"reward": "snap_preference", "dpo": "snap_preference"}.get(stage, f"snap_{stage}")
    cfg = base_config(tiny, stage, tmp_path / "out", dataset=tiny[dataset], max_steps=2, **extra)
    run = _run(cfg, precision)
    layout = _layout(run)
    assert layout["autocast"] == (None if precision == "fp32" else precision)
    assert set(layout["trainable"]) == {"float32"} and layout["trainable"]["float32"] > 0
    assert set(layout["optimizer_state"]) == {"float32"}  # AdamW's two moments
    assert layout["optimizer_state"]["float32"] > 0
    assert run.global_step == 2


def test_lora_trains_float32_adapters_on_a_bf16_base(tiny, tmp_path):
    cfg = base_config(tiny, "sft", tmp_path / "out", use_lora=True, lora_r=4, max_steps=1)
    layout = _layout(_run(cfg, "bf16"))
    assert set(layout["trainable"]) == {"float32"}
    assert set(layout["frozen"]) == {"bfloat16"}
    assert set(layout["optimizer_state"]) == {"float32"}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_models_that_are_only_read_load_in_half_precision(tiny, tmp_path, precision):
    """DPO's reference and PPO's reward model are frozen: half precision. PPO's value model
    trains through its own adapter when the policy uses LoRA (the engine's PPO keeps no
    full-size trained critic then), so its base is half precision too."""
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    for stage, lora in (("dpo", False), ("ppo", True)):
        cfg = load_config(
            base_config(
                tiny,
                stage,
                tmp_path,
                dataset=tiny["snap_preference"],
                use_lora=lora,
                prompts=tiny["snap_prompts"],
                reward_model=tiny["reward"],
            )  # fmt: skip
            if stage == "ppo"
            else base_config(tiny, stage, tmp_path, dataset=tiny["snap_preference"])
        )
        run = Run(cfg, ProgressSink(), output_dir=tmp_path, device="cpu", **HALF[precision])
        tok = load_tokenizer(cfg, cfg.model)
        trained = load_model(cfg.model, run, tok, trainable=True)
        frozen = load_model(cfg.model, run, tok, trainable=False)
        assert trained.dtype == (half if lora else torch.float32), stage
        assert frozen.dtype == half, stage
        if stage == "ppo":
            reward = load_model(tiny["reward"], run, tok, kind="score", trainable=False)
            value = load_model(tiny["reward"], run, tok, kind="score")
            assert reward.dtype == half and value.dtype == half


def test_an_update_of_1e_6_moves_the_weights(tiny, tmp_path):
    """A DPO-sized learning rate under bf16 autocast changes the trained weights: AdamW steps
    are ~lr, far below bf16's resolution for weights near 0.02 (~1e-4), but not fp32's."""
    weight = torch.tensor([0.02])
    assert weight.bfloat16() + 1e-6 == weight.bfloat16()  # what bf16 weights would have done
    cfg = base_config(tiny, "sft", tmp_path / "out", learning_rate=1e-6, max_steps=1)
    run = _run(cfg, "bf16")
    before, after = load_weights(tiny["policy"]), load_weights(run.output_dir)
    layer = "model.layers.0.mlp.up_proj.weight"
    moved = (after[layer].float() - before[layer].float()).abs()
    assert after[layer].dtype == torch.float32
    assert (moved > 0).float().mean() > 0.9, "most weights moved"
    assert moved.max() < 1e-5  # by about the learning rate: an Adam step, nothing else


def test_flash_attention_is_refused_in_fp32(tiny, tmp_path):
    cfg = load_config(
        base_config(
            tiny, "sft", tmp_path, attn_implementation="flash_attention_2", precision="fp32"
        )  # fmt: skip
    )
    with pytest.raises(ConfigError, match=r"sft\.attn_implementation: flash_attention_2 runs only"):
        choose_precision(cfg)
