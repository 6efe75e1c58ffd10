"""Typed stage configs, loaded from YAML/JSON/dicts and validated before any work starts.

One dataclass per stage, TRL-style: every field carries `help` metadata, so
`python -m training.engine --help-config` describes it without a second source of truth.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


class ConfigError(ValueError):
    """An invalid config. The message names the offending field: `sft.learning_rate: ...`."""


def _f(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class StageConfig:
    """Options shared by every stage. Stage classes add their own and override defaults."""

    stage: ClassVar[str] = ""
    # Snapshot kinds a stage accepts (manifest `kind`), and the field naming the snapshot.
    snapshot_kinds: ClassVar[tuple[str, ...]] = ()
    snapshot_field: ClassVar[str] = "dataset"
    required: ClassVar[tuple[str, ...]] = ("output_dir", "dataset", "model")
    # Shared options this stage does not read, each with why: a launch preset must not set them.
    ignored: ClassVar[dict[str, str]] = {}

    output_dir: str = _f("", "Directory for the trained model, its metadata and checkpoints/.")
    model: str | None = _f(None, "Parent model: a local directory or a hub name.")
    tokenizer: str | None = _f(None, "Tokenizer directory or hub name; defaults to the model's.")
    dataset: str = _f("", "Snapshot directory (manifest.json + split files).")
    pad_token: str | None = _f(
        None,
        "Pad token to add when the tokenizer has none or pads with EOS (as Qwen2.5 bases do); "
        "it must differ from EOS. PPO needs a distinct pad token: set it from the SFT stage on.",
    )

    learning_rate: float = _f(2e-5, "Peak learning rate (AdamW).")
    num_train_epochs: float = _f(1.0, "Epochs over the train split; ignored when max_steps > 0.")
    max_steps: int = _f(-1, "Optimizer steps to run; -1 runs num_train_epochs.")
    per_device_train_batch_size: int = _f(8, "Sequences per device per micro-batch.")
    per_device_eval_batch_size: int = _f(8, "Sequences per device per eval batch.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    max_length: int = _f(1024, "Longest sequence in tokens; longer ones are truncated.")
    warmup_steps: int = _f(0, "Linear warm-up steps.")
    lr_scheduler_type: str = _f(
        "linear", "LR schedule.", choices=("linear", "cosine", "constant", "constant_with_warmup")
    )
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    seed: int = _f(42, "Random seed for init, shuffling and sampling.")
    logging_steps: int | None = _f(
        None,
        "Emit a progress event (and check the loss) every N steps; null: every step on CPU, "
        "every 10 on a GPU (each event syncs the device and writes to the database).",
    )
    save_steps: int = _f(500, "Write a checkpoint every N optimizer steps.")
    save_total_limit: int | None = _f(2, "Keep at most this many checkpoints (null keeps all).")
    eval_steps: int | None = _f(None, "Evaluate every N steps; null evaluates once at the end.")
    resume: bool = _f(False, "Resume from the last complete checkpoint in output_dir/checkpoints.")

    precision: str = _f(
        "auto",
        "auto: bf16 on a CUDA GPU that supports it, else fp32.",
        choices=("auto", "bf16", "fp16", "fp32"),
    )
    gradient_checkpointing: bool = _f(False, "Recompute activations to save memory (~20% slower).")
    attn_implementation: str | None = _f(
        None,
        "Attention kernel; null picks flash_attention_2 when installed on CUDA, else sdpa.",
        choices=(None, "eager", "sdpa", "flash_attention_2"),
    )

    use_lora: bool = _f(False, "Train LoRA adapters instead of all weights.")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA scaling alpha.")
    lora_dropout: float = _f(0.05, "LoRA dropout.")
    lora_target_modules: list[str] | str = _f("all-linear", "Modules that get adapters.")
    load_in_4bit: bool = _f(
        False, "QLoRA: load the base model in 4-bit (needs bitsandbytes and a CUDA GPU)."
    )
    merge_lora: bool = _f(True, "Save merged full weights (true) or the adapter only (false).")

    report_to: str = _f(
        "none",
        "Experiment tracker the trainer also logs to, beside the platform's own metrics: none, "
        "tensorboard (event files in output_dir/runs), wandb or mlflow (configured by their "
        "usual environment variables). The tracker's package must be installed where it runs.",
        choices=("none", "tensorboard", "wandb", "mlflow"),
    )

    trainer_kwargs: dict = _f(
        {},
        "Extra options of the underlying TRL config, from a short list of numbers and switches "
        "(see TRAINER_KWARGS: adam_beta1, adam_beta2, adam_epsilon, label_smoothing_factor, "
        "neftune_noise_alpha, data_seed, dataloader_drop_last, logging_first_step, optim). "
        "Paths, logging and hub options are the platform's to set.",
    )

    @property
    def snapshot(self) -> str:
        return getattr(self, self.snapshot_field)

    @property
    def parent(self) -> str | None:
        return self.model


@dataclass
class PretrainConfig(StageConfig):
    stage: ClassVar[str] = "pretrain"
    snapshot_kinds: ClassVar[tuple[str, ...]] = ("pretrain",)
    required: ClassVar[tuple[str, ...]] = ("output_dir", "dataset")

    model: str | None = _f(
        None, "Model to continue pretraining; null trains from scratch (see architecture)."
    )
    architecture: str = _f(
        "llama-tiny",
        "Named architecture for from-scratch training.",
        choices=(
            "llama-tiny",
            "llama-20m",
            "llama-60m",
            "llama-160m",
            "llama-0.5b",
            "llama-1b",
            "gpt2-tiny",
            "gpt2-small",
            "gpt2-medium",
        ),
    )
    architecture_overrides: dict = _f({}, "Overrides of the named architecture's config fields.")
    vocab_size: int = _f(8000, "Vocabulary size of the BPE tokenizer trained on the corpus.")
    packing: bool = _f(True, "Concatenate documents and cut them into max_length blocks.")
    max_length: int = _f(512, "Block length in tokens.")
    learning_rate: float = _f(3e-4, "Peak learning rate (AdamW).")
    warmup_steps: int = _f(10, "Linear warm-up steps.")


@dataclass
class SFTConfig(StageConfig):
    stage: ClassVar[str] = "sft"
    snapshot_kinds: ClassVar[tuple[str, ...]] = ("sft", "instruction")

    chat_template: str | None = _f(
        None,
        "null: the tokenizer's template, or the engine default when it has none; "
        "'default': always the engine default; or a path to a .jinja file.",
    )
    packing: bool = _f(False, "Pack several examples into one sequence.")
    completion_only_loss: bool = _f(
        True, "Loss on completions / assistant turns only (not on prompts)."
    )


@dataclass
class InstructionConfig(SFTConfig):
    stage: ClassVar[str] = "instruction"
    snapshot_kinds: ClassVar[tuple[str, ...]] = ("instruction", "sft")


@dataclass
class RewardConfig(StageConfig):
    stage: ClassVar[str] = "reward"
    snapshot_kinds: ClassVar[tuple[str, ...]] = ("preference",)

    learning_rate: float = _f(1e-5, "Peak learning rate (AdamW).")
    max_length: int = _f(1024, "Longest prompt+response in tokens.")
    chat_template: str | None = _f(None, "As for sft: null, 'default' or a .jinja path.")
    use_margin: bool = _f(
        False, "Use the snapshot's `margin` column in the loss (ignored by default)."
    )
    center_rewards_coefficient: float | None = _f(
        None, "Penalty pushing rewards towards zero mean (Eisenstein et al. 2023)."
    )


@dataclass
class DPOConfig(StageConfig):
    stage: ClassVar[str] = "dpo"
    snapshot_kinds: ClassVar[tuple[str, ...]] = ("preference",)

    ref_model: str | None = _f(None, "Reference policy; null uses a frozen copy of `model`.")
    learning_rate: float = _f(1e-6, "Peak learning rate (AdamW).")
    beta: float = _f(0.1, "DPO temperature: higher stays closer to the reference.")
    loss_type: str = _f(
        "sigmoid", "DPO loss variant.", choices=("sigmoid", "ipo", "hinge", "robust", "apo_zero")
    )
    sft_weight: float = _f(
        0.0,
        "Weight of an SFT (negative log-likelihood) loss on the chosen responses added to the "
        "DPO loss (RPO); 0 is plain DPO. Keeps the chosen answers likely while DPO pushes the "
        "rejected ones down.",
    )
    max_length: int = _f(1024, "Longest prompt+response in tokens.")
    chat_template: str | None = _f(None, "As for sft: null, 'default' or a .jinja path.")


@dataclass
class PPOConfig(StageConfig):
    stage: ClassVar[str] = "ppo"
    snapshot_kinds: ClassVar[tuple[str, ...]] = ("prompts", "preference")
    snapshot_field: ClassVar[str] = "prompts"
    required: ClassVar[tuple[str, ...]] = ("output_dir", "prompts", "model", "reward_model")
    dataset: str = _f("", "Unused by PPO; prompts come from `prompts`.")
    prompts: str = _f("", "Prompt snapshot directory (rows `{prompt}`).")
    ref_model: str | None = _f(
        None,
        "Reference policy; null: `model` again, frozen (with use_lora: the policy's base with "
        "its adapter disabled, no copy).",
    )
    reward_model: str = _f("", "Reward model directory (from the reward stage).")
    value_model: str | None = _f(
        None,
        "Value model (critic) init; null uses `reward_model` (with use_lora: an adapter on the "
        "reward model, which then serves as both).",
    )
    learning_rate: float = _f(3e-6, "Peak learning rate (AdamW).")
    per_device_train_batch_size: int = _f(
        4,
        "Prompts per device per micro-batch; x gradient_accumulation_steps it is the rollout "
        "batch each device samples per PPO update.",
    )
    total_episodes: int | None = _f(
        None, "Prompts to roll out in total; null: num_train_epochs x train rows (or max_steps)."
    )
    kl_coef: float = _f(
        0.05, "KL penalty coefficient against the reference policy (the start value if adaptive)."
    )
    kl_target: float | None = _f(
        None,
        "Adaptive KL controller (Ziegler et al. 2019): steer the per-response KL towards this "
        "value by adjusting kl_coef after each update; null keeps kl_coef fixed.",
    )
    kl_horizon: int = _f(10000, "Adaptive KL controller's horizon, in episodes.")
    kl_estimator: str = _f("k1", "KL estimator.", choices=("k1", "k3"))
    response_length: int = _f(53, "Maximum generated tokens per response.")
    stop_token: str | None = _f(
        "eos", "Truncate responses at this token ('eos' or null).", choices=("eos", None)
    )
    missing_eos_penalty: float | None = _f(
        None, "Subtract this from the score of responses that never emit the stop token."
    )
    temperature: float = _f(0.7, "Sampling temperature for rollouts.")
    num_ppo_epochs: int = _f(4, "PPO epochs per rollout batch.")
    num_mini_batches: int = _f(1, "Mini-batches per PPO epoch.")
    local_rollout_forward_batch_size: int = _f(64, "Batch size of rollout forward passes.")
    cliprange: float = _f(0.2, "Policy ratio clip range.")
    cliprange_value: float = _f(0.2, "Value clip range.")
    vf_coef: float = _f(0.1, "Value loss coefficient.")
    gamma: float = _f(1.0, "Discount factor.")
    lam: float = _f(0.95, "GAE lambda.")
    whiten_rewards: bool = _f(False, "Whiten rewards (needs mini-batches of >= 8).")
    max_prompt_length: int = _f(512, "Prompts longer than this (tokens) are dropped.")
    ptx_coef: float = _f(
        0.0,
        "PPO-ptx (InstructGPT): weight of a language-modeling loss on `ptx_snapshot` added to "
        "every PPO minibatch, which keeps the policy's language while it chases the reward; "
        "0 is plain PPO.",
    )
    ptx_snapshot: str | None = _f(
        None, "Pretrain, SFT or instruction snapshot for the ptx loss (needed when ptx_coef > 0)."
    )
    save_steps: int = _f(
        50,
        "Write a resumable checkpoint (policy, value model, optimizer, schedule, KL controller, "
        "RNG states, prompt position, metrics) every N PPO updates; cancel writes one too.",
    )

    @property
    def parent(self) -> str | None:
        return self.model


@dataclass
class KTOConfig(StageConfig):
    stage: ClassVar[str] = "kto"
    snapshot_kinds: ClassVar[tuple[str, ...]] = ("kto",)

    ref_model: str | None = _f(None, "Reference policy; null uses a frozen copy of `model`.")
    learning_rate: float = _f(1e-6, "Peak learning rate (AdamW).")
    beta: float = _f(0.1, "KTO temperature: higher stays closer to the reference.")
    loss_type: str = _f("kto", "KTO loss variant.", choices=("kto", "apo_zero_unpaired"))
    desirable_weight: float = _f(
        1.0,
        "Weight of the losses of thumbs-up rows (label true); with fewer of them than of "
        "thumbs-down rows, raise it so that weight x count is about equal on both sides.",
    )
    undesirable_weight: float = _f(1.0, "Weight of the losses of thumbs-down rows (label false).")
    max_length: int = _f(1024, "Longest prompt+completion in tokens.")
    chat_template: str | None = _f(None, "As for sft: null, 'default' or a .jinja path.")


@dataclass
class OnlineRLConfig(StageConfig):
    """What GRPO and RLOO share: prompts, the reward (a reward model and/or rules), sampling."""

    snapshot_kinds: ClassVar[tuple[str, ...]] = ("prompts", "preference")
    snapshot_field: ClassVar[str] = "prompts"
    required: ClassVar[tuple[str, ...]] = ("output_dir", "prompts", "model")
    dataset: str = _f("", "Unused; prompts come from `prompts`.")
    prompts: str = _f("", "Prompt snapshot directory (rows `{prompt}`).")
    reward_model: str | None = _f(
        None,
        "Reward model directory (from the reward stage), scoring prompt + completion with its "
        "own tokenizer; null: the rule rewards alone.",
    )
    reward_rules: list[dict] = _f(
        [],
        "Rule-based rewards added to the reward model's, each a mapping with `name` "
        "(see training/engine/rewards.py): {name: length_limit, max_chars: 200} gives 0 up to "
        "max_chars and -1 per max_chars beyond; {name: format_regex, pattern: '^Answer:'} gives 1 "
        "when the completion matches (re.search), else 0. Optional `weight` (default 1).",
    )
    learning_rate: float = _f(1e-6, "Peak learning rate (AdamW).")
    per_device_train_batch_size: int = _f(
        8,
        "Completions per device per micro-batch; x gradient_accumulation_steps x processes "
        "must be a multiple of num_generations.",
    )
    max_completion_length: int = _f(256, "Maximum generated tokens per completion.")
    temperature: float = _f(1.0, "Sampling temperature of the completions.")
    top_p: float = _f(1.0, "Nucleus sampling of the completions.")
    num_iterations: int = _f(1, "Optimisation passes over each batch of completions.")
    epsilon: float = _f(0.2, "Policy ratio clip range.")
    max_prompt_length: int = _f(512, "Prompts longer than this (tokens) are dropped.")
    chat_template: str | None = _f(None, "As for sft: null, 'default' or a .jinja path.")
    save_steps: int = _f(
        100,
        "Write a checkpoint every N optimizer steps (model, optimizer, schedule, RNG, data "
        "position); a resume continues from the last one.",
    )
    ignored: ClassVar[dict[str, str]] = {
        "per_device_eval_batch_size": "the prompts snapshot's held-out split is not evaluated",
        "eval_steps": "the prompts snapshot's held-out split is not evaluated",
        "max_length": "prompts are bounded by max_prompt_length, completions by "
        "max_completion_length",
    }


@dataclass
class GRPOConfig(OnlineRLConfig):
    stage: ClassVar[str] = "grpo"

    num_generations: int = _f(
        8, "Completions sampled per prompt; each is scored against its group's mean."
    )
    beta: float = _f(
        0.04,
        "KL coefficient against the reference (the starting policy, or with LoRA its base with "
        "the adapter off); 0 loads no reference (TRL's default since 0.19).",
    )
    loss_type: str = _f(
        "dapo",
        "Loss normalisation (TRL's): dapo (tokens of the whole batch), grpo (per sequence), "
        "dr_grpo (a constant), bnpo (tokens of the local batch).",
        choices=("dapo", "grpo", "dr_grpo", "bnpo"),
    )
    scale_rewards: str = _f(
        "group",
        "Divide advantages by the reward's standard deviation in the group, the batch, or not.",
        choices=("group", "batch", "none"),
    )


@dataclass
class RLOOConfig(OnlineRLConfig):
    stage: ClassVar[str] = "rloo"

    num_generations: int = _f(
        2, "Completions sampled per prompt; each is scored against the mean of the others."
    )
    beta: float = _f(
        0.05,
        "KL coefficient against the reference, folded into the reward (0 loads no reference).",
    )
    normalize_advantages: bool = _f(False, "Normalise advantages to mean 0, std 1 per batch.")


# What `trainer_kwargs` may pass through to the TRL config: numbers and switches of the
# optimizer and data loading that people tune and that no top-level key covers, each with its
# type, help and (for strings) choices. Everything else is refused: above all options that name a
# place to read or write (output_dir, logging_dir, resume_from_checkpoint, deepspeed, hub_*,
# report_to...), which decide where a run's files go and so are set by whoever runs the engine.
TRAINER_KWARGS: dict[str, dict[str, Any]] = {
    "adam_beta1": {"type": float, "help": "AdamW beta1 (default 0.9)."},
    "adam_beta2": {"type": float, "help": "AdamW beta2 (default 0.999)."},
    "adam_epsilon": {"type": float, "help": "AdamW epsilon (default 1e-8)."},
    "label_smoothing_factor": {"type": float, "help": "Label smoothing; 0 is none."},
    "neftune_noise_alpha": {
        "type": float | None,
        "help": "NEFTune noise on the embeddings while fine-tuning (null: none).",
    },
    "data_seed": {"type": int | None, "help": "Seed of the data order alone (null: `seed`)."},
    "dataloader_drop_last": {"type": bool, "help": "Drop the last incomplete batch."},
    "logging_first_step": {"type": bool, "help": "Report the first step as well."},
    "optim": {
        "type": str,
        "help": "Optimizer.",
        "choices": ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad"),
    },
}
# The engine's own PPO uses no TRL config: of those options only the optimizer's apply.
PPO_TRAINER_KWARGS = ("adam_beta1", "adam_beta2", "adam_epsilon")
# Options of the TRL config that name a file, a folder or somewhere to send things: refused
# with a message saying the platform sets them (any other unlisted key: "not an allowed option").
PLATFORM_TRAINER_KWARGS = frozenset({
    "output_dir", "overwrite_output_dir", "logging_dir", "resume_from_checkpoint", "deepspeed",
    "fsdp", "fsdp_config", "accelerator_config", "push_to_hub", "hub_model_id", "hub_token",
    "hub_strategy", "hub_private_repo", "hub_always_push", "report_to", "run_name",
    "model_init_kwargs", "ref_model_init_kwargs", "model_adapter_name", "ref_adapter_name",
    "dataset_kwargs", "dataset_text_field", "save_safetensors", "save_only_model",
})  # fmt: skip


def _check_trainer_kwargs(stage: str, value: dict) -> dict:
    """`trainer_kwargs` with each key in TRAINER_KWARGS and its value of the listed type, or a
    ConfigError naming `<stage>.trainer_kwargs.<key>`."""
    out = {}
    for key, item in value.items():
        name = f"{stage}.trainer_kwargs.{key}"
        if key in PLATFORM_TRAINER_KWARGS:
            raise ConfigError(f"{name}: set by the platform, not by a config; remove it")
        spec = TRAINER_KWARGS.get(key)
        if spec is None:
            raise ConfigError(
                f"{name}: not an allowed option (allowed: {', '.join(TRAINER_KWARGS)})"
            )
        try:
            item = _coerce(item, spec["type"])
        except TypeError:
            raise ConfigError(
                f"{name}: expected {_type_name(spec['type'])}, got {item!r}"
            ) from None
        choices = spec.get("choices")
        if choices is not None and item not in choices:
            raise ConfigError(f"{name}: {item!r} is not one of {', '.join(map(repr, choices))}")
        out[key] = item
    return out


STAGES: dict[str, type[StageConfig]] = {
    c.stage: c
    for c in (PretrainConfig, SFTConfig, InstructionConfig, RewardConfig, DPOConfig, PPOConfig,
              GRPOConfig, RLOOConfig, KTOConfig)
}  # fmt: skip

# Common names people type for our fields; difflib alone would not map `lr`.
_ALIASES = {
    "lr": "learning_rate",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "steps": "max_steps",
    "grad_accum": "gradient_accumulation_steps",
    "output": "output_dir",
    "model_name_or_path": "model",
    "snapshot": "dataset",
    "lora": "use_lora",
    "bf16": "precision",
    "fp16": "precision",
}


def _type_name(tp: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    origin = typing.get_origin(tp)
    if origin is list or tp is list:
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if origin in (typing.Union, type(int | None)):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return names.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise TypeError. Only lossless coercions."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, type(int | None)):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML reads `1e-5` as a string (it wants `1.0e-5`); accept numeric strings.
            try:
                return float(value)
            except ValueError:
                raise TypeError from None
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, Path):
            return str(value)
        raise TypeError
    if origin is list or tp is list:
        if isinstance(value, list | tuple):
            inner = typing.get_args(tp)
            return [_coerce(v, inner[0]) for v in value] if inner else list(value)
        raise TypeError
    if origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        raise TypeError
    raise TypeError


def _read_source(source: str | Path | dict) -> dict:
    if isinstance(source, dict):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def load_config(source: str | Path | dict) -> StageConfig:
    """Build the stage config named by `stage`, checking keys, types and choices.

    This checks the config alone; `validate_inputs` (run by `run_stage`) checks what it points at.
    """
    data = _read_source(source)
    stage = data.pop("stage", None)
    if stage is None:
        raise ConfigError(f"missing key 'stage' (one of: {', '.join(STAGES)})")
    cls = _stage_class(stage)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}

    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            guess = _ALIASES.get(key) if _ALIASES.get(key) in fields else None
            if guess is None:
                close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
                guess = close[0] if close else None
            hint = f" (did you mean {guess!r}?)" if guess else ""
            raise ConfigError(f"{stage}: unknown key {key!r}{hint}")
        try:
            value = _coerce(value, hints[key])
        except TypeError:
            raise ConfigError(
                f"{stage}.{key}: expected {_type_name(hints[key])}, got {value!r}"
            ) from None
        choices = fields[key].metadata.get("choices")
        if choices is not None and value not in choices:
            allowed = ", ".join("null" if c is None else repr(c) for c in choices)
            raise ConfigError(f"{stage}.{key}: {value!r} is not one of {allowed}")
        if key == "trainer_kwargs":
            value = _check_trainer_kwargs(stage, value)
        kwargs[key] = value

    cfg = cls(**kwargs)
    for name in cls.required:
        if not getattr(cfg, name):
            raise ConfigError(f"{stage}.{name}: required")
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: StageConfig) -> None:
    s = cfg.stage
    positive = [
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "max_length",
        "save_steps",
        "lora_r",
    ]
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{s}.{name}: must be positive, got {getattr(cfg, name)}")
    if cfg.logging_steps is not None and cfg.logging_steps <= 0:
        raise ConfigError(f"{s}.logging_steps: must be positive or null, got {cfg.logging_steps}")
    if cfg.learning_rate <= 0:
        raise ConfigError(f"{s}.learning_rate: must be positive, got {cfg.learning_rate}")
    if cfg.max_steps == 0 or cfg.max_steps < -1:
        raise ConfigError(f"{s}.max_steps: must be -1 (use epochs) or positive")
    if cfg.max_steps == -1 and cfg.num_train_epochs <= 0:
        raise ConfigError(f"{s}.num_train_epochs: must be positive when max_steps is -1")
    if isinstance(cfg, DPOConfig) and cfg.sft_weight < 0:
        raise ConfigError(
            f"dpo.sft_weight: must be 0 (plain DPO) or positive, got {cfg.sft_weight}"
        )
    if isinstance(cfg, PPOConfig):
        local_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
        if local_batch % cfg.num_mini_batches:
            raise ConfigError(
                f"ppo.num_mini_batches: batch size {local_batch} "
                f"(per_device_train_batch_size x gradient_accumulation_steps) must be a multiple of it"
            )
        if cfg.response_length <= 0:
            raise ConfigError("ppo.response_length: must be positive")
        if cfg.ptx_coef < 0:
            raise ConfigError(
                f"ppo.ptx_coef: must be 0 (plain PPO) or positive, got {cfg.ptx_coef}"
            )
        if cfg.ptx_coef > 0 and not cfg.ptx_snapshot:
            raise ConfigError("ppo.ptx_snapshot: required when ptx_coef > 0")
        if cfg.kl_target is not None and cfg.kl_target <= 0:
            raise ConfigError(f"ppo.kl_target: must be positive or null, got {cfg.kl_target}")
        for key in cfg.trainer_kwargs:
            if key not in PPO_TRAINER_KWARGS:
                raise ConfigError(f"ppo.trainer_kwargs.{key}: not used by PPO "
                                  f"(allowed: {', '.join(PPO_TRAINER_KWARGS)})")  # fmt: skip
        if cfg.kl_horizon <= 0:
            raise ConfigError(f"ppo.kl_horizon: must be positive, got {cfg.kl_horizon}")
    if isinstance(cfg, OnlineRLConfig):
        _check_online_rl(cfg)
    if isinstance(cfg, KTOConfig):
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(cfg, name) <= 0:
                raise ConfigError(f"kto.{name}: must be positive, got {getattr(cfg, name)}")
    if cfg.report_to != "none":
        report_to_check(cfg.stage, cfg.report_to)


# The package each `report_to` tracker needs (transformers' integration imports it).
REPORT_TO_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def report_to_check(stage: str, tracker: str) -> None:
    """A ConfigError naming the package when `tracker` cannot run here."""
    import importlib.util

    package = REPORT_TO_PACKAGES[tracker]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"{stage}.report_to: {tracker} needs the {package} package, which is not installed "
            f"here (pip install {package}), or set report_to: none"
        )


def _check_online_rl(cfg: OnlineRLConfig) -> None:
    from .rewards import rules_check

    s = cfg.stage
    if not cfg.reward_model and not cfg.reward_rules:
        raise ConfigError(
            f"{s}.reward_model: required unless reward_rules names at least one rule (the run "
            "needs a reward)"
        )
    try:
        rules_check(s, cfg.reward_rules)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.num_generations < 2:
        raise ConfigError(f"{s}.num_generations: must be at least 2, got {cfg.num_generations}")
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    if batch % cfg.num_generations:
        raise ConfigError(
            f"{s}.num_generations: per_device_train_batch_size x gradient_accumulation_steps "
            f"({batch}) must be a multiple of it ({cfg.num_generations})"
        )
    for name in ("max_completion_length", "num_iterations", "max_prompt_length"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{s}.{name}: must be positive, got {getattr(cfg, name)}")
    if cfg.beta < 0:
        raise ConfigError(f"{s}.beta: must be 0 or positive, got {cfg.beta}")
    if cfg.temperature <= 0:
        raise ConfigError(f"{s}.temperature: must be positive, got {cfg.temperature}")


def config_to_dict(cfg: StageConfig) -> dict:
    """The full config, `stage` first, as plain JSON-serialisable data (round-trips via load_config)."""
    return {"stage": cfg.stage, **dataclasses.asdict(cfg)}


def _stage_class(stage: str) -> type:
    if stage not in STAGES:
        raise ConfigError(f"stage: unknown stage {stage!r} (one of: {', '.join(STAGES)})")
    return STAGES[stage]


def describe_config(stage: str) -> list[dict]:
    """Field name, type, default and help for a stage, as `--help-config` prints them."""
    cls = _stage_class(stage)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(
            {
                "name": f.name,
                "type": _type_name(hints[f.name]),
                "default": default,
                "help": f.metadata.get("help", ""),
                "choices": f.metadata.get("choices"),
                "required": f.name in cls.required,
            }
        )
    return out
