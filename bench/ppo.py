"""The engine's own PPO on a tiny fixed config: episodes/s and the reward and KL per update.

    python bench/ppo.py [--updates 8] [--repeats 2]

Runs through `run_stage`; episodes/s is episodes / (last progress event - start event), the
training loop alone, best of the repeats. Its baseline, trl 1.12's PPOTrainer on the same config
(1.69x, bench/README.md), was measured before trl 1.16 dropped `trl.experimental.ppo`; the
figures below it are the engine's alone, to compare against that table's engine column.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "training"))


def build_fixtures(root: Path) -> dict:
    import random

    from engine_testutils import _sentence, make_rows

    from training.engine.tiny import tiny_llama, tiny_score_model, train_tokenizer, write_snapshot

    rng = random.Random(0)
    train_tokenizer([_sentence(rng, 12) for _ in range(400)], root / "tok", vocab_size=400)
    policy = tiny_llama(root / "tok", root / "policy", hidden_size=128, layers=4, heads=4,
                        intermediate=384)  # fmt: skip
    reward = tiny_score_model(policy, root / "reward")
    prompts = write_snapshot(root / "prompts", "prompts", {"train": make_rows("prompts", 256, 1)})
    return {"policy": str(policy), "reward": str(reward), "prompts": str(prompts)}


def config(fx: dict, out: Path, updates: int) -> dict:
    batch = 16
    return {
        "stage": "ppo", "output_dir": str(out), "model": fx["policy"],
        "reward_model": fx["reward"], "prompts": fx["prompts"], "dataset": "",
        "total_episodes": updates * batch, "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1, "num_mini_batches": 1, "num_ppo_epochs": 4,
        "local_rollout_forward_batch_size": batch, "response_length": 24, "temperature": 0.7,
        "learning_rate": 1e-4, "kl_coef": 0.05, "missing_eos_penalty": 1.0,
        "logging_steps": 1, "save_steps": 10_000, "seed": 0,
    }  # fmt: skip


def one_run(fx: dict, out: Path, updates: int) -> dict:
    from training.engine import run_stage

    events: list[dict] = []
    result = run_stage(config(fx, out, updates), sink=events.append)
    assert result.status == "succeeded", result.error
    start = next(e for e in events if e["event"] == "start")
    progress = [e for e in events if e["event"] == "progress"]
    episodes = progress[-1]["metrics"]["episode"]
    return {
        "eps": episodes / (progress[-1]["time"] - start["time"]),
        "scores": [e["metrics"]["objective/scores"] for e in progress],
        "kl": [e["metrics"]["objective/kl"] for e in progress],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch

    threads = os.environ.get("TRAINING_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    best: dict | None = None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fx = build_fixtures(root)
        for i in range(args.repeats):
            r = one_run(fx, root / f"engine{i}", args.updates)
            print(f"  engine run {i + 1}: {r['eps']:.2f} episodes/s", flush=True)
            if best is None or r["eps"] > best["eps"]:
                best = r
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (
        f"CPU ({os.cpu_count()} cores, {platform.machine()})")  # fmt: skip
    print(f"\nPPO, engine on {device}, {time.strftime('%Y-%m-%d')}: tiny Llama (4 x 128), "
          f"16 episodes x {args.updates} updates, 4 PPO epochs, response 24 tokens, best of "
          f"{args.repeats} (baseline: trl 1.12's PPOTrainer, bench/README.md)")  # fmt: skip
    print(f"| episodes/s | {best['eps']:.2f} |")
    print("\n| update | scores | KL |")
    print("| ---: | ---: | ---: |")
    for k, (score, kl) in enumerate(zip(best["scores"], best["kl"], strict=True), 1):
        print(f"| {k} | {score:.4f} | {kl:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
