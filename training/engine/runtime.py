"""What every stage shares: device/precision choice, loading models and tokenizers, TRL
arguments, the trainer callback (progress, cancel, NaN), resume and the result type.

Heavy imports (torch, transformers) live inside functions or in modules imported lazily by
`run_stage`, so `import training.engine` stays cheap for the web side.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
)

from . import checkpoints
from .config import ConfigError, StageConfig
from .progress import ProgressSink
from .tiny import DEFAULT_CHAT_TEMPLATE

datasets.disable_progress_bars()  # one line per map() call is noise in a progress log

OOM_ADVICE = (
    "Out of memory. Try a smaller per_device_train_batch_size (raise gradient_accumulation_steps "
    "to keep the effective batch), a shorter max_length, use_lora: true (or load_in_4bit on a GPU), "
    "or gradient_checkpointing: true."
)
NAN_ADVICE = (
    "The loss became non-finite. Lower learning_rate, add warmup_steps, keep max_grad_norm on, "
    "and check the data for empty or extreme examples; on fp16 prefer bf16 or fp32."
)


# --- Several processes (`accelerate launch`): what every rank must agree on ------------------


def _processes():
    from accelerate import PartialState

    return PartialState()


def is_main_process() -> bool:
    return _processes().is_main_process


def cancel_requested(run: Run) -> bool:
    """Whether to stop now, the same answer on every rank: rank 0 alone reads the flag (a
    database read, a file, a signal) and broadcasts it. Ranks that read their own would stop
    at different steps, and the ones still training would wait forever in a collective.
    Call it on every rank at the same point (a collective), or on none."""
    if run.cancel_check is None:
        return False
    state = _processes()
    if state.num_processes == 1:
        return bool(run.cancel_check())
    flag = torch.tensor([bool(run.cancel_check()) if state.is_main_process else False],
                        dtype=torch.int32, device=state.device)  # fmt: skip
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def sum_over_processes(value: float) -> float:
    """`value` summed over the ranks (a collective: every rank calls it), e.g. tokens seen."""
    state = _processes()
    if state.num_processes == 1:
        return value
    total = torch.tensor([float(value)], dtype=torch.float64, device=state.device)
    torch.distributed.all_reduce(total)
    return float(total.item())


def weights_agree(accelerator, model) -> bool | None:
    """Whether every rank holds the same trained weights (data parallelism must keep them
    equal): a per-tensor fingerprint gathered from all ranks. None with one process, or when
    the weights are sharded (FSDP, ZeRO-3) and no rank holds them whole. A collective."""
    if accelerator.num_processes == 1 or is_sharded(accelerator):
        return None
    params = [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad]
    local = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()])
                         for p in params]).flatten().to(accelerator.device)  # fmt: skip
    gathered = [torch.empty_like(local) for _ in range(accelerator.num_processes)]
    torch.distributed.all_gather(gathered, local)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def is_sharded(accelerator) -> bool:
    """FSDP or DeepSpeed ZeRO-3: no rank holds the full weights, so a save gathers them."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin.zero_stage == 3


@dataclass
class Run:
    """Mutable state of one stage run, shared by the stage code and the trainer callback."""

    cfg: StageConfig
    sink: ProgressSink
    cancel_check: Callable[[], bool] | None = None
    output_dir: Path = Path()
    device: str = "cpu"
    bf16: bool = False
    fp16: bool = False
    tokens_seen: int = 0
    started: float = field(default_factory=time.time)
    start_step: int = 0
    cancelled: bool = False
    failure: str | None = None
    advice: str | None = None
    last_logs: dict = field(default_factory=dict)
    # Filled in by the stage: what it trained on, how far it got, what it measured.
    snapshots: dict = field(default_factory=dict)
    global_step: int = 0
    metrics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    precision: dict = field(default_factory=dict)  # precision_layout after the first step

    def use_snapshot(self, field_name: str, snapshot) -> None:
        self.snapshots[field_name] = {
            "path": str(snapshot.path),
            "kind": snapshot.kind,
            "sha256": snapshot.sha256,
            "rows": {k: v.get("rows") for k, v in snapshot.splits.items()},
        }

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else torch.float32

    @property
    def checkpoint_root(self) -> Path:
        return checkpoints.checkpoint_dir(self.output_dir)


