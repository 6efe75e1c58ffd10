"""Metadata written beside every output model: enough to know what it is and rebuild it."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from .config import StageConfig, config_to_dict

ENGINE_VERSION = "0.1.0"


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def parents_of(cfg: StageConfig) -> dict:
    names = ("model", "ref_model", "reward_model", "value_model", "tokenizer")
    return {n: getattr(cfg, n) for n in names if getattr(cfg, n, None)}


def write_artifacts(
    out_dir: Path,
    cfg: StageConfig,
    *,
    snapshots: dict[str, dict],
    metrics: dict,
    global_step: int,
    device: str,
) -> dict:
    """engine_config.json, lineage.json, metrics.json and README.md (written last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = config_to_dict(cfg)
    lineage = {
        "stage": cfg.stage,
        "snapshots": snapshots,
        "parent": parents_of(cfg),
        "engine_version": ENGINE_VERSION,
        "versions": _versions(),
        "device": device,
        "global_step": global_step,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_json(out_dir / "engine_config.json", config)
    _write_json(out_dir / "lineage.json", lineage)
    _write_json(out_dir / "metrics.json", metrics)
    (out_dir / "README.md").write_text(model_card(config, lineage, metrics), encoding="utf-8")
    return lineage


_KEY_OPTIONS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "lr_scheduler_type", "warmup_steps", "seed",
    "use_lora", "lora_r", "beta", "kl_coef", "response_length", "architecture", "packing",
)  # fmt: skip

_STAGE_TITLES = {
    "pretrain": "Base pretraining (causal LM)",
    "sft": "Supervised fine-tuning",
    "instruction": "Instruction tuning",
    "reward": "Reward model",
    "ppo": "PPO policy (RLHF)",
    "dpo": "DPO policy",
    "grpo": "GRPO policy (online RL)",
    "rloo": "RLOO policy (online RL)",
    "kto": "KTO policy",
}


def model_card(config: dict, lineage: dict, metrics: dict) -> str:
    stage = config["stage"]
    lines = [
        "---",
        "library_name: transformers",
        f"tags: [rlhf-platform, {stage}, trl]",
        "---",
        "",
        f"# {Path(config['output_dir']).name}",
        "",
        f"{_STAGE_TITLES.get(stage, stage)} trained by the RLHF platform's training engine "
        f"(v{lineage['engine_version']}) on {lineage['device']}, {lineage['global_step']} optimizer steps, "
        f"finished {lineage['finished_at']}.",
        "",
        "## Lineage",
        "",
    ]
    for role, name in lineage["parent"].items():
        lines.append(f"- {role}: `{name}`")
    if not lineage["parent"]:
        lines.append("- trained from scratch")
    for field_name, snap in lineage["snapshots"].items():
        lines.append(
            f"- {field_name}: snapshot `{snap.get('path')}` ({snap.get('kind')}, "
            f"sha256 `{snap.get('sha256')}`, rows {snap.get('rows')})"
        )
    lines += ["", "## Training options", "", "| option | value |", "|---|---|"]
    for key in _KEY_OPTIONS:
        if key in config:
            lines.append(f"| {key} | {config[key]} |")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        for key, value in metrics.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"| {key} | {shown} |")
    else:
        lines.append("No held-out metrics (the snapshot has no test split).")
    versions = ", ".join(f"{k} {v}" for k, v in lineage["versions"].items())
    lines += [
        "",
        "## Reproduce",
        "",
        "The full config is in `engine_config.json`; with the same snapshots in place:",
        "",
        "```bash",
        "python -m training.engine engine_config.json",
        "```",
        "",
        f"Library versions: {versions}.",
        "",
    ]
    return "\n".join(lines)
