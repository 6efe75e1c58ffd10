"""What a machine has, and whether a stage config will fit a device: the one implementation,
used by the engine and by the web side (admin launch form, worker heartbeats).

The estimate follows the usual accounting for mixed-precision AdamW training (ZeRO paper,
Rajbhandari et al. 2020; activation sizes after Korthikanti et al. 2022): weights + gradients +
optimizer states (two fp32 moments, plus an fp32 master copy with bf16/fp16 weights) for the
trainable parameters, plus activations for the batch and length. It errs on the generous side:
a guard against obviously hopeless launches, not a profiler.

The model's shape comes from its config.json on disk (or the named from-scratch architecture),
never from the hub and never by instantiating the model, so the web server can estimate a run
cheaply and offline. The target device is data (a worker's GPU from its heartbeat), because the
machine that estimates is not necessarily the one that trains.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

GiB = 2**30
# Stands in for required paths an estimate does not need (the form may not have them yet).
_UNSET = "<not needed for an estimate>"


def format_bytes(n: float) -> str:
    """`1.50 GiB`, or MiB below 0.01 GiB: the unit people read memory in."""
    return f"{n / GiB:.2f} GiB" if n >= GiB / 100 else f"{n / 2**20:.1f} MiB"


# --- Inventory ------------------------------------------------------------------------------


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
    """This machine's devices as plain (JSON) data.

    `{"gpus": [{index, name, memory_total, memory_free, bf16}], "cpu": {cores, memory_total,
    memory_available}, "torch": version, "cuda": version}`; memory in bytes. The web stores
    `gpus` and `cpu` in each worker's heartbeat.
    """
    gpus: list[dict] = []
    torch_version = cuda_version = None
    try:
        import torch

        torch_version, cuda_version = torch.__version__, torch.version.cuda
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                gpus.append({"index": i, "name": torch.cuda.get_device_name(i),
                             "memory_total": int(total), "memory_free": int(free),
                             "bf16": torch.cuda.is_bf16_supported()})  # fmt: skip
    except Exception:  # noqa: BLE001 - no torch or no driver: a CPU machine
        gpus = []
    mem = _meminfo()
    cpu = {
        "cores": os.cpu_count() or 1,
        "memory_total": mem.get("MemTotal", 0),
        "memory_available": mem.get("MemAvailable", 0),
    }
    return {"gpus": gpus, "cpu": cpu, "torch": torch_version, "cuda": cuda_version}


def _cpu_device(inventory: dict) -> dict:
    cpu = inventory["cpu"]
    return {"name": f"CPU ({cpu['cores']} cores)", "kind": "cpu",
            "memory_total": cpu["memory_total"], "memory_free": cpu["memory_available"]}  # fmt: skip


def _target_device(device: str | dict | None) -> dict:
    """`{"name", "kind", "memory_total", "memory_free"}` for a device kind or a device dict."""
    if isinstance(device, dict):
        kind = device.get("kind") or ("cpu" if "cpu" in device.get("name", "").lower() else "cuda")
        return {**device, "kind": kind}
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu', 'cuda', a device dict or None, got {device!r}")
    inventory = device_inventory()
    if device == "cpu":
        return _cpu_device(inventory)
    gpus = sorted(inventory["gpus"], key=lambda g: g["memory_total"], reverse=True)
    if gpus:
        return {**gpus[0], "kind": "cuda"}
    if device == "cuda":  # asked about a GPU this machine does not have: size unknown
        return {"name": "CUDA GPU (none visible here)", "kind": "cuda",
                "memory_total": None, "memory_free": None}  # fmt: skip
    return _cpu_device(inventory)


# --- Model shape ----------------------------------------------------------------------------


def _architecture_shape(name: str, overrides: dict, vocab_size: int) -> dict:
    from .tiny import ARCHITECTURES

    spec = {**ARCHITECTURES.get(name, {}), **(overrides or {})}
    if spec.get("model_type") == "gpt2":
        return {"hidden": spec["n_embd"], "layers": spec["n_layer"], "heads": spec["n_head"],
                "kv_heads": spec["n_head"], "intermediate": 4 * spec["n_embd"],
                "vocab": vocab_size, "tied": True}  # fmt: skip
    return {
        "hidden": spec["hidden_size"], "layers": spec["num_hidden_layers"],
        "heads": spec["num_attention_heads"],
        "kv_heads": spec.get("num_key_value_heads", spec["num_attention_heads"]),
        "intermediate": spec["intermediate_size"], "vocab": vocab_size,
        "tied": spec.get("tie_word_embeddings", False),
    }  # fmt: skip


def _model_shape(model_dir: str | None) -> dict | None:
    """The shape from `<model_dir>/config.json`, or None (a hub name, or no readable config)."""
    if not model_dir:
        return None
    path = Path(model_dir) / "config.json"
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(c, dict):
        return None
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


def _params(s: dict) -> int:
    """Total parameters, counting grouped-query attention's smaller k/v projections."""
    h, i, layers = s["hidden"], s["intermediate"], s["layers"]
    kv = h * s["kv_heads"] // s["heads"]
    attn = h * h * 2 + h * kv * 2  # q, o and k, v projections
    mlp = 3 * h * i
    embed = s["vocab"] * h * (1 if s["tied"] else 2)
    return layers * (attn + mlp) + embed + layers * 2 * h  # + norms