def choose_precision(cfg: StageConfig) -> tuple[str, bool, bool]:
    """(device, bf16, fp16). auto: CUDA + bf16 when the GPU supports it, otherwise CPU fp32.

    bf16/fp16 mean mixed precision: the trained weights stay float32 and the Trainer runs the
    forward and backward passes under autocast (fp16 with a gradient scaler); see
    `weights_dtype`. On a GPU that has them, TF32 matmuls are switched on for what stays fp32.
    """
    pin_one_device()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        enable_tf32()
    if cfg.precision == "auto":
        bf16, fp16 = cuda and torch.cuda.is_bf16_supported(), False
    elif cfg.precision in ("bf16", "fp16") and not cuda:
        raise ConfigError(
            f"{cfg.stage}.precision: {cfg.precision} needs a CUDA GPU; use auto or fp32"
        )
    else:
        bf16, fp16 = cfg.precision == "bf16", cfg.precision == "fp16"
    if cfg.attn_implementation == "flash_attention_2" and not (bf16 or fp16):
        raise ConfigError(
            f"{cfg.stage}.attn_implementation: flash_attention_2 runs only in bf16 or fp16; "
            "set precision: bf16 (or auto on a GPU that has it), or use sdpa"
        )
    qlora_check(cfg, cuda)
    return device, bf16, fp16


def pin_one_device() -> None:
    """One process trains on one GPU. A process that is not a rank of a distributed launch
    (`accelerate launch` sets WORLD_SIZE) and sees several GPUs would have the Trainer wrap its
    model in nn.DataParallel (slow, GPU 0 overloaded, the batch multiplied) while generation
    used cuda:0 alone: before CUDA is first touched, keep the first visible device only. A
    worker started with `--gpus` already sees just its own."""
    if "WORLD_SIZE" in os.environ or torch.cuda.is_initialized():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        from .resources import gpu_inventory

        if len(gpu_inventory()) > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    elif "," in visible:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[0].strip()


def enable_tf32() -> None:
    """TF32 tensor cores for float32 matmuls and convolutions (Ampere and newer): the fp32
    parts of a mixed-precision step (the optimizer's master weights are not matmuls, so
    nothing the update needs is rounded)."""
    major, _ = torch.cuda.get_device_capability()
    if major >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def release_memory() -> None:
    """Give the GPU memory of a finished run back, so the worker's next run starts empty: the
    trainer's reference cycles hold tensors until a collection, and the caching allocator keeps
    freed blocks. Only where CUDA was used: on a CPU refcounting frees the memory, and a full
    collection of a process holding transformers and TRL holds the GIL long enough, on a
    loaded machine, to starve the run's heartbeat thread."""
    if torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def qlora_check(cfg: StageConfig, cuda: bool) -> None:
    """`load_in_4bit` is honoured or refused: never silently dropped (the estimate budgets a
    4-bit base, so a dropped flag would end in an out-of-memory failure)."""
    if not cfg.load_in_4bit:
        return
    if not cfg.use_lora:
        raise ConfigError(
            f"{cfg.stage}.load_in_4bit: 4-bit weights cannot be trained in full; set "
            "use_lora: true (QLoRA trains adapters on the 4-bit base)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{cfg.stage}.load_in_4bit: needs the bitsandbytes package, which is not installed "
            "here (pip install -r requirements-qlora.txt on a CUDA machine), or set "
            "load_in_4bit: false"
        ) from None
    if not cuda:
        raise ConfigError(f"{cfg.stage}.load_in_4bit: needs a CUDA GPU; set load_in_4bit: false")


