"""Launch presets: a stage and the options an engineer would otherwise type, for the launch
form and its links (`?preset=`)."""

from __future__ import annotations

import dataclasses

from training.engine import STAGES

# Paths (dataset, model, reward_model, output_dir) are filled in from the chosen snapshot and
# artifacts at launch (training/runs.py). `default` marks the preset a link pre-fills for a
# stage that has several (`stage_preset`).
PRESETS: dict[str, dict] = {
    "pretrain-tiny": {
        "stage": "pretrain",
        "label": "Pretrain tiny (llama-tiny from scratch; minutes on a CPU)",
        "config": {"architecture": "llama-tiny", "vocab_size": 2000, "max_length": 128,
                   "max_steps": 200, "per_device_train_batch_size": 8, "save_steps": 50},
    },
    "pretrain-small": {
        "stage": "pretrain",
        "label": "Pretrain small (llama-60m from scratch; a GPU)",
        "config": {"architecture": "llama-60m", "vocab_size": 16000, "max_length": 512,
                   "num_train_epochs": 1, "per_device_train_batch_size": 16, "save_steps": 500},
    },
    # A new team's first run: LoRA on whatever base it registered, a few short steps that a
    # CPU finishes in minutes on a snapshot of a handful of rows (max_steps, not epochs, so a
    # tiny snapshot is simply repeated). It proves the chain, not the model.
    "sft-first-try": {
        "stage": "sft",
        "label": "SFT — first try (CPU, minutes)",
        "config": {"use_lora": True, "lora_r": 8, "lora_alpha": 16, "learning_rate": 2e-4,
                   "max_steps": 20, "max_length": 256, "per_device_train_batch_size": 2,
                   "precision": "fp32", "gradient_checkpointing": False, "save_steps": 10},
    },
    "sft-full": {
        "stage": "sft",
        "label": "SFT, all weights",
        "config": {"learning_rate": 2e-5, "num_train_epochs": 3, "max_length": 1024,
                   "per_device_train_batch_size": 8, "save_steps": 200},
    },
    "sft-lora": {
        "stage": "sft",
        "default": True,
        "label": "SFT with LoRA adapters (merged at the end)",
        "config": {"use_lora": True, "lora_r": 16, "lora_alpha": 32, "learning_rate": 2e-4,
                   "num_train_epochs": 3, "max_length": 1024, "per_device_train_batch_size": 8,
                   "save_steps": 200},
    },
    "instruction": {
        "stage": "instruction",
        "label": "Instruction tuning (chat messages)",
        "config": {"learning_rate": 2e-5, "num_train_epochs": 2, "max_length": 1024,
                   "per_device_train_batch_size": 8, "save_steps": 200},
    },
    "reward": {
        "stage": "reward",
        "label": "Reward model (Bradley-Terry on preference pairs)",
        "config": {"learning_rate": 1e-5, "num_train_epochs": 1, "max_length": 1024,
                   "per_device_train_batch_size": 8, "save_steps": 200},
    },
    "ppo": {
        "stage": "ppo",
        "label": "PPO against a reward model",
        # 64 prompts rolled out per device and update (a GPU's worth of generation), trained
        # in 4 minibatches of 16; a resumable checkpoint every 20 updates.
        "config": {"learning_rate": 3e-6, "kl_coef": 0.05, "response_length": 53,
                   "per_device_train_batch_size": 16, "gradient_accumulation_steps": 4,
                   "num_mini_batches": 4, "local_rollout_forward_batch_size": 64,
                   "num_ppo_epochs": 4, "save_steps": 20},
    },
    "dpo": {
        "stage": "dpo",
        "label": "DPO on preference pairs",
        "config": {"learning_rate": 1e-6, "beta": 0.1, "num_train_epochs": 1,
                   "max_length": 1024, "per_device_train_batch_size": 8, "save_steps": 200},
    },
    "grpo": {
        "stage": "grpo",
        "label": "GRPO against a reward model (groups of 8 completions per prompt)",
        # 16 completions per micro-batch (2 prompts x 8); the KL keeps it near the start.
        "config": {"learning_rate": 1e-6, "beta": 0.04, "num_generations": 8,
                   "max_completion_length": 128, "per_device_train_batch_size": 16,
                   "gradient_accumulation_steps": 2, "num_train_epochs": 1, "save_steps": 50},
    },
    "grpo-cpu": {
        "stage": "grpo",
        "label": "GRPO, CPU-sized (tiny models; groups of 4, short completions)",
        "config": {"learning_rate": 3e-5, "beta": 0.04, "num_generations": 4,
                   "max_completion_length": 16, "per_device_train_batch_size": 4,
                   "max_steps": 20, "precision": "fp32", "gradient_checkpointing": False,
                   "save_steps": 10},
    },
    "rloo": {
        "stage": "rloo",
        "label": "RLOO against a reward model (leave-one-out baseline, 4 completions per prompt)",
        "config": {"learning_rate": 1e-6, "beta": 0.05, "num_generations": 4,
                   "max_completion_length": 128, "per_device_train_batch_size": 16,
                   "gradient_accumulation_steps": 2, "num_train_epochs": 1, "save_steps": 50},
    },
    "rloo-cpu": {
        "stage": "rloo",
        "label": "RLOO, CPU-sized (tiny models; pairs of completions, short)",
        "config": {"learning_rate": 3e-5, "beta": 0.05, "num_generations": 2,
                   "max_completion_length": 16, "per_device_train_batch_size": 4,
                   "max_steps": 20, "precision": "fp32", "gradient_checkpointing": False,
                   "save_steps": 10},
    },
    "kto": {
        "stage": "kto",
        "label": "KTO on thumbs-up / thumbs-down ratings",
        "config": {"learning_rate": 1e-6, "beta": 0.1, "desirable_weight": 1.0,
                   "undesirable_weight": 1.0, "num_train_epochs": 1, "max_length": 1024,
                   "per_device_train_batch_size": 8, "save_steps": 200},
    },
    "kto-cpu": {
        "stage": "kto",
        "label": "KTO, CPU-sized (tiny models)",
        "config": {"learning_rate": 3e-5, "beta": 0.1, "max_length": 128, "max_steps": 20,
                   "per_device_train_batch_size": 4, "precision": "fp32",
                   "gradient_checkpointing": False, "save_steps": 10},
    },
}  # fmt: skip


