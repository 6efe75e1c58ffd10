"""GPU throughput of the engine: SFT tokens/s and model FLOPs utilization (MFU) for a ~0.5B
Llama-shaped model (random init; float32 weights under bf16 autocast, as the engine trains), and
PPO episodes/s and GRPO completions/s, all through `run_stage`; and the memory estimate beside
the measured peak.

    python bench/gpu.py            # needs a CUDA GPU; prints a message and exits 0 without one
    python bench/gpu.py --smoke    # tiny model on CPU: checks the script, figures meaningless

MFU = achieved model FLOPs / peak dense bf16 FLOPs of the GPU, with model FLOPs per token
= 6 * parameters + 12 * layers * hidden * sequence length (forward + backward, attention
included; PaLM appendix B). Throughput is measured after the warm-up steps (kernel selection,
allocator growth), from the progress events. The baseline printed beside it is the usual MFU
band that tuned HF-Trainer runs of this size reach on one GPU.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 peak, FLOP/s (no sparsity), by the name torch reports; the first entry whose
# words all appear in it wins, so the PCIe and NVL cards come before the SXM one (an H100 PCIe
# has 756 TFLOP/s, an NVL 835, an SXM 989: "H100" alone would read MFU 1.2-1.3x low there).
PEAK_BF16 = [
    (("H100", "PCIe"), 756e12), (("H100", "NVL"), 835e12), (("H100",), 989e12),
    (("H200", "NVL"), 835e12), (("H200",), 989e12), (("GH200",), 989e12),
    (("A100",), 312e12), (("L40S",), 362e12), (("L40",), 181e12), (("A10G",), 70e12),
    (("A10",), 125e12), (("L4",), 121e12), (("4090",), 165e12),
]  # fmt: skip
WARMUP_STEPS = 5


def peak_flops(name: str) -> float | None:
    words = name.replace("-", " ").split()
    for keys, peak in PEAK_BF16:
        if all(any(k == w or (k.isdigit() and k in w) for w in words) for k in keys):
            return peak
    return None


def after_warmup(events: list[dict], warmup: int) -> float | None:
    """Tokens/s between the first progress event at or past step `warmup` and the last one.
    The engine reports tokens/s since the start; times the elapsed time, that is the tokens
    seen by each event."""
    start = next((e["time"] for e in events if e["event"] == "start"), None)
    progress = [e for e in events if e["event"] == "progress" and e["tokens_per_s"]]
    if start is None or len(progress) < 2:
        return None
    first = next((e for e in progress if e["step"] >= warmup), progress[0])
    last = progress[-1]
    if last is first:
        return None
    seen = lambda e: e["tokens_per_s"] * (e["time"] - start)  # noqa: E731
    return (seen(last) - seen(first)) / (last["time"] - first["time"])


BASELINE_MFU = "0.30-0.45"
WORDS = "the a of to and in is was for on that with as by it at from his her they this".split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def build(root: Path, arch: str, vocab: int, n_rows: int, words: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from training.engine.tiny import (
        architecture_config,
        tiny_score_model,
        train_tokenizer,
        write_snapshot,
    )

    rng = random.Random(0)
    tok = train_tokenizer([_text(rng, 50) for _ in range(500)], root / "tok", vocab_size=300)
    # A realistic vocabulary for the output layer's FLOPs, though our toy tokenizer uses 300 ids.
    config = architecture_config(arch, tok, 2048, {"vocab_size": vocab})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    params = sum(p.numel() for p in model.parameters())
    del model
    score = tiny_score_model(root / "policy", root / "score")
    sft_rows = [{"prompt": _text(rng, 16), "completion": " " + _text(rng, words)}
                for _ in range(n_rows)]  # fmt: skip
    prompts = [{"prompt": _text(rng, 24)} for _ in range(n_rows)]
    return {
        "policy": str(root / "policy"),
        "score": str(score),
        "sft": str(write_snapshot(root / "snap_sft", "sft", {"train": sft_rows})),
        "prompts": str(write_snapshot(root / "snap_prompts", "prompts", {"train": prompts})),
        "params": params,
        "config": config,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, checks only")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--ppo-updates", type=int, default=4)
    parser.add_argument("--grpo-steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=WARMUP_STEPS, help="steps left out")
    args = parser.parse_args()

    import torch

    from training.engine import run_stage

    if not torch.cuda.is_available() and not args.smoke:
        print("bench/gpu.py: no CUDA GPU here; skipping (use --smoke to check the script on CPU).")
        return 0
    if args.smoke:
        arch, vocab, args.steps, args.batch, args.seq, args.ppo_updates, args.warmup = (
            "llama-tiny", 1000, 4, 2, 64, 1, 1)  # fmt: skip
        args.grpo_steps = 1
        name = "cpu (smoke)"
    else:
        arch, vocab = "llama-0.5b", 32000
        name = torch.cuda.get_device_name(0)
    peak = peak_flops(name)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        words = max(8, int(args.seq * 0.9))  # ~1 token per word with the toy tokenizer
        fx = build(root, arch, vocab, n_rows=args.steps * args.batch + 64, words=words)
        cfg = fx["config"]
        events = []
        sft = run_stage(
            {"stage": "sft", "output_dir": str(root / "sft"), "model": fx["policy"],
             "dataset": fx["sft"], "max_steps": args.steps, "per_device_train_batch_size": args.batch,
             "max_length": args.seq, "learning_rate": 1e-5, "save_steps": 10_000,
             "logging_steps": 1},
            sink=events.append,
        )  # fmt: skip
        assert sft.status == "succeeded", sft.error
        tokens_per_s = after_warmup(events, args.warmup)
        layout = next(e for e in events if e["event"] == "precision")
        peak_memory = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        from training.engine.resources import estimate_memory

        estimate = estimate_memory(
            {"stage": "sft", "model": fx["policy"], "per_device_train_batch_size": args.batch,
             "max_length": args.seq}, "cuda" if torch.cuda.is_available() else "cpu",
        )  # fmt: skip
        flops_per_token = 6 * fx["params"] + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq
        mfu = tokens_per_s * flops_per_token / peak if peak else None

        ppo_batch = 16 if not args.smoke else 2
        ppo_events = []
        started = time.time()
        ppo = run_stage(
            {"stage": "ppo", "output_dir": str(root / "ppo"), "model": fx["policy"],
             "reward_model": fx["score"], "prompts": fx["prompts"],
             "max_steps": args.ppo_updates, "per_device_train_batch_size": ppo_batch,
             "local_rollout_forward_batch_size": ppo_batch, "response_length": 64 if not args.smoke else 8,
             "num_ppo_epochs": 1, "learning_rate": 1e-6, "stop_token": None},
            sink=ppo_events.append,
        )  # fmt: skip
        assert ppo.status == "succeeded", ppo.error
        wall = time.time() - started
        eps = [e["metrics"].get("eps") for e in ppo_events if e["event"] == "progress"]

        # GRPO: 16 prompts x 8 completions a step (4 with --smoke), scored by the reward model.
        grpo_batch, generations = (128, 8) if not args.smoke else (4, 2)
        completion = 64 if not args.smoke else 8
        grpo_events = []
        started = time.time()
        grpo = run_stage(
            {"stage": "grpo", "output_dir": str(root / "grpo"), "model": fx["policy"],
             "reward_model": fx["score"], "prompts": fx["prompts"],
             "max_steps": args.grpo_steps, "per_device_train_batch_size": grpo_batch,
             "num_generations": generations, "max_completion_length": completion,
             "learning_rate": 1e-6, "save_steps": 10_000, "logging_steps": 1},
            sink=grpo_events.append,
        )  # fmt: skip
        assert grpo.status == "succeeded", grpo.error
        grpo_wall = time.time() - started
        grpo_progress = [e for e in grpo_events if e["event"] == "progress"]
        step_time = grpo_progress[-1]["metrics"].get("step_time") if grpo_progress else None

    weights = "/".join(layout["trainable"])
    optimizer = "/".join(layout["optimizer_state"])
    print(
        f"\nGPU benchmark on {name}: {arch} ({fx['params'] / 1e6:.0f}M params, vocab {vocab}), "
        f"autocast {layout['autocast']}, trained weights {weights}, optimizer state {optimizer}"
    )
    print(f"SFT  batch {args.batch} x {args.seq} tokens, {args.steps} steps "
          f"({args.warmup} of warm-up left out)")  # fmt: skip
    print(f"  tokens/s          {tokens_per_s:,.0f}")
    if mfu is not None:
        print(f"  MFU               {mfu:.3f}   (baseline: {BASELINE_MFU} for tuned HF Trainer runs;"
              f" peak {peak / 1e12:.0f} TFLOP/s)")  # fmt: skip
    else:
        print(f"  MFU               n/a (unknown peak FLOP/s for {name!r})")
    measured = f"{peak_memory / 2**30:.2f} GiB" if peak_memory else "n/a (CPU)"
    print(f"  memory            estimate {estimate.total / 2**30:.2f} GiB, measured peak "
          f"{measured} (torch.cuda.max_memory_allocated)")  # fmt: skip
    print(f"PPO  {args.ppo_updates} updates x {ppo_batch} episodes, response length 64")
    print(f"  episodes/s        {eps[-1] if eps else 'n/a'} (TRL's eps, last update); "
          f"whole stage incl. loading {args.ppo_updates * ppo_batch / wall:.2f}/s")  # fmt: skip
    print(f"GRPO {args.grpo_steps} steps x {grpo_batch} completions ({generations} per prompt), "
          f"completion length {completion}")  # fmt: skip
    rate = f"{grpo_batch / step_time:.2f}" if step_time else "n/a"
    print(f"  completions/s     {rate} (last step, TRL's step_time); whole stage incl. loading "
          f"{args.grpo_steps * grpo_batch / grpo_wall:.2f}/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