def attn_implementation(cfg: StageConfig, device: str, half: bool = False) -> str:
    """The configured kernel, else flash-attention 2 when installed on a GPU running in bf16 or
    fp16 (it has no fp32 kernel), else sdpa."""
    if cfg.attn_implementation:
        return cfg.attn_implementation
    if device == "cuda" and half:
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def resolve_chat_template(tokenizer, option: str | None) -> None:
    if option is None:
        if not tokenizer.chat_template:
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    elif option == "default":
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    else:
        tokenizer.chat_template = Path(option).read_text(encoding="utf-8")


def load_tokenizer(cfg: StageConfig, name: str, *, padding_side: str = "right"):
    """The stage's tokenizer, with a pad token that differs from EOS or a ConfigError."""
    source = cfg.tokenizer or name
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - any load failure is a config problem here
        raise ConfigError(
            f"{cfg.stage}.tokenizer: cannot load tokenizer from {source!r}: {exc}"
        ) from None
    if tok.pad_token is None:
        if not cfg.pad_token:
            raise ConfigError(
                f"{cfg.stage}.pad_token: tokenizer {source!r} has no pad token; set pad_token "
                "(e.g. '<|pad|>', added to the vocabulary) or use a tokenizer that has one"
            )
        tok.add_special_tokens({"pad_token": cfg.pad_token})
    elif tok.pad_token_id == tok.eos_token_id and cfg.pad_token:
        # Bases such as Qwen2.5 pad with EOS. PPO truncates at EOS and masks pads, so a model
        # meant for PPO gets a pad token of its own, from its SFT stage on.
        if cfg.pad_token == tok.eos_token:
            raise ConfigError(f"{cfg.stage}.pad_token: {cfg.pad_token!r} is the EOS token")
        tok.add_special_tokens({"pad_token": cfg.pad_token})
    if tok.pad_token_id == tok.eos_token_id and cfg.stage == "ppo":
        raise ConfigError(
            f"ppo.pad_token: tokenizer {source!r} uses EOS as pad token; PPO truncates at EOS "
            "and masks pads, so it needs a distinct pad_token (set pad_token, e.g. '<|pad|>', "
            "here or better in the SFT stage that made the model)"
        )
    tok.padding_side = padding_side
    if cfg.stage != "pretrain":
        resolve_chat_template(tok, getattr(cfg, "chat_template", None))
    return tok


def _is_adapter(name: str) -> bool:
    return (Path(name) / "adapter_config.json").is_file()


# Embedding rows are padded to a multiple of this when a token is added: tensor-core friendly
# shapes for the output layer (a vocabulary of 151,643 + 1 would be an odd matmul dimension).
EMBEDDING_MULTIPLE = 64


def weights_dtype(run: Run, *, trainable: bool, lora: bool) -> torch.dtype:
    """The dtype a model's weights are loaded in.

    Weights the optimizer updates stay float32 whatever the precision: bf16 and fp16 are the
    autocast dtype of the forward and backward passes, not of the weights. A bf16 weight near
    0.02 moves in steps of ~1e-4, so AdamW updates of ~1e-6 (DPO and PPO learning rates) would
    round to nothing, and the fp16 gradient scaler refuses fp16 parameters outright. Weights
    that are only read (a reference or reward model, the frozen base under LoRA adapters,
    which peft keeps in float32) load in the run's half precision: half the memory, and the
    autocast matmuls would round them anyway.
    """
    if trainable and not lora:
        return torch.float32
    return run.dtype


