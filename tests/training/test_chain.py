"""The full chains from snapshots in TRL's formats: pretrain -> SFT -> reward -> PPO, and
SFT -> DPO, each stage starting from the previous stage's output directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_testutils import assert_output_dir, base_config, finite, params_changed

from training.engine import run_stage
from training.engine.generation import sample_responses


def _ok(cfg):
    result = run_stage(cfg)
    assert result.status == "succeeded", (cfg["stage"], result.error)
    assert finite(result.metrics.get("train_loss")), result.metrics
    assert_output_dir(result.output_dir, cfg["stage"])
    return result.output_dir


@pytest.mark.slow
def test_pretrain_sft_reward_ppo_and_sft_dpo(tiny, tmp_path):
    base = _ok(
        base_config(
            tiny, "pretrain", tmp_path / "base", dataset=tiny["snap_pretrain"], model=None,
            vocab_size=400, max_steps=4,
        )
    )  # fmt: skip
    sft = _ok(base_config(tiny, "sft", tmp_path / "sft", model=base, max_steps=4))
    assert params_changed(base, sft)
    reward = _ok(
        base_config(tiny, "reward", tmp_path / "rm", model=sft, dataset=tiny["snap_preference"])
    )
    ppo = _ok(
        base_config(
            tiny, "ppo", tmp_path / "ppo", model=sft, reward_model=reward, dataset="",
            prompts=tiny["snap_prompts"], max_steps=2, num_ppo_epochs=1, response_length=8,
            local_rollout_forward_batch_size=4,
        )
    )  # fmt: skip
    assert params_changed(sft, ppo)
    lineage = json.loads((Path(ppo) / "lineage.json").read_text())
    assert lineage["parent"]["model"] == sft and lineage["parent"]["reward_model"] == reward
    assert "prompts" in lineage["snapshots"]

    dpo = _ok(
        base_config(
            tiny, "dpo", tmp_path / "dpo", model=sft, dataset=tiny["snap_preference"],
            learning_rate=3e-5,
        )
    )  # fmt: skip
    assert params_changed(sft, dpo)
    samples = sample_responses(dpo, ["Question 3: the dog?"], k=2, max_new_tokens=5, seed=1)
    assert len(samples[0]) == 2
