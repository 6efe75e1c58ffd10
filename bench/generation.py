"""Batched against one-at-a-time decoding: the engine's `sample_responses` (generation jobs)
and `policy_reward` (evaluation) on the same prompts, both paths in the same run.

    python bench/generation.py                 # a ~20M-parameter Llama, random init, CPU or GPU
    python bench/generation.py --prompts 16 --arch llama-tiny   # quicker

Prints prompts/s for batch size 1 (the baseline: one `generate` call per prompt) and for the
batched path (left-padded batches of --batch prompts), and checks that greedy decoding gives
the same texts both ways.
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

WORDS = "the a of to and in is was for on that with as by it at from his her they this".split()


def _prompt(rng: random.Random) -> str:
    # Different lengths, so that batches really are padded.
    return "Question: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))) + "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="llama-20m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from training.engine.evaluation import policy_reward
    from training.engine.generation import load_policy, sample_responses
    from training.engine.tiny import architecture_config, tiny_score_model, train_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(0)
    prompts = [_prompt(rng) for _ in range(args.prompts)]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (
        f"CPU, {torch.get_num_threads()} threads")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = train_tokenizer([_prompt(rng) for _ in range(400)], root / "tok", vocab_size=400)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(architecture_config(args.arch, tok, 512))
        model.save_pretrained(root / "policy")
        tok.save_pretrained(root / "policy")
        params = sum(p.numel() for p in model.parameters())
        del model
        score = tiny_score_model(root / "policy", root / "score")
        model, tokenizer = load_policy(root / "policy")
        greedy = dict(k=1, temperature=0.0, max_new_tokens=args.new_tokens)

        def timed(fn):
            sample_responses(root / "policy", prompts[:2], model=model, tokenizer=tokenizer,
                             **greedy)  # warm-up  # fmt: skip
            started = time.perf_counter()
            out = fn()
            return out, time.perf_counter() - started

        rows = []
        for batch in (1, args.batch):
            texts, wall = timed(lambda b=batch: sample_responses(
                root / "policy", prompts, model=model, tokenizer=tokenizer, batch_size=b,
                **greedy))  # fmt: skip
            rows.append(("sample_responses (greedy)", batch, wall, texts))
        same = [r[0]["text"] for r in rows[0][3]] == [r[0]["text"] for r in rows[1][3]]
        for batch in (1, args.batch):
            started = time.perf_counter()
            result = policy_reward(root / "policy", score, prompts, batch_size=batch,
                                   max_new_tokens=args.new_tokens)  # fmt: skip
            rows.append(("policy_reward (generate + score)", batch, time.perf_counter() - started,
                         result["mean_reward"]))  # fmt: skip
        same_reward = rows[2][3] == rows[3][3]

    print(f"\nGeneration benchmark on {device}: {args.arch} ({params / 1e6:.1f}M params), "
          f"{args.prompts} prompts of 6-42 words, {args.new_tokens} new tokens each")  # fmt: skip
    print(f"{'path':34} {'batch':>5} {'seconds':>8} {'prompts/s':>10} {'speed-up':>9}")
    for i, (path, batch, wall, _) in enumerate(rows):
        base = rows[i - i % 2][2]
        print(f"{path:34} {batch:>5} {wall:>8.2f} {args.prompts / wall:>10.1f} "
              f"{base / wall:>8.1f}x")  # fmt: skip
    print(f"greedy texts batched == one at a time: {same}; mean reward equal: {same_reward}")
    return 0 if same and same_reward else 1


if __name__ == "__main__":
    sys.exit(main())
