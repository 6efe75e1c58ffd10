"""What a machine has, and whether a stage config will fit a device: the one implementation,
used by the engine and by the web side (admin launch form, worker heartbeats).

The estimate follows the usual accounting for mixed-precision AdamW training (ZeRO paper,
Rajbhandari et al. 2020; activation sizes after Korthikanti et al. 2022), for the layout the
engine really uses (runtime.weights_dtype): trained weights, their gradients and AdamW's two
moments in float32 (16 bytes a trained parameter, no separate master copy); frozen models (a
reference, a reward model, the base under LoRA) in the run's half precision, or in the 4-bit
layout of QLoRA (linear layers 4-bit, embeddings and norms not); activations of the sdpa or
flash-attention kernels (no score matrix: only eager attention materialises one); full-vocabulary
logits only for stages with a language-model head (a reward model has one score); and PPO's
rollout (the KV cache of generation and the policy's and reference's logits of the responses).
It is a guard against hopeless launches, not a profiler.

The model's shape comes from its config.json: on disk, the named from-scratch architecture, or
for a hub name the config.json alone (the Hugging Face cache, else a download of that one file;
never weights, never instantiating the model). The target device is data (a worker's GPU from
its heartbeat), because the machine that estimates is not necessarily the one that trains; its
capacity is the card's total memory less a fixed reserve, not its free memory of the moment.

The inventory never imports torch: a Celery worker's parent process reads it for the heartbeat,
and a CUDA context there would break every child it forks ("Cannot re-initialize CUDA in forked
subprocess") and hold memory on every GPU. GPUs are read through nvidia-smi (NVML).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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


NVIDIA_SMI_QUERY = "index,uuid,name,memory.total,memory.free,compute_cap"


def parse_nvidia_smi(text: str, visible: str | None = None) -> list[dict]:
    """GPUs from `nvidia-smi --query-gpu=NVIDIA_SMI_QUERY --format=csv,noheader,nounits`
    output (memory in MiB), as the process sees them under CUDA_VISIBLE_DEVICES `visible`
    (indices or UUIDs; nvidia-smi itself lists every GPU of the machine). `index` stays the
    physical index, which is what a person reads on the machine."""
    gpus = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 5 or not cells[0].isdigit():
            continue
        index, uuid, name, total, free = cells[:5]
        cap = cells[5] if len(cells) > 5 else ""
        try:
            major = int(float(cap)) if cap else 0
            total_b, free_b = int(float(total)) * 2**20, int(float(free)) * 2**20
        except ValueError:
            continue
        gpus.append({"index": int(index), "uuid": uuid, "name": name, "memory_total": total_b,
                     "memory_free": free_b, "bf16": major >= 8})  # fmt: skip
    if visible is None:
        return gpus
    by_key = {str(g["index"]): g for g in gpus} | {g["uuid"]: g for g in gpus}
    out = []
    for key in (k.strip() for k in visible.split(",")):
        if not key:
            break
        gpu = by_key.get(key) or next(
            (g for g in gpus if key.startswith("GPU-") and g["uuid"].startswith(key)), None
        )
        if gpu is None:
            break  # CUDA stops at the first entry it cannot match
        out.append(gpu)
    return out


def gpu_inventory() -> list[dict]:
    """The GPUs this process may use, read with nvidia-smi (no CUDA context, no torch); [] when
    there is no NVIDIA driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run(
            [exe, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        if proc.returncode != 0:  # an old driver without compute_cap
            proc = subprocess.run(
                [exe, f"--query-gpu={NVIDIA_SMI_QUERY.rsplit(',', 1)[0]}",
                 "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=20, check=False,
            )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    return parse_nvidia_smi(proc.stdout, os.environ.get("CUDA_VISIBLE_DEVICES"))


def device_inventory() -> dict:
    """This machine's devices as plain (JSON) data, without importing torch.

    `{"gpus": [{index, uuid, name, memory_total, memory_free, bf16}], "cpu": {cores,
    memory_total, memory_available}, "torch": version}`; memory in bytes, `index` the physical
    index. The web stores `gpus` and `cpu` in each worker's heartbeat.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = None
    mem = _meminfo()
    cpu = {
        "cores": os.cpu_count() or 1,
        "memory_total": mem.get("MemTotal", 0),
        "memory_available": mem.get("MemAvailable", 0),
    }
    return {"gpus": gpu_inventory(), "cpu": cpu, "torch": torch_version}


def device_label() -> str:
    """What a run's page says it ran on: the physical GPU (`GPU 3: NVIDIA H100 80GB HBM3, 80
    GiB`), which `cuda:0` would not tell under CUDA_VISIBLE_DEVICES; else the CPU threads."""
    gpus = gpu_inventory()
    if gpus:
        g = gpus[0]  # the one a process trains on (runtime.pin_one_device)
        return f"GPU {g['index']}: {g['name']}, {g['memory_total'] / GiB:.0f} GiB"
    import torch

    return f"cpu ({torch.get_num_threads()} threads)"


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


def _shape_from_config(c: dict) -> dict | None:
    if not isinstance(c, dict):
        return None
    c = {**c, **(c.get("text_config") or {})}  # multimodal configs nest the language model
    hidden = c.get("hidden_size") or c.get("n_embd")
    layers = c.get("num_hidden_layers") or c.get("n_layer")
    heads = c.get("num_attention_heads") or c.get("n_head") or 1
    if not hidden or not layers:
        return None
    return {
        "hidden": hidden, "layers": layers, "heads": heads,
        "kv_heads": c.get("num_key_value_heads") or heads,
        "intermediate": c.get("intermediate_size") or c.get("n_inner") or 4 * hidden,
        "vocab": c.get("vocab_size", 32000),
        # gpt2 ties its head without saying so; llama-like configs default to untied
        "tied": c.get("tie_word_embeddings", c.get("model_type") == "gpt2"),
    }  # fmt: skip


def _looks_like_hub_name(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", ".", "~")) and not Path(name).exists()


class ShapeUnknown(Exception):
    """Why a model's shape could not be read; the message is shown to the user."""


def _model_shape(model: str | None) -> dict:
    """The shape from `<model>/config.json` for a local directory, or from the hub's
    config.json for a hub name (the cache first; never weights). Raises ShapeUnknown."""
    if not model:
        raise ShapeUnknown("no model is set")
    if _looks_like_hub_name(model):
        path = _hub_config(model)
    else:
        path = Path(model) / "config.json"
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ShapeUnknown(f"{model!r} has no readable config.json") from None
    shape = _shape_from_config(c)
    if shape is None:
        raise ShapeUnknown(f"the config.json of {model!r} names no hidden size or layer count")
    return shape


def _hub_config(name: str) -> Path:
    """The path of a hub model's config.json: from the local Hugging Face cache, else fetched
    alone (with HF_TOKEN for gated models)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(name, "config.json"))
    except GatedRepoError:
        raise ShapeUnknown(
            f"{name!r} is gated: set HF_TOKEN to a token that has accepted its licence"
        ) from None
    except RepositoryNotFoundError:
        raise ShapeUnknown(f"{name!r} is not a model on the Hugging Face hub") from None
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise ShapeUnknown(
                f"{name!r}: its config.json is not in the Hugging Face cache and HF_HUB_OFFLINE "
                "is set, so it is not fetched (unset it, or use a local model directory)"
            ) from None
        raise ShapeUnknown(f"{name!r}: the hub could not be reached for its config.json") from None
    except Exception as exc:  # noqa: BLE001 - an estimate never fails a page
        raise ShapeUnknown(
            f"{name!r}: could not read its config.json from the hub ({exc})"
        ) from None


def _embeddings(s: dict) -> int:
    return s["vocab"] * s["hidden"] * (1 if s["tied"] else 2)


def _linear_params(s: dict) -> int:
    """Parameters of the transformer blocks' linear layers (what QLoRA quantizes)."""
    h, i = s["hidden"], s["intermediate"]
    kv = h * s["kv_heads"] // s["heads"]
    attn = h * h * 2 + h * kv * 2  # q, o and k, v projections (grouped-query k/v smaller)
    return s["layers"] * (attn + 3 * h * i)  # + gate, up, down


def _params(s: dict) -> int:
    """Total parameters: the blocks' linears, the embeddings (and an untied head), norms."""
    return _linear_params(s) + _embeddings(s) + s["layers"] * 2 * s["hidden"]


def _lora_params(s: dict, r: int) -> int:
    """r x (in + out) for each adapted linear: q, o, k, v and the three MLP projections."""
    h, i = s["hidden"], s["intermediate"]
    kv = h * s["kv_heads"] // s["heads"]
    return s["layers"] * r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)


# Bytes a parameter of a 4-bit (NF4, double-quantized) linear layer takes: half a byte, plus
# its quantization state (one fp8 absmax per 64 weights, one fp32 per 256 of those).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# Stages that compute full-vocabulary logits (a language-model head); a reward model scores.
LM_HEAD_STAGES = ("pretrain", "sft", "instruction", "dpo", "ppo", "grpo", "rloo", "kto")
# Online RL stages that sample completions from the policy (TRL's GRPO and RLOO).
SAMPLING_STAGES = ("grpo", "rloo")
# What a GPU cannot give a run whatever the estimate: the CUDA context, cuBLAS/cuDNN workspaces.
GPU_RESERVE = 1 * GiB
# Allocator fragmentation, on top of the parts.
FRAGMENTATION = 0.10


# --- Estimate -------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Peak training memory of a stage on a device, in bytes, and what to change if too big.

    `known` is False when the model's shape cannot be read (then only `device` and `advice`
    are meaningful). `available` is the device's total memory less GPU_RESERVE (a CPU: its
    available RAM); it and `fits` are None when the device's memory is not known.
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
    logits: int = 0  # full-vocabulary logits and their gradient (LM-head stages)
    rollout: int = 0  # PPO: KV cache of generation, logits of the responses
    total: int = 0  # the parts + FRAGMENTATION
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
            "logits": self.logits,
            "rollout": self.rollout,
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


def _available(target: dict) -> int | None:
    if target["kind"] == "cuda":
        total = target.get("memory_total")
        return None if not total else max(int(total) - GPU_RESERVE, 0)
    return target.get("memory_free") or target.get("memory_total") or None


def estimate_memory(config, device: str | dict | None = None) -> MemoryEstimate:
    """Peak training memory of a stage config (object or dict) on `device`.

    `device`: "cpu" (this machine's RAM), "cuda" (this machine's largest GPU), None (the largest
    GPU here, else the CPU), or a device dict `{"name", "memory_total", "memory_free"}` such as
    a GPU from a worker's heartbeat (optional `"kind"`: "cpu"/"cuda"; else a name containing
    "cpu" means the CPU). Reads only config.json files; never loads weights.
    """
    cfg = _stage_config(config)
    target = _target_device(device)
    kind = target["kind"]
    name = target.get("name") or ("CPU" if kind == "cpu" else "GPU")
    model = None if cfg.model == _UNSET else cfg.model
    try:
        if cfg.stage == "pretrain" and not model:
            shape = _architecture_shape(
                cfg.architecture, cfg.architecture_overrides, cfg.vocab_size
            )
        else:
            shape = _model_shape(model)
    except ShapeUnknown as exc:
        return MemoryEstimate(device=name, kind=kind, known=False,
                              advice=[f"No estimate: {exc}."])  # fmt: skip

    gpu = kind == "cuda"
    # What runtime.choose_precision picks: half precision on a GPU unless fp32 is asked for.
    half = cfg.precision in ("bf16", "fp16") or (cfg.precision == "auto" and gpu)
    hbytes = 2 if half else 4  # frozen weights and activations
    params = _params(shape)
    lora = cfg.use_lora
    qlora = lora and cfg.load_in_4bit
    h, layers = shape["hidden"], shape["layers"]

    # Weights. The trained model: float32 in full; under LoRA a frozen half-precision base
    # (4-bit linears with QLoRA) plus float32 adapters.
    trainable = _lora_params(shape, cfg.lora_r) if lora else params
    if not lora:
        weights = params * 4
    elif qlora:
        weights = _linear_params(shape) * NF4_BYTES + (params - _linear_params(shape)) * hbytes
        weights += trainable * 4
    else:
        weights = params * hbytes + trainable * 4
    # Frozen models beside it: DPO's and PPO's reference (none with LoRA: the base with its
    # adapters disabled), PPO's reward model; PPO's value model trains in full (with LoRA it
    # is the reward model's base + an adapter).
    frozen = {"dpo": 1, "kto": 1, "ppo": 2}.get(cfg.stage, 0) - (
        1 if lora and cfg.stage in ("dpo", "kto", "ppo") else 0
    )
    if cfg.stage in SAMPLING_STAGES:
        # The reference when beta > 0 (none with LoRA), the reward model when there is one
        # (counted at the policy's size: it is usually the same base).
        frozen = int(cfg.beta > 0 and not lora) + int(bool(cfg.reward_model))
    weights += frozen * params * hbytes
    if cfg.stage == "ppo" and not lora:
        weights += params * 4  # the value model, a full copy trained in float32
        trainable += params
    elif cfg.stage == "ppo":
        # The critic is the reward model's base (counted frozen above) + its own adapter.
        weights += _lora_params(shape, cfg.lora_r) * 4
        trainable += _lora_params(shape, cfg.lora_r)
    gradients = trainable * 4
    optimizer = trainable * 8  # AdamW's two float32 moments

    # Activations of a training forward kept for the backward pass, per token and layer
    # (Korthikanti et al.: 34 h bytes in half precision with sdpa/flash; eager attention also
    # keeps the softmax scores, 5 x heads x length bytes more).
    batch = cfg.per_device_train_batch_size
    if cfg.stage in ("dpo", "reward", "kto"):
        batch *= 2  # chosen and rejected (KTO: the rows and their mismatched KL pairs) together
    length = cfg.max_length
    if cfg.stage == "ppo":
        length = min(length, cfg.max_prompt_length + cfg.response_length)
    elif cfg.stage in SAMPLING_STAGES:
        length = cfg.max_prompt_length + cfg.max_completion_length
    per_token_layer = 34 * h * hbytes / 2
    if (cfg.attn_implementation or "sdpa") == "eager":
        per_token_layer += 5 * shape["heads"] * length * hbytes / 2
    tokens = batch * length
    if cfg.gradient_checkpointing:  # each layer's input, and one layer recomputed at a time
        activations = tokens * h * hbytes * layers + tokens * per_token_layer
    else:
        activations = tokens * per_token_layer * layers
    # fp32 logits and their gradient (the loss upcasts), only under a language-model head.
    logits = tokens * shape["vocab"] * 4 * 2 if cfg.stage in LM_HEAD_STAGES else 0
    rollout = 0
    if cfg.stage == "ppo":
        # Generation's KV cache for a rollout batch, and float32 logits of the responses from
        # the policy and the reference.
        rollout_batch = min(
            cfg.local_rollout_forward_batch_size,
            cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
        )
        kv_width = h * shape["kv_heads"] // shape["heads"]
        rollout = 2 * layers * kv_width * rollout_batch * length * hbytes
        rollout += 2 * rollout_batch * cfg.response_length * shape["vocab"] * 4
    elif cfg.stage in SAMPLING_STAGES:
        # Generation's KV cache for the micro-batch's completions, and the float32 logits of
        # the completions from the policy (and the reference when beta > 0).
        kv_width = h * shape["kv_heads"] // shape["heads"]
        rollout = 2 * layers * kv_width * batch * length * hbytes
        rollout += (1 + int(cfg.beta > 0)) * batch * cfg.max_completion_length * shape["vocab"] * 4
    parts = [int(weights), int(gradients), int(optimizer), int(activations), int(logits),
             int(rollout)]  # fmt: skip
    total = int(sum(parts) * (1 + FRAGMENTATION))

    available = _available(target)
    fits = None if available is None else total <= available
    advice = []
    if fits is False:
        if not lora and cfg.stage != "pretrain":
            advice.append("use_lora: true trains adapters only (gradients and optimizer states "
                          f"shrink from {format_bytes(gradients + optimizer)} to "
                          f"{format_bytes(_lora_params(shape, cfg.lora_r) * 12)}).")  # fmt: skip
        if gpu and lora and not cfg.load_in_4bit:
            advice.append("load_in_4bit: true (QLoRA, needs bitsandbytes) shrinks the frozen "
                          "linear layers ~4x.")  # fmt: skip
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
        logits=parts[4], rollout=parts[5], total=total, available=available, fits=fits,
        advice=advice,
    )  # fmt: skip