def load_model(
    name: str,
    run: Run,
    tokenizer,
    *,
    kind: str = "causal",
    trainable: bool = True,
    lora: bool | None = None,
):
    """Load a causal LM (kind='causal') or a one-label scorer (kind='score').

    `lora`: whether the stage trains this model through LoRA adapters (default: `use_lora`;
    a frozen model never is).
    Only a model trained through adapters is quantized under `load_in_4bit`. A LoRA adapter
    directory (adapter-only output of an earlier stage) is loaded with the class of `kind` and
    merged, so the next stage starts from plain weights.
    """
    cfg = run.cfg
    if lora is None:
        lora = cfg.use_lora
    lora = lora and trainable
    cls = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    half = run.bf16 or run.fp16
    kwargs: dict[str, Any] = {
        "dtype": weights_dtype(run, trainable=trainable, lora=lora),
        "attn_implementation": attn_implementation(cfg, run.device, half),
    }
    if kind == "score":
        kwargs["num_labels"] = 1
    quantize = lora and cfg.load_in_4bit
    if quantize:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=run.dtype if half else torch.bfloat16,
            bnb_4bit_quant_storage=run.dtype if half else torch.bfloat16,
        )
    if _is_adapter(name):
        from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

        peft_cls = (
            AutoPeftModelForCausalLM if kind == "causal" else AutoPeftModelForSequenceClassification
        )
        extra = {"num_labels": 1} if kind == "score" else {}
        model = peft_cls.from_pretrained(name, dtype=kwargs["dtype"], **extra).merge_and_unload()
    else:
        model = cls.from_pretrained(name, **kwargs)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # A pad token was added.
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=EMBEDDING_MULTIPLE)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if quantize:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, cfg.gradient_checkpointing)
    return model


def lora_config(cfg: StageConfig, task_type: str = "CAUSAL_LM"):
    if not cfg.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type=task_type,
        # A scorer's head is new: it must train and be saved with the adapter.
        modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
    )