def preset_config(name: str) -> dict:
    preset = PRESETS[name]
    return {"stage": preset["stage"], **preset["config"]}


def stage_preset(stage: str) -> str | None:
    """The preset a link pre-fills for `stage`: the one marked `default`, else its first."""
    names = [name for name, preset in PRESETS.items() if preset["stage"] == stage]
    marked = [name for name in names if PRESETS[name].get("default")]
    return (marked or names or [None])[0]


def presets_check(presets: dict[str, dict]) -> None:
    """Each preset names a stage and sets only options that stage reads: a key it does not know,
    or one it ignores (`ignored` of the stage's config, e.g. PPO's save_steps), is refused with a
    ValueError naming the preset and the key, rather than shown to engineers as if it worked."""
    for name, preset in presets.items():
        stage = STAGES.get(preset["stage"])
        if stage is None:
            raise ValueError(f"preset {name!r}: unknown stage {preset['stage']!r}")
        fields = {f.name for f in dataclasses.fields(stage)}
        for key in preset["config"]:
            if key not in fields:
                raise ValueError(f"preset {name!r}: {stage.stage} has no option {key!r}")
            if key in stage.ignored:
                raise ValueError(
                    f"preset {name!r}: {stage.stage}.{key} is ignored by the stage "
                    f"({stage.ignored[key]}); remove it from the preset"
                )


presets_check(PRESETS)
