"""The engine's own PPO on tiny models: exact resume (mid-run, at an epoch boundary, with a
longer run), the KL controller's state, PPO-ptx, LoRA, and parameters that change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_testutils import assert_output_dir, base_config, finite, params_changed

from training.engine import read_events, run_stage
from training.engine.checkpoints import MARKER, list_checkpoints

# Metrics that depend on wall-clock time, not on the computation.
TIMING = ("eps",)


def _cfg(tiny, out, **overrides):
    # 16 prompts, 4 per update: updates 4, 8, ... end an epoch of the prompt sampler.
    options = dict(
        prompts=tiny["snap_prompts"],
        reward_model=tiny["reward"],
        dataset="",
        max_steps=-1,
        total_episodes=24,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_mini_batches=2,
        local_rollout_forward_batch_size=4,
        num_ppo_epochs=2,
        response_length=6,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        save_steps=1,
        save_total_limit=None,
        missing_eos_penalty=1.0,
        seed=3,
    )
    return base_config(tiny, "ppo", out, **(options | overrides))


def _metrics(out) -> dict[int, dict]:
    """{step: metrics} of the progress events in out/progress.jsonl (later events win)."""
    events = read_events(Path(out) / "progress.jsonl")
    return {
        e["step"]: {k: v for k, v in e["metrics"].items() if k not in TIMING}
        for e in events
        if e["event"] == "progress"
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for step in a:
        for key, value in a[step].items():
            assert b[step][key] == pytest.approx(value, abs=1e-5), (step, key)


def _stop_after(k: int):
    """A cancel check that asks to stop once k updates are done (it is read after each)."""
    calls = {"n": 0}

    def check() -> bool:
        calls["n"] += 1
        return calls["n"] >= k

    return check


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo") / "full"
    result = run_stage(_cfg(tiny, out))
    assert result.status == "succeeded", result.error
    return out, result


def test_it_trains_and_reports_the_metrics_the_run_page_reads(tiny, uninterrupted):
    out, result = uninterrupted
    assert result.global_step == 6  # 24 episodes / 4 a update
    assert params_changed(tiny["policy"], out)
    assert_output_dir(out, "ppo")
    progress = _metrics(out)
    assert list(progress) == [1, 2, 3, 4, 5, 6]
    for key in ("objective/kl", "objective/scores", "objective/non_score_reward",
                "objective/rlhf_reward", "objective/entropy", "policy/entropy_avg",
                "loss/value_avg", "loss/policy_avg", "policy/clipfrac_avg", "val/clipfrac_avg",
                "policy/approxkl_avg", "response_length", "val/num_eos_tokens"):  # fmt: skip
        assert all(finite(m[key]) for m in progress.values()), key
    events = read_events(Path(out) / "progress.jsonl")
    assert all(finite(e["metrics"]["eps"]) and e["metrics"]["eps"] > 0
               for e in events if e["event"] == "progress")  # fmt: skip
    for key in ("objective/kl", "objective/scores", "objective/rlhf_reward", "eps"):
        assert finite(result.metrics[key]), key
    # Every update left a complete, resumable checkpoint but the last (the model is the output).
    assert [s for s, _, ok in list_checkpoints(out / "checkpoints") if ok] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("k", [3, 4], ids=["mid-epoch", "epoch-boundary"])
def test_a_resumed_run_matches_an_uninterrupted_one(tiny, tmp_path, uninterrupted, k):
    full, _ = uninterrupted
    out = tmp_path / "out"
    first = run_stage(_cfg(tiny, out), cancel_check=_stop_after(k))
    assert first.status == "cancelled" and first.global_step == k
    assert (out / "checkpoints" / f"checkpoint-{k}" / MARKER).is_file()

    second = run_stage(_cfg(tiny, out, resume=True))
    assert second.status == "succeeded", second.error
    assert second.global_step == 6
    events = read_events(out / "progress.jsonl")
    starts = [e for e in events if e["event"] == "start"]
    assert [e["step"] for e in starts] == [0, k]  # the resumed run starts after update k
    steps = [e["step"] for e in events if e["event"] == "progress"]
    assert steps == list(range(1, 7))  # no step repeated, none restarting at 1
    _assert_same(_metrics(full), _metrics(out))
    assert json.loads((out / "metrics.json").read_text())["objective/kl"] == pytest.approx(
        json.loads((full / "metrics.json").read_text())["objective/kl"], abs=1e-5
    )


def test_a_resume_with_more_episodes_runs_on_as_a_longer_run_would(tiny, tmp_path):
    longer = tmp_path / "longer"
    assert run_stage(_cfg(tiny, longer, total_episodes=32)).status == "succeeded"
    out = tmp_path / "out"
    # The first run plans 24 episodes and stops after 2 updates; the resume asks for 32.
    assert run_stage(_cfg(tiny, out), cancel_check=_stop_after(2)).status == "cancelled"
    result = run_stage(_cfg(tiny, out, total_episodes=32, resume=True))
    assert result.status == "succeeded" and result.global_step == 8
    _assert_same(_metrics(longer), _metrics(out))


def test_the_adaptive_kl_controller_is_restored_on_resume(tiny, tmp_path):
    adaptive = dict(kl_target=0.01, kl_horizon=40, kl_coef=0.2, total_episodes=16)
    full = tmp_path / "full"
    assert run_stage(_cfg(tiny, full, **adaptive)).status == "succeeded"
    coefs = [m["objective/kl_coef"] for m in _metrics(full).values()]
    assert len(set(coefs)) == len(coefs), "an adaptive coefficient moves every update"
    out = tmp_path / "out"
    run_stage(_cfg(tiny, out, **adaptive), cancel_check=_stop_after(2))
    state = torch.load(out / "checkpoints" / "checkpoint-2" / "custom_checkpoint_1.pkl",
                       weights_only=False)  # fmt: skip
    assert state["value"] == pytest.approx(coefs[1])
    assert run_stage(_cfg(tiny, out, resume=True, **adaptive)).status == "succeeded"
    _assert_same(_metrics(full), _metrics(out))


def test_ptx_adds_the_language_modeling_loss_to_the_update(tiny, tmp_path):
    plain = tmp_path / "plain"
    ptx = tmp_path / "ptx"
    short = dict(total_episodes=4, save_steps=100)
    assert run_stage(_cfg(tiny, plain, **short)).status == "succeeded"
    result = run_stage(_cfg(tiny, ptx, ptx_coef=1.0, ptx_snapshot=tiny["snap_pretrain"], **short))
    assert result.status == "succeeded", result.error
    assert finite(result.metrics["loss/ptx"]) and result.metrics["loss/ptx"] > 0
    # Same rollout (same seed, same weights before the first step), different gradient.
    a, b = _metrics(plain)[1], _metrics(ptx)[1]
    assert a["objective/scores"] == b["objective/scores"]
    from engine_testutils import load_weights

    wa, wb = load_weights(plain), load_weights(ptx)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_ptx_loss_and_its_gradient(tiny):
    """The ptx term at the loss level: it is a language-modeling loss and its gradient is not
    zero, so `ptx_coef` x it changes both the objective and the step."""
    from transformers import AutoModelForCausalLM

    from training.engine.ppo.losses import lm_loss

    model = AutoModelForCausalLM.from_pretrained(tiny["policy"])
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    loss = lm_loss(model(input_ids=ids, attention_mask=mask).logits, ids, mask)
    expected = model(input_ids=ids, attention_mask=mask,
                     labels=ids.masked_fill(mask == 0, -100)).loss  # fmt: skip
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_ppo_with_lora_trains_adapters_on_a_shared_base(tiny, tmp_path):
    out = tmp_path / "out"
    cfg = _cfg(tiny, out, use_lora=True, lora_r=4, total_episodes=8, learning_rate=5e-3)
    result = run_stage(cfg)
    assert result.status == "succeeded", result.error
    assert params_changed(tiny["policy"], out)  # merged adapter
    assert all(finite(m["objective/kl"]) for m in _metrics(out).values())
    # The checkpoint holds the trained adapters and heads, not the frozen bases.
    from safetensors.torch import load_file

    saved = load_file(out / "checkpoints" / "checkpoint-1" / "model.safetensors")
    assert saved and all("lora_" in k or "modules_to_save" in k for k in saved)


def test_the_memory_estimate_counts_a_lora_critic_as_an_adapter(tiny):
    """With LoRA the critic is an adapter on the reward model: nothing full-size trains."""
    from training.engine.resources import estimate_memory

    base = {"stage": "ppo", "model": tiny["policy"], "prompts": "p", "reward_model": "r",
            "output_dir": "o", "lora_r": 2}  # fmt: skip
    full = estimate_memory(base, device="cpu")
    lora = estimate_memory({**base, "use_lora": True}, device="cpu")
    assert full.trainable_parameters == 2 * full.parameters  # policy and critic
    assert lora.trainable_parameters < full.parameters / 4
    assert lora.weights < full.weights  # no separate reward model or full critic


def test_a_killed_process_resumes_from_its_last_checkpoint_to_the_same_metrics(
    tiny, tmp_path, uninterrupted
):
    """SIGKILL mid-run (no cancel, no clean-up), then `resume: true`: the run continues from
    the last complete checkpoint and ends where the uninterrupted run ended."""
    import os
    import signal
    import subprocess
    import sys
    import time

    full, _ = uninterrupted
    out = tmp_path / "out"
    config = tmp_path / "ppo.json"
    config.write_text(json.dumps(_cfg(tiny, out)))
    root = Path(__file__).resolve().parents[2]
    # The same CPU thread count as this process: float sums must add up in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "training.engine", str(config)], cwd=root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 240
        while not (out / "checkpoints" / "checkpoint-2" / MARKER).is_file():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no checkpoint-2 within 240 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = [s for s, _, ok in list_checkpoints(out / "checkpoints") if ok]
    assert 2 <= max(done) < 6

    result = run_stage(_cfg(tiny, out, resume=True))
    assert result.status == "succeeded", result.error
    assert result.global_step == 6
    starts = [e for e in read_events(out / "progress.jsonl") if e["event"] == "start"]
    assert starts[-1]["step"] == max(done)
    _assert_same(_metrics(full), _metrics(out))


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_the_number_of_updates_is_right_with_n_processes(processes):
    """max_steps counts updates whatever the process count (TRL 1.12 ran max_steps / N);
    total_episodes is shared by all processes' rollouts."""
    from training.engine.config import load_config
    from training.engine.ppo.loop import Plan

    base = {"stage": "ppo", "output_dir": "o", "model": "m", "prompts": "p", "reward_model": "r",
            "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
            "num_mini_batches": 2}  # fmt: skip
    by_steps = Plan.of(load_config({**base, "max_steps": 12}), 100, processes)
    assert by_steps.num_updates == 12
    assert (by_steps.local_batch, by_steps.mini_batch, by_steps.micro_batch) == (8, 4, 4)
    by_episodes = Plan.of(load_config({**base, "total_episodes": 64}), 100, processes)
    assert by_episodes.global_batch == 8 * processes
    assert by_episodes.num_updates == 64 // (8 * processes)


def test_trainer_kwargs_ppo_does_not_use_are_refused_before_any_work():
    from training.engine.config import ConfigError, load_config

    base = {"stage": "ppo", "output_dir": "o", "model": "m", "prompts": "p", "reward_model": "r"}
    assert load_config({**base, "trainer_kwargs": {"adam_beta2": 0.95}}).trainer_kwargs
    with pytest.raises(ConfigError, match=r"^ppo\.trainer_kwargs\.optim: not used by PPO"):
        load_config({**base, "trainer_kwargs": {"optim": "sgd"}})
    with pytest.raises(ConfigError, match=r"^ppo\.ptx_snapshot: required when ptx_coef > 0"):
        load_config({**base, "ptx_coef": 0.5})
