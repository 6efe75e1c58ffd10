"""Helpers shared by the engine tests (a unique module name: tests/ dirs share sys.path)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path


def load_weights(model_dir: str | Path) -> dict:
    from safetensors.torch import load_file

    weights = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(f))
    return weights


def params_changed(before_dir, after_dir, prefix: str = "") -> bool:
    import torch

    before, after = load_weights(before_dir), load_weights(after_dir)
    shared = [k for k in before if k in after and k.startswith(prefix)]
    assert shared, "no shared parameters to compare"
    return any(not torch.equal(before[k], after[k]) for k in shared)


def assert_output_dir(out: str | Path, stage: str) -> dict:
    out = Path(out)
    for name in ("config.json", "tokenizer.json", "engine_config.json", "lineage.json",
                 "metrics.json", "README.md"):  # fmt: skip
        assert (out / name).is_file(), f"{name} missing in {out}"
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == stage
    assert all(s["sha256"] for s in lineage["snapshots"].values())
    assert json.loads((out / "engine_config.json").read_text())["stage"] == stage
    assert stage in (out / "README.md").read_text()
    return lineage


def finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


WORDS = "the a cat dog sat ran on under mat log red blue big small happy sad fast slow".split()


def _sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_rows(kind: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = f"Question {i}: {_sentence(rng, 5)}?"
        good, bad = _sentence(rng), "no " * 6
        if kind == "pretrain":
            rows.append({"text": " ".join(_sentence(rng) for _ in range(6)) + "."})
        elif kind == "sft":
            rows.append({"prompt": prompt, "completion": " " + good})
        elif kind == "instruction":
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": good},
                    ]
                }
            )
        elif kind == "preference":
            rows.append(
                # Extra columns as the web side writes them; the engine must ignore them.
                {
                    "prompt": prompt,
                    "chosen": " " + good,
                    "rejected": " " + bad,
                    "margin": 1.0,
                    "agreement": 0.8,
                }  # fmt: skip
            )
        elif kind == "prompts":
            rows.append({"prompt": prompt})
        elif kind == "kto":
            # Unpaired ratings as the `kto` snapshot kind writes them: thumbs up on a sentence,
            # down on the padded "no no no" answer.
            rows.append({"prompt": prompt, "completion": " " + (good if i % 2 else bad),
                         "label": bool(i % 2)})  # fmt: skip
    return rows


def base_config(tiny: dict, stage: str, out, **overrides) -> dict:
    """A few-step config for `stage` on the tiny fixtures."""
    cfg = {
        "stage": stage,
        "output_dir": str(out),
        "model": tiny["policy"],
        "dataset": tiny["snap_sft"],
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "max_length": 64,
        "learning_rate": 1e-3,
        "save_steps": 100,
    }
    cfg.update(overrides)
    return cfg
