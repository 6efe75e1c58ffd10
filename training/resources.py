"""Devices of this machine and a memory estimate of a run against a device.

The engine has no `resources` module yet, so this lives on the web side; it needs torch only
for the GPU inventory, and the estimate reads the parent model's config.json (no weights).

The estimate follows the usual accounting for mixed-precision AdamW training (ZeRO paper,
Rajbhandari et al. 2020; activation sizes after Korthikanti et al. 2022):
weights + gradients + optimizer states (two fp32 moments, plus an fp32 master copy with
bf16/fp16 weights) for the trainable parameters, plus activations for the batch and length.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

GiB = 2**30


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().split("\n"):
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def device_inventory() -> dict:
    """{"gpus": [{index, name, memory_total, memory_free}], "cpu": {cores, memory_total, memory_available}}."""
    gpus = []
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                gpus.append({"index": i, "name": torch.cuda.get_device_name(i),
                             "memory_total": int(total), "memory_free": int(free)})  # fmt: skip
    except Exception:  # noqa: BLE001 - no torch or no driver: a CPU worker
        gpus = []
    mem = _meminfo()
    cpu = {
        "cores": os.cpu_count() or 1,
        "memory_total": mem.get("MemTotal", 0),
        "memory_available": mem.get("MemAvailable", 0),
    }
    return {"gpus": gpus, "cpu": cpu}


# Shapes of the engine's named from-scratch architectures (training/engine/tiny.py), read lazily.
def _architecture_shape(name: str, overrides: dict, vocab_size: int) -> dict:
    from training.engine.tiny import ARCHITECTURES

    spec = {**ARCHITECTURES.get(name, {}), **(overrides or {})}
    if spec.get("model_type") == "gpt2":
        return {"hidden": spec["n_embd"], "layers": spec["n_layer"], "heads": spec["n_head"],
                "intermediate": 4 * spec["n_embd"], "vocab": vocab_size, "tied": True,
                "kv_heads": spec["n_head"]}  # fmt: skip
    return {
        "hidden": spec["hidden_size"], "layers": spec["num_hidden_layers"],
        "heads": spec["num_attention_heads"],
        "kv_heads": spec.get("num_key_value_heads", spec["num_attention_heads"]),
        "intermediate": spec["intermediate_size"], "vocab": vocab_size,
        "tied": spec.get("tie_word_embeddings", False),
    }  # fmt: skip


def _model_shape(model_dir: str | None) -> dict | None:
    if not model_dir:
        return None
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    c = json.loads(path.read_text())
    hidden = c.get("hidden_size") or c.get("n_embd")
    layers = c.get("num_hidden_layers") or c.get("n_layer")
    heads = c.get("num_attention_heads") or c.get("n_head") or 1
    if not hidden or not layers:
        return None
    return {
        "hidden": hidden, "layers": layers, "heads": heads,
        "kv_heads": c.get("num_key_value_heads") or heads,
        "intermediate": c.get("intermediate_size") or c.get("n_inner") or 4 * hidden,
        "vocab": c.get("vocab_size", 32000), "tied": c.get("tie_word_embeddings", False),
    }  # fmt: skip


def _params(s: dict) -> tuple[int, int]:
    """(total parameters, parameters in the linear layers LoRA attaches to)."""
    h, i, layers = s["hidden"], s["intermediate"], s["layers"]
    kv = h * s["kv_heads"] // s["heads"]
    attn = h * h * 2 + h * kv * 2  # q, o and k, v projections
    mlp = 3 * h * i
    linear = layers * (attn + mlp)
    embed = s["vocab"] * h * (1 if s["tied"] else 2)
    return linear + embed + layers * 2 * h, linear


def _lora_params(s: dict, r: int) -> int:
    h, i = s["hidden"], s["intermediate"]
    kv = h * s["kv_heads"] // s["heads"]
    per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
    return s["layers"] * per_layer


def estimate_memory(config: dict, device: dict | None = None) -> dict:
    """Bytes per part, the total, whether it fits the device and what to change if not.

    `config` is the engine config as a dict; `device` is {"name", "memory_total",
    "memory_free"} (a GPU) or None for "the best GPU here, else this CPU's RAM".
    """
    stage = config.get("stage")
    if stage == "pretrain" and not config.get("model"):
        shape = _architecture_shape(
            config.get("architecture", "llama-tiny"),
            config.get("architecture_overrides") or {},
            config.get("vocab_size", 8000),
        )
    else:
        shape = _model_shape(config.get("model"))
    if device is None:
        inv = device_inventory()
        gpus = sorted(inv["gpus"], key=lambda g: g["memory_total"], reverse=True)
        device = gpus[0] if gpus else {
            "name": f"CPU ({inv['cpu']['cores']} cores)",
            "memory_total": inv["cpu"]["memory_total"],
            "memory_free": inv["cpu"]["memory_available"],
        }  # fmt: skip
    if shape is None:
        return {"known": False, "device": device,
                "advice": ["The parent model's config.json is not readable here (a hub name?); "
                           "no estimate."]}  # fmt: skip
    is_gpu = "cpu" not in device.get("name", "").lower()
    precision = config.get("precision", "auto")
    half = precision in ("bf16", "fp16") or (precision == "auto" and is_gpu)
    wbytes = 2 if half else 4
    total_params, linear_params = _params(shape)
    lora = bool(config.get("use_lora"))
    trainable = _lora_params(shape, int(config.get("lora_r", 16))) if lora else total_params
    # Copies of the model that a stage holds beside the trained one (frozen, weights only).
    frozen_copies = {"dpo": 1, "ppo": 2}.get(stage, 0)  # reference; PPO: reference + reward
    weights = total_params * wbytes * (1 + frozen_copies)
    if stage == "ppo":
        weights += total_params * wbytes  # value model (trained)
        trainable *= 2
    grads = trainable * wbytes
    optimizer = trainable * 8 + (trainable * 4 if half else 0)  # AdamW moments (+ master copy)
    batch = int(config.get("per_device_train_batch_size", 8))
    if stage in ("dpo", "reward"):
        batch *= 2  # chosen and rejected go through the model together
    length = int(config.get("max_length", 1024))
    if stage == "ppo":
        length = int(config.get("max_prompt_length", 512)) + int(config.get("response_length", 53))
    h, layers, heads = shape["hidden"], shape["layers"], shape["heads"]
    attention_scores = 5 * heads * length / h  # eager attention; sdpa/flash keep less
    per_token_layer = (34 + attention_scores) * h * (wbytes / 2)
    if config.get("gradient_checkpointing"):
        activations = batch * length * h * wbytes * layers + batch * length * per_token_layer
    else:
        activations = batch * length * per_token_layer * layers
    logits = batch * length * shape["vocab"] * 4 * 2  # fp32 logits and their gradient
    activations += logits
    parts = {
        "weights": int(weights),
        "gradients": int(grads),
        "optimizer": int(optimizer),
        "activations": int(activations),
    }
    total = int(sum(parts.values()) * 1.1)  # allocator fragmentation and CUDA context
    available = device.get("memory_free") or device.get("memory_total") or 0
    fits = total <= available if available else True
    advice = []
    if not fits:
        if not lora and stage != "pretrain":
            advice.append("use_lora: true trains adapters only (gradients and optimizer states "
                          f"shrink from {GiB_str(grads + optimizer)} to a few MB).")  # fmt: skip
        if not config.get("gradient_checkpointing"):
            advice.append("gradient_checkpointing: true keeps one activation per layer "
                          "(~20% slower).")  # fmt: skip
        if batch > 1:
            advice.append("A smaller per_device_train_batch_size with a larger "
                          "gradient_accumulation_steps keeps the effective batch.")  # fmt: skip
        advice.append("A shorter max_length, or a device with more memory.")
    return {
        "known": True,
        "parameters": total_params,
        "trainable_parameters": trainable,
        "parts": parts,
        "total": total,
        "device": device,
        "available": available,
        "fits": fits,
        "advice": advice,
    }


def GiB_str(n: float) -> str:  # noqa: N802 - reads as the unit
    return f"{n / GiB:.2f} GiB" if n >= GiB / 100 else f"{n / 2**20:.1f} MiB"