def trainer_args(run: Run, args_cls: type, **stage_kwargs: Any):
    """A TRL config for the stage: shared options, then stage options, then trainer_kwargs."""
    cfg = run.cfg
    has_eval = stage_kwargs.pop("has_eval", False)
    kwargs: dict[str, Any] = dict(
        output_dir=str(run.checkpoint_root),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        logging_steps=logging_steps(cfg, run.device),
        # The HF default replaces NaN/inf losses with the running mean in logs, which would
        # hide exactly what we watch for.
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if (has_eval and cfg.eval_steps) else "no",
        eval_steps=cfg.eval_steps,
        # TRL defaults both to True; bf16 must follow the device and checkpointing the config.
        bf16=run.bf16,
        fp16=run.fp16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=run.device == "cpu",
        # Experiment trackers beside the platform's own sink; TensorBoard writes into the run's
        # folder (`fit` points it there), not under checkpoints/.
        report_to=cfg.report_to,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    kwargs.update(stage_kwargs)
    fields = set(getattr(args_cls, "__dataclass_fields__", {}))
    for key, value in cfg.trainer_kwargs.items():
        if key not in fields:
            raise ConfigError(
                f"{cfg.stage}.trainer_kwargs: {args_cls.__name__} has no option {key!r}"
            )
        kwargs[key] = value
    try:
        args = args_cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{cfg.stage}: invalid trainer options: {exc}") from None
    if "WORLD_SIZE" not in os.environ and args.n_gpu > 1:
        # CUDA was touched before `pin_one_device` could narrow it (a caller's own process):
        # one device still, never nn.DataParallel.
        args._n_gpu = 1
    return args


# Steps between progress events on a GPU when the config leaves logging_steps unset: each one
# syncs the device to read the loss and writes the run's progress and metric rows.
GPU_LOGGING_STEPS = 10


def logging_steps(cfg: StageConfig, device: str) -> int:
    if cfg.logging_steps is not None:
        return cfg.logging_steps
    return GPU_LOGGING_STEPS if device == "cuda" else 1


class TokenCounter:
    """Wraps a data collator to count tokens per batch for tokens/s, without a device sync."""

    KEYS = ("input_ids", "chosen_input_ids", "rejected_input_ids", "chosen_ids", "rejected_ids",
            "prompt_ids", "completion_ids")  # fmt: skip

    def __init__(self, collator, run: Run) -> None:
        self.collator = collator
        self.run = run

    def __call__(self, examples):
        batch = self.collator(examples)
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is not None and "input_ids" in batch:
            self.run.tokens_seen += int(mask.sum())
        else:
            for key in self.KEYS:
                value = batch.get(key) if isinstance(batch, dict) else None
                if value is not None and hasattr(value, "numel"):
                    self.run.tokens_seen += value.numel()
        return batch

    def __getattr__(self, name):
        return getattr(self.collator, name)


def precision_layout(run: Run, model, optimizer=None) -> dict:
    """What a step really ran in: the autocast dtype, and parameter counts of the trainable
    and frozen weights and tensor counts of the optimizer state, by dtype."""
    model = getattr(model, "module", model)
    trainable: dict[str, int] = {}
    frozen: dict[str, int] = {}
    for param in model.parameters():
        into = trainable if param.requires_grad else frozen
        key = str(param.dtype).removeprefix("torch.")
        into[key] = into.get(key, 0) + param.numel()
    states: dict[str, int] = {}
    for state in getattr(optimizer, "state", {}).values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:  # `step` is a scalar
                key = str(value.dtype).removeprefix("torch.")
                states[key] = states.get(key, 0) + 1
    autocast = "bf16" if run.bf16 else "fp16" if run.fp16 else None
    return {"autocast": autocast, "trainable": trainable, "frozen": frozen,
            "optimizer_state": states}  # fmt: skip


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


class EngineCallback(TrainerCallback):
    """Progress events, the cancel check, non-finite loss detection and checkpoint markers."""

    def __init__(self, run: Run, *, loss_keys: tuple[str, ...] = ("loss",)):
        self.run = run
        self.loss_keys = loss_keys

    def _common(self, state, tokens: float | None = None) -> dict:
        run = self.run
        step, total = state.global_step, state.max_steps
        elapsed = max(time.time() - run.started, 1e-9)
        done = step - run.start_step
        eta = elapsed / done * max(total - step, 0) if done > 0 else None
        return {
            "step": step,
            "total_steps": total,
            "epoch": state.epoch,
            "tokens_per_s": tokens / elapsed if tokens else None,
            "eta_s": eta,
        }

    def on_train_begin(self, args, state, control, **kwargs):
        run = self.run
        run.start_step = state.global_step
        run.started = time.time()
        run.tokens_seen = 0
        if state.is_world_process_zero:
            run.sink.emit(
                "start",
                stage=run.cfg.stage,
                output_dir=str(run.output_dir),
                notes=list(run.notes),
                **self._common(state),
            )

    def on_step_end(self, args, state, control, **kwargs):
        if not self.run.precision and kwargs.get("model") is not None:
            self.run.precision = precision_layout(
                self.run, kwargs["model"], kwargs.get("optimizer")
            )
            if state.is_world_process_zero:
                self.run.sink.emit("precision", step=state.global_step, **self.run.precision)
        if cancel_requested(self.run):
            self.run.cancelled = True
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        run = self.run
        if any(k.startswith("eval_") for k in logs):
            return  # reported by on_evaluate
        if "train_runtime" in logs:  # the Trainer's end-of-run summary, not a step
            run.summary = logs
            return
        for key in self.loss_keys:
            value = logs.get(key)
            if value is not None and not _finite(float(value)):
                run.failure = f"{key} became {value} at step {state.global_step}"
                run.advice = NAN_ADVICE
                control.should_training_stop = True
                control.should_save = False  # a NaN checkpoint is worse than none
        loss = logs.pop("loss", None)
        if loss is None and "loss/policy_avg" in logs:
            loss = logs["loss/policy_avg"]
        lr = logs.pop("learning_rate", logs.get("lr"))
        run.last_logs = logs | {"loss": loss}
        # Every rank logs the same steps (the Trainer gathers the loss first): the throughput
        # of all of them together, not rank 0's share.
        tokens = sum_over_processes(run.tokens_seen)
        if state.is_world_process_zero:
            run.sink.emit(
                "progress", **self._common(state, tokens), loss=loss, learning_rate=lr,
                metrics=logs,
            )  # fmt: skip

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero:
            self.run.sink.emit("eval", **self._common(state), metrics=dict(metrics or {}))

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and path.is_dir():
            checkpoints.mark_complete(path, state.global_step)
            self.run.sink.emit("checkpoint", **self._common(state), path=str(path))


def prepare_resume(run: Run) -> str | None:
    """Checkpoint to resume from, after dropping incomplete ones; None starts fresh."""
    root = run.checkpoint_root
    state = _processes()
    # Rank 0 alone tidies the folder all ranks share; the others wait, then read it.
    if state.is_main_process:
        checkpoints.remove_incomplete(root)
        if not run.cfg.resume:
            # A fresh run must not inherit (or have its rotation confused by) an old run's
            # checkpoints.
            for _, path, _ in checkpoints.list_checkpoints(root):
                import shutil

                shutil.rmtree(path, ignore_errors=True)
    state.wait_for_everyone()
    if run.cfg.resume:
        last = checkpoints.last_complete(root)
        return str(last) if last else None
    return None


def train(trainer, run: Run) -> None:
    """Run `trainer.train()` with resume; the callback records cancel/NaN on `run`."""
    resume_from = prepare_resume(run)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    # Our sink reports progress; the Trainer's printer/tqdm would duplicate it on stdout.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.data_collator = TokenCounter(trainer.data_collator, run)
    trainer.train(resume_from_checkpoint=resume_from)


def splits_load(run: Run, stage: str, *, optional: tuple[str, ...] = ()):
    """(train, eval or None, columns) of the run's dataset snapshot for `stage`. Columns named
    in `optional` are kept when the train split's rows have them."""
    from .snapshots import check_columns, first_row, load_split, read_snapshot

    snapshot = read_snapshot(run.cfg.dataset)
    run.use_snapshot("dataset", snapshot)
    columns = check_columns(snapshot, stage)
    row = first_row(snapshot.split_path("train")) if optional else {}
    columns = (*columns, *(c for c in optional if c in row))
    train_ds = load_split(snapshot, "train", columns)
    eval_ds = load_split(snapshot, "test", columns) if snapshot.has("test") else None
    return train_ds, eval_ds, columns


def fit(run: Run, trainer_cls: type, *, train_ds, eval_ds, peft_config, **trainer_kwargs):
    """Build a TRL trainer that reports through the engine's callback, train it (resuming
    where asked) and return it."""
    trainer = trainer_cls(
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        peft_config=peft_config,
        callbacks=[EngineCallback(run)],
        **trainer_kwargs,
    )
    tensorboard_to_run_folder(trainer, run)
    train(trainer, run)
    return trainer


def tensorboard_to_run_folder(trainer, run: Run) -> None:
    """The Trainer's TensorBoard callback writes under its output_dir (our checkpoints/, which
    rotation prunes) unless told otherwise: send it to the run's own folder."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(checkpoints.tensorboard_dir(run.output_dir))


def tracker_kwargs(run: Run) -> dict:
    """Accelerator options that log the engine's own PPO to `report_to` (TensorBoard into the
    same folder as the Trainer's); {} for none."""
    tracker = run.cfg.report_to
    if tracker == "none":
        return {}
    if tracker == "tensorboard":
        return {"log_with": "tensorboard", "project_dir": str(run.output_dir)}
    return {"log_with": tracker}


def evaluate(run: Run, trainer, eval_ds, **aliases: str) -> dict:
    """The trainer's metrics on the held-out split, with `aliases` (name=TRL's key) copied
    under the engine's names; {} when there is no held-out split or the run stopped."""
    if eval_ds is None or run.cancelled or run.failure:
        return {}
    metrics = trainer.evaluate()
    metrics.update({name: metrics.get(key) for name, key in aliases.items()})
    return metrics


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def save_final(run: Run, accelerator, model, tokenizer) -> None:
    """The trained model into `run.output_dir`, written once. Call it on every rank: under FSDP
    or ZeRO-3 no rank holds the whole weights, and gathering them is a collective; rank 0
    then writes them (`save_model`) while the others wait."""
    state_dict = accelerator.get_state_dict(model) if is_sharded(accelerator) else None
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), tokenizer, run.output_dir,
                   merge_lora=run.cfg.merge_lora, state_dict=state_dict)  # fmt: skip
    accelerator.wait_for_everyone()


