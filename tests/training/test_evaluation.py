"""Evaluation, sampling, resources and the CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from engine_testutils import base_config, make_rows

from training.engine import load_config, read_events
from training.engine.checkpoints import MARKER
from training.engine.evaluation import RewardScorer, perplexity, policy_reward, reward_accuracy
from training.engine.generation import load_policy, sample_responses
from training.engine.resources import device_inventory, estimate_memory

ROOT = Path(__file__).resolve().parents[2]


def test_sampling_is_deterministic_and_records_decoding(tiny):
    prompts = ["Question 1: the cat?", [{"role": "user", "content": "hello"}]]
    kwargs = dict(k=3, temperature=0.9, top_p=0.95, max_new_tokens=6, seed=7)
    first = sample_responses(tiny["policy"], prompts, **kwargs)
    assert first == sample_responses(tiny["policy"], prompts, **kwargs)
    assert [len(r) for r in first] == [3, 3]
    sample = first[0][0]
    assert sample["temperature"] == 0.9 and sample["top_p"] == 0.95 and sample["seed"] == 7
    assert sample["max_new_tokens"] == 6 and isinstance(sample["text"], str)
    assert first[1][0]["seed"] == 8
    # Prompt i's samples do not depend on the other prompts in the call.
    alone = sample_responses(tiny["policy"], prompts[1:], **{**kwargs, "seed": 8})[0]
    assert [s["text"] for s in alone] == [s["text"] for s in first[1]]


def test_sampling_in_batches_draws_from_one_seeded_generator_and_answers_as_alone(tiny):
    """Prompts sampled together in one `generate` call (an evaluation samples thousands of short
    answers): deterministic, one generator seeded once for the call, each prompt's k responses
    in order; greedy decoding of a left-padded batch answers as each prompt alone does."""
    prompts = ["Question 1: the cat?", "Question 22: the big brown dog?", "Question 3:"]
    kwargs = dict(k=2, temperature=1.0, max_new_tokens=6, seed=3, batch_size=2)
    first = sample_responses(tiny["policy"], prompts, **kwargs)
    assert first == sample_responses(tiny["policy"], prompts, **kwargs)
    assert [len(r) for r in first] == [2, 2, 2] and [s["index"] for s in first[2]] == [0, 1]
    assert all(s["seed"] == 3 and s["batch_size"] == 2 for r in first for s in r)
    assert all(isinstance(s["ended"], bool) for r in first for s in r)
    # The second batch continues the generator's stream rather than starting it again.
    (again,) = sample_responses(tiny["policy"], prompts[2:], **kwargs)
    assert [s["text"] for s in again] != [s["text"] for s in first[2]]
    greedy = dict(k=1, temperature=0.0, max_new_tokens=6)
    batched = sample_responses(tiny["policy"], prompts, batch_size=3, **greedy)
    alone = sample_responses(tiny["policy"], prompts, **greedy)
    assert [r[0]["text"] for r in batched] == [r[0]["text"] for r in alone]


def test_a_sample_says_whether_it_emitted_the_end_token(tiny):
    """The demo's oracle marks down an answer that never ends. Kills mutation:
    training/engine/generation.py sample_responses `ended` the same whatever was emitted."""
    model, tokenizer = load_policy(tiny["policy"])
    prompt = "Question 1: the cat?"
    greedy = dict(k=1, temperature=0.0, max_new_tokens=3, model=model, tokenizer=tokenizer)
    ((cut,),) = sample_responses(tiny["policy"], [prompt], **greedy)
    assert not cut["ended"]
    # Make the token greedy decoding emits first the end token: the answer ends at once.
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    first = model.generate(**inputs, do_sample=False, max_new_tokens=1)[0, -1].item()
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(first)
    ((ended,),) = sample_responses(tiny["policy"], [prompt], **greedy)
    assert ended["ended"]


def test_the_reward_scorer_reads_a_plain_answer_ended_as_in_training(tiny):
    """TRL's RewardTrainer ends plain-text answers with the end token: the scorer scores an
    answer with or without it alike, where the reward model learnt to give its score."""
    scorer = RewardScorer(tiny["reward"])
    eos = scorer.tokenizer.eos_token
    prompts = ["Question 1: the cat?"] * 2
    plain, ended = scorer.score(prompts, [" It sat.", " It sat." + eos])
    assert plain == ended


def test_evaluation_helpers(tiny):
    ppl = perplexity(tiny["policy"], [r["text"] for r in make_rows("pretrain", 4)])
    assert math.isfinite(ppl) and ppl > 1
    acc = reward_accuracy(tiny["reward"], make_rows("preference", 6))
    assert 0 <= acc["accuracy"] <= 1 and acc["n"] == 6 and math.isfinite(acc["margin"])
    prompts = [r["prompt"] for r in make_rows("prompts", 3)]
    result = policy_reward(
        tiny["policy"], tiny["reward"], prompts, reference_dir=tiny["policy"], max_new_tokens=4
    )
    assert math.isfinite(result["mean_reward"])
    assert result["win_rate"] == 0.5  # identical policies, greedy decoding: all ties


def test_resources(tiny, tmp_path):
    inventory = device_inventory()
    assert inventory["cpu"]["cores"] >= 1 and inventory["cpu"]["memory_total"] > 0
    json.dumps(inventory)
    cfg = load_config(base_config(tiny, "sft", tmp_path))
    full = estimate_memory(cfg, device="cpu")
    assert full.known and full.kind == "cpu" and full.device.startswith("CPU")
    assert full.fits and full.parameters > 0 and full.total > full.weights
    lora = estimate_memory(load_config({**base_config(tiny, "sft", tmp_path), "use_lora": True}))
    assert lora.trainable_parameters < full.trainable_parameters
    big = load_config(
        {"stage": "pretrain", "output_dir": "o", "dataset": "d", "architecture": "llama-1b",
         "vocab_size": 128000, "max_length": 8192, "per_device_train_batch_size": 64}
    )  # fmt: skip
    estimate = estimate_memory(big, device="cpu")
    # From-scratch pretraining gets no LoRA advice (adapters on random weights learn nothing).
    assert not estimate.fits and any("gradient_checkpointing" in a for a in estimate.advice)
    assert not any("use_lora" in a for a in estimate.advice)
    gpu = {"name": "Big GPU", "memory_total": 80 * 2**30, "memory_free": 80 * 2**30}
    on_gpu = estimate_memory(big, device=gpu)  # a worker's GPU, given as data
    assert on_gpu.kind == "cuda" and on_gpu.device == "Big GPU"
    assert on_gpu.available == 79 * 2**30  # the card's total less the CUDA context reserve
    # Trained weights are float32 on both (mixed precision); activations are bf16 on the GPU.
    assert on_gpu.weights == estimate.weights and on_gpu.activations < estimate.activations


def _cli(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "training.engine", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_runs_a_stage_and_reports_config_errors(tiny, tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(base_config(tiny, "sft", tmp_path / "out", max_steps=2)))
    done = _cli(str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 2/2" in done.stdout and "[end] succeeded" in done.stdout
    assert (tmp_path / "out" / "README.md").is_file()

    path.write_text(yaml.safe_dump({"stage": "sft", "lr": 1}))
    bad = _cli(str(path))
    assert bad.returncode == 2 and "did you mean 'learning_rate'" in bad.stderr


def test_cli_lists_a_stages_config_keys_with_their_help():
    """An unknown stage is a config error (exit 2), not a traceback.

    Kills mutations: training/engine/__main__.py main `req = " (required)" if f["required"]
    else ""` -> `req = ""`; the help line printed under each key dropped."""
    done = _cli("--help-config", "dpo")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "dataset: a string = '' (required)" in lines
    assert "beta: a number = 0.1" in lines
    assert lines[lines.index("beta: a number = 0.1") + 1].strip().startswith("DPO temperature")
    names = [line.split(":")[0] for line in lines if not line.startswith(" ")]
    assert {"learning_rate", "sft_weight", "loss_type", "use_lora"} <= set(names)

    unknown = _cli("--help-config", "rlhf")
    assert unknown.returncode == 2, unknown.stderr[-2000:]
    assert "unknown stage 'rlhf'" in unknown.stderr and "Traceback" not in unknown.stderr


def test_cli_validates_a_config_without_training(tiny, tmp_path):
    """Kills mutations: training/engine/__main__.py main `if args.validate:` -> `if False:`
    (it trains); `validate_inputs(cfg)` -> `pass` (a missing snapshot passes)."""
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(base_config(tiny, "sft", tmp_path / "out", max_steps=2)))
    good = _cli(str(path), "--validate")
    assert good.returncode == 0, good.stderr[-2000:]
    assert good.stdout.strip() == "config OK: stage sft"
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written

    missing = tmp_path / "no-such-snapshot"
    path.write_text(
        yaml.safe_dump(base_config(tiny, "sft", tmp_path / "out", dataset=str(missing)))
    )
    bad = _cli(str(path), "--validate")
    assert bad.returncode == 2
    assert f"sft.dataset: snapshot directory not found: {missing}" in bad.stderr
    path.write_text(yaml.safe_dump(base_config(tiny, "sft", tmp_path / "out", max_steps="ten")))
    bad = _cli(str(path), "--validate")
    assert bad.returncode == 2 and "sft.max_steps: expected an integer" in bad.stderr
    assert not (tmp_path / "out").exists()


def test_cli_exits_3_when_interrupted_and_keeps_a_checkpoint(tiny, tmp_path):
    """Ctrl-C (SIGINT) stops after the current step, saves a checkpoint, exits 3.

    Kills mutations: training/engine/__main__.py main `"cancelled": 3` -> `"cancelled": 1`;
    `signal.signal(signal.SIGINT, ...)` dropped (Python's KeyboardInterrupt ends it instead)."""
    out = tmp_path / "out"
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(base_config(tiny, "sft", out, max_steps=5000, save_steps=4000)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "stdout.txt"
    with log.open("w") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "training.engine", str(path)],
            cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while "step 1/5000" not in log.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, "no training step within 240 s"
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert proc.returncode == 3, text[-3000:]
    end = read_events(out / "progress.jsonl")[-1]
    assert end["event"] == "end" and end["status"] == "cancelled" and end["step"] < 5000
    assert "[end] cancelled" in text
    assert (out / "checkpoints" / f"checkpoint-{end['step']}" / MARKER).is_file()
