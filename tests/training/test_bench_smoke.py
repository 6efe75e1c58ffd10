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