def save_model(
    model,
    tokenizer,
    out_dir: Path,
    *,
    merge_lora: bool,
    reload_base: bool | None = None,
    state_dict: dict | None = None,
) -> None:
    """Write final weights: merged full weights, or the LoRA adapter alone.

    A quantized (QLoRA) base is never merged into: its 4-bit layers would give a 4-bit
    artifact with the adapters' rounding error. The adapter is merged onto a fresh bf16 load
    of the base instead (`reload_base`; default: when the base is quantized). `state_dict`:
    the full weights gathered from sharded ranks (`save_final`), which the model itself no
    longer holds; LoRA adapters in it are merged onto a fresh load of the base.
    """
    from peft import PeftModel

    model = getattr(model, "module", model)
    if state_dict is not None:
        if isinstance(model, PeftModel) and merge_lora:
            model = _merge_onto_reload(model, tokenizer, state_dict)
            state_dict = None
        model.save_pretrained(out_dir, state_dict=state_dict)
        tokenizer.save_pretrained(out_dir)
        return
    if isinstance(model, PeftModel) and merge_lora:
        if reload_base is None:
            base = model.get_base_model()
            reload_base = bool(getattr(base, "is_loaded_in_4bit", False)) or bool(
                getattr(base, "is_loaded_in_8bit", False)
            )
        model = _merge_onto_reload(model, tokenizer) if reload_base else model.merge_and_unload()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _merge_onto_reload(model, tokenizer, state_dict: dict | None = None):
    """The adapters of `model` merged onto its base model loaded again, unquantized, in bf16."""
    import tempfile

    from peft import PeftModel

    adapter = model.peft_config[model.active_adapter]
    score = adapter.task_type == "SEQ_CLS"
    cls = AutoModelForSequenceClassification if score else AutoModelForCausalLM
    base = cls.from_pretrained(
        adapter.base_model_name_or_path,
        dtype=torch.bfloat16,
        **({"num_labels": 1} if score else {}),
    )
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=EMBEDDING_MULTIPLE)
    base.config.pad_token_id = tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as adapter_dir:
        model.save_pretrained(adapter_dir, state_dict=state_dict)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return merged


