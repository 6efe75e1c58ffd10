"""What the machine has and whether a config will fit, for the admin launch form.

The estimate is deliberately simple (weights + gradients + AdamW states + activations) and
errs on the generous side; it is a guard against obviously hopeless launches, not a profiler.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

GIB = 1024**3


def device_inventory() -> dict:
    """GPUs (name, total/free memory), CPU count and RAM, as plain data."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            props = torch.cuda.get_device_properties(i)
            gpus.append(
                {
                    "index": i,
                    "name": props.name,
                    "memory_total": total,
                    "memory_free": free,
                    "bf16": torch.cuda.is_bf16_supported(),
                }
            )
    ram_total = ram_free = None
    try:
        info = dict(
            line.split(":", 1)
            for line in Path("/proc/meminfo").read_text().split("\n")
            if ":" in line
        )
        ram_total = int(info["MemTotal"].split()[0]) * 1024
        ram_free = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    return {
        "gpus": gpus,
        "cpu_count": os.cpu_count(),
        "ram_total": ram_total,
        "ram_available": ram_free,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


@dataclass
class MemoryEstimate:
    device: str
    parameters: int
    trainable_parameters: int
    weights: int  # bytes, all models the stage holds
    gradients: int
    optimizer_states: int
    activations: int
    total: int
    available: int | None
    fits: bool
    advice: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _model_shape(name: str) -> tuple[int, dict]:
    """Parameter count and config of a model, without loading weights (meta device)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(name)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters()), config.to_dict()


def estimate_memory(config, device: str | None = None) -> MemoryEstimate:
    """Peak training memory of a stage config on `device` ('cuda' / 'cpu'; default: best)."""
    import torch

    from .config import load_config
    from .tiny import ARCHITECTURES

    cfg = (
        config if hasattr(config, "stage") and not isinstance(config, dict) else load_config(config)
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.model:
        params, shape = _model_shape(cfg.model)
    else:
        shape = dict(ARCHITECTURES[cfg.architecture])
        h = shape.get("hidden_size", shape.get("n_embd"))
        layers = shape.get("num_hidden_layers", shape.get("n_layer"))
        inter = shape.get("intermediate_size", 4 * h)
        params = layers * (4 * h * h + 3 * h * inter) + 2 * cfg.vocab_size * h
        shape = {"hidden_size": h, "num_hidden_layers": layers, "vocab_size": cfg.vocab_size}
    hidden = shape.get("hidden_size") or shape.get("n_embd") or 1024
    layers = shape.get("num_hidden_layers") or shape.get("n_layer") or 12
    vocab = shape.get("vocab_size") or 32000

    half = device == "cuda" and cfg.precision in ("auto", "bf16", "fp16")
    bytes_per = 2 if half else 4
    weight_bytes = 0.55 if (cfg.use_lora and cfg.load_in_4bit and device == "cuda") else bytes_per
    if cfg.use_lora:
        # r x (in + out) per adapted linear; ~7 linears per Llama block.
        trainable = int(7 * layers * cfg.lora_r * 2 * hidden * 1.5)
    else:
        trainable = params
    # Extra frozen models: DPO's reference; PPO's reference, reward and value (value trains).
    copies = {"dpo": 1, "ppo": 3}.get(cfg.stage, 0)
    if cfg.use_lora and cfg.stage in ("dpo", "ppo"):
        copies -= 1  # the reference is the base model with adapters disabled
    if cfg.stage == "ppo":
        trainable += params  # the value model trains in full
    weights = int(params * weight_bytes + copies * params * bytes_per)
    gradients = trainable * bytes_per
    optimizer = trainable * 8  # AdamW: fp32 first and second moments
    seq = cfg.max_length
    if cfg.stage == "ppo":
        seq = min(seq, cfg.max_prompt_length + cfg.response_length)
    batch = cfg.per_device_train_batch_size * (2 if cfg.stage in ("reward", "dpo") else 1)
    per_layer = 34 * batch * seq * hidden * (bytes_per / 2)  # Korthikanti et al., no recompute
    if cfg.gradient_checkpointing:
        per_layer = 2 * batch * seq * hidden * bytes_per
    activations = int(per_layer * layers + batch * seq * vocab * 4 * 2)  # + fp32 logits & grads
    total = int((weights + gradients + optimizer + activations) * 1.15)  # allocator slack

    available = None
    if device == "cuda" and torch.cuda.is_available():
        available = torch.cuda.mem_get_info(0)[0]
    elif device == "cpu":
        available = device_inventory()["ram_available"]
    fits = available is None or total <= available
    advice = []
    if not fits:
        if not cfg.use_lora:
            advice.append("use_lora: true trains adapters only (far smaller gradients/optimizer).")
        if device == "cuda" and cfg.use_lora and not cfg.load_in_4bit:
            advice.append("load_in_4bit: true (QLoRA) shrinks the frozen weights ~4x.")
        if not cfg.gradient_checkpointing:
            advice.append("gradient_checkpointing: true cuts activation memory (~20% slower).")
        if cfg.per_device_train_batch_size > 1:
            advice.append(
                "Lower per_device_train_batch_size and raise gradient_accumulation_steps."
            )
        advice.append("Lower max_length if your data allows it.")
    return MemoryEstimate(
        device=device,
        parameters=params,
        trainable_parameters=trainable,
        weights=weights,
        gradients=gradients,
        optimizer_states=optimizer,
        activations=activations,
        total=total,
        available=available,
        fits=fits,
        advice=advice,
    )
