"""The GPU benchmark has to work the day a GPU is lent: its CPU smoke run is checked here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_bench_smoke_runs_sft_ppo_and_grpo_through_the_engine():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tokens/s" in done.stdout and "episodes/s" in done.stdout
    assert "completions/s" in done.stdout


@pytest.mark.slow
def test_overhead_bench_runs_both_sides_and_prints_both_ratios():
    """bench/training_overhead.py, GRPO for one step each way: both sides print steps/s and steps
    per CPU second, each ratio engine over plain (printed figures are rounded, hence rel)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "bench/training_overhead.py", "--steps", "1", "--repeats", "1",
         "--stages", "grpo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [line.split() for line in done.stdout.splitlines() if line.startswith("grpo ")]
    engine, plain, ratio, engine_cpu, plain_cpu, cpu_ratio = map(float, row[1:7])
    assert min(engine, plain, engine_cpu, plain_cpu) > 0
    assert ratio == pytest.approx(engine / plain, rel=0.02)
    assert cpu_ratio == pytest.approx(engine_cpu / plain_cpu, rel=0.02)


@pytest.mark.slow
def test_overhead_bench_policy_samples_full_length_completions(tmp_path):
    """Both sides' GRPO/RLOO completions run to max_completion_length: the fixture's policy
    asks for it in its generation config, which TRL's trainers and `generate` read."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    spec = importlib.util.spec_from_file_location("overhead", ROOT / "bench/training_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    policy = bench.build_fixtures(tmp_path)["policy"]
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy)
    n = bench.ONLINE["max_completion_length"]
    assert GenerationConfig.from_pretrained(policy).min_new_tokens == n
    tok.padding_side = "left"
    inputs = tok(["a b c", "d e"] * 16, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(**inputs, do_sample=True, max_new_tokens=n, top_k=0)
    new = out[:, inputs["input_ids"].shape[1] :]
    assert new.shape[1] == n and (new != tok.eos_token_id).all()