def processes_note(run: Run, accelerator, model) -> None:
    """Under several processes: how many trained, and whether they ended with the same
    weights (in the run's metrics). Every rank calls it."""
    if accelerator.num_processes == 1:
        return
    run.metrics["num_processes"] = accelerator.num_processes
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not is_sharded(accelerator):
        # accelerate 1.15 keeps the FSDP plugin only on GPU-like devices (AcceleratorState in
        # accelerate/state.py); elsewhere it trains DDP without a word.
        run.notes.append(f"the accelerate config asks for FSDP, but accelerate does not shard on "
                         f"{accelerator.device.type}: the model was not sharded, every process "
                         f"trained a whole copy (data-parallel)")  # fmt: skip
    agree = weights_agree(accelerator, model)
    if agree is not None:
        run.metrics["weights_identical_across_processes"] = agree
        if not agree:
            run.notes.append("the processes ended with different weights: the saved model is "
                             "rank 0's")  # fmt: skip


def finish(run: Run, trainer, tokenizer, metrics: dict | None = None) -> bool:
    """Record the step; on success save the model and its metadata. False if the run stopped."""
    from .artifacts import write_artifacts

    run.global_step = trainer.state.global_step
    if run.cancelled or run.failure:
        return False
    run.metrics = {
        "train_loss": run.summary.get("train_loss", run.last_logs.get("loss")),
        "train_runtime_s": run.summary.get("train_runtime"),
        **{k: v for k, v in (metrics or {}).items() if isinstance(v, int | float)},
    }
    processes_note(run, trainer.accelerator, trainer.model_wrapped)
    save_final(run, trainer.accelerator, trainer.model_wrapped, tokenizer)
    if trainer.is_world_process_zero():
        write_artifacts(
            run.output_dir,
            run.cfg,
            snapshots=run.snapshots,
            metrics=run.metrics,
            global_step=run.global_step,
            device=run.device,
        )
    return True