def _lora_params(s: dict, r: int) -> int:
    """r x (in + out) for each adapted linear: q, o, k, v and the three MLP projections."""
    h, i = s["hidden"], s["intermediate"]
    kv = h * s["kv_heads"] // s["heads"]
    return s["layers"] * r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)


# --- Estimate -------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Peak training memory of a stage on a device, in bytes, and what to change if too big.

    `known` is False when the model's shape cannot be read here (e.g. a hub name with no local
    config.json): then only `device` and `advice` are meaningful. `available` is None and `fits`
    is None when the device's memory is not known.
    """

    device: str  # name, e.g. "NVIDIA H100 80GB HBM3" or "CPU (16 cores)"
    kind: str  # "cuda" or "cpu"
    known: bool = True
    parameters: int = 0
    trainable_parameters: int = 0
    weights: int = 0  # every model the stage holds (frozen reference/reward included)
    gradients: int = 0
    optimizer_states: int = 0
    activations: int = 0
    total: int = 0  # the parts + 10% (allocator fragmentation, CUDA context)
    available: int | None = None
    fits: bool | None = None
    advice: list[str] = field(default_factory=list)

    @property
    def parts(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer_states": self.optimizer_states,
            "activations": self.activations,
        }

    def as_dict(self) -> dict:
        return {**asdict(self), "parts": self.parts}


def _stage_config(config):
    """A stage config object from one, or from a dict (the launch form's, possibly incomplete)."""
    from .config import STAGES, load_config

    if not isinstance(config, dict):
        return config
    data = dict(config)
    cls = STAGES.get(data.get("stage"))
    # Paths an estimate does not read may be missing; key, type and range errors still raise.
    for name in cls.required if cls else ():
        if not data.get(name):
            data[name] = _UNSET
    return load_config(data)


def estimate_memory(config, device: str | dict | None = None) -> MemoryEstimate:
    """Peak training memory of a stage config (object or dict) on `device`.

    `device`: "cpu" (this machine's RAM), "cuda" (this machine's largest GPU), None (the largest
    GPU here, else the CPU), or a device dict `{"name", "memory_total", "memory_free"}` such as
    a GPU from a worker's heartbeat (optional `"kind"`: "cpu"/"cuda"; else a name containing
    "cpu" means the CPU). Reads only config.json files; never downloads or loads weights.
    """
    cfg = _stage_config(config)
    target = _target_device(device)
    kind = target["kind"]
    name = target.get("name") or ("CPU" if kind == "cpu" else "GPU")
    model = None if cfg.model == _UNSET else cfg.model
    if cfg.stage == "pretrain" and not model:
        shape = _architecture_shape(cfg.architecture, cfg.architecture_overrides, cfg.vocab_size)
    else:
        shape = _model_shape(model)
    if shape is None:
        where = f"{model!r} has no readable config.json here" if model else "no model is set"
        return MemoryEstimate(
            device=name, kind=kind, known=False,
            advice=[f"No estimate: {where} (a hub name is not downloaded for an estimate). "
                    "Use a local model directory to get one."],
        )  # fmt: skip

    gpu = kind == "cuda"
    half = cfg.precision in ("bf16", "fp16") or (cfg.precision == "auto" and gpu)
    wbytes = 2 if half else 4
    params = _params(shape)
    lora = cfg.use_lora
    trainable = _lora_params(shape, cfg.lora_r) if lora else params
    # QLoRA keeps the frozen base in 4-bit (~0.55 bytes a parameter with quantisation state).
    base_bytes = 0.55 if (lora and cfg.load_in_4bit and gpu) else wbytes
    # Frozen models beside the trained one: DPO's reference; PPO's reference and reward. With
    # LoRA the reference is the base model with its adapters disabled, so no copy; PPO's critic
    # is then the reward model + its own adapter, so the reward model is no copy either.
    frozen = {"dpo": 1, "ppo": 2}.get(cfg.stage, 0)
    if lora and cfg.stage in ("dpo", "ppo"):
        frozen -= 1
    weights = params * base_bytes + frozen * params * wbytes
    if cfg.stage == "ppo" and not lora:
        weights += params * wbytes  # the value model, which trains in full
        trainable += params
    elif cfg.stage == "ppo":
        trainable += _lora_params(shape, cfg.lora_r)  # the critic's adapter
    gradients = trainable * wbytes
    optimizer = trainable * 8 + (trainable * 4 if half else 0)  # AdamW moments (+ master copy)
    batch = cfg.per_device_train_batch_size
    if cfg.stage in ("dpo", "reward"):
        batch *= 2  # chosen and rejected go through the model together
    length = cfg.max_length
    if cfg.stage == "ppo":
        length = min(length, cfg.max_prompt_length + cfg.response_length)
    h, layers, heads = shape["hidden"], shape["layers"], shape["heads"]
    attention_scores = 5 * heads * length / h  # eager attention; sdpa/flash keep less
    per_token_layer = (34 + attention_scores) * h * (wbytes / 2)
    if cfg.gradient_checkpointing:
        activations = batch * length * h * wbytes * layers + batch * length * per_token_layer
    else:
        activations = batch * length * per_token_layer * layers
    activations += batch * length * shape["vocab"] * 4 * 2  # fp32 logits and their gradient
    if cfg.stage == "ppo":
        # The rollout: a KV cache for each generated chunk, and the chunk's fp32 logits (the
        # policy's and the reference's log-softmax), held while its log-probs are taken.
        chunk = cfg.local_rollout_forward_batch_size
        kv = h * shape["kv_heads"] // heads
        kv_cache = chunk * length * layers * 2 * kv * wbytes
        activations = max(activations, kv_cache + chunk * length * shape["vocab"] * 4 * 2)
    parts = [int(weights), int(gradients), int(optimizer), int(activations)]
    total = int(sum(parts) * 1.1)  # allocator fragmentation and CUDA context

    available = target.get("memory_free") or target.get("memory_total") or None
    fits = None if available is None else total <= available
    advice = []
    if fits is False:
        if not lora and cfg.stage != "pretrain":
            advice.append("use_lora: true trains adapters only (gradients and optimizer states "
                          f"shrink from {format_bytes(gradients + optimizer)} to "
                          f"{format_bytes(_lora_params(shape, cfg.lora_r) * (wbytes + 12))}).")  # fmt: skip
        if gpu and lora and not cfg.load_in_4bit:
            advice.append("load_in_4bit: true (QLoRA) shrinks the frozen weights ~4x.")
        if not cfg.gradient_checkpointing:
            advice.append("gradient_checkpointing: true keeps one activation per layer "
                          "(~20% slower).")  # fmt: skip
        if cfg.per_device_train_batch_size > 1:
            advice.append("A smaller per_device_train_batch_size with a larger "
                          "gradient_accumulation_steps keeps the effective batch.")  # fmt: skip
        advice.append("A shorter max_length, or a device with more memory.")
    return MemoryEstimate(
        device=name, kind=kind, parameters=params, trainable_parameters=trainable,
        weights=parts[0], gradients=parts[1], optimizer_states=parts[2], activations=parts[3],
        total=total, available=available, fits=fits, advice=advice,
    )  # fmt: skip
