"""Language-model stages on TRL's SFTTrainer: base pretraining, SFT and instruction tuning."""

from __future__ import annotations

import math

from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from ..runtime import (
    Run,
    evaluate,
    finish,
    fit,
    load_model,
    load_tokenizer,
    lora_config,
    splits_load,
    trainer_args,
)


def _fit_and_finish(run: Run, *, model, tokenizer, args, train_ds, eval_ds) -> None:
    trainer = fit(
        run,
        SFTTrainer,
        model=model,
        args=args,
        train_ds=train_ds,
        eval_ds=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(run.cfg),
    )
    metrics = evaluate(run, trainer, eval_ds)
    loss = metrics.get("eval_loss")
    if loss is not None:
        metrics["perplexity"] = math.exp(min(loss, 50.0))
    finish(run, trainer, tokenizer, metrics)


def run_sft(run: Run) -> None:
    cfg = run.cfg
    tokenizer = load_tokenizer(cfg, cfg.model)
    train_ds, eval_ds, columns = splits_load(run, cfg.stage)
    conversational = columns == ("messages",)
    args = trainer_args(
        run,
        TRLSFTConfig,
        max_length=cfg.max_length,
        packing=cfg.packing,
        # prompt/completion rows: loss on the completion; messages: on assistant turns.
        completion_only_loss=cfg.completion_only_loss and not conversational,
        assistant_only_loss=cfg.completion_only_loss and conversational,
        dataset_num_proc=None,
        has_eval=eval_ds is not None,
    )
    model = load_model(cfg.model, run, tokenizer)
    _fit_and_finish(
        run, model=model, tokenizer=tokenizer, args=args, train_ds=train_ds, eval_ds=eval_ds
    )


def run_pretrain(run: Run) -> None:
    """Causal LM on raw text: from scratch (named architecture + a BPE tokenizer trained on the
    corpus) or continued from `model`. Documents are packed into max_length blocks."""
    cfg = run.cfg
    train_ds, eval_ds, _ = splits_load(run, cfg.stage)
    if cfg.model:
        tokenizer = load_tokenizer(cfg, cfg.model)
        model = load_model(cfg.model, run, tokenizer)
    else:
        tokenizer = _scratch_tokenizer(run, train_ds)
        model = _scratch_model(run, tokenizer)
    args = trainer_args(
        run,
        TRLSFTConfig,
        max_length=cfg.max_length,
        packing=cfg.packing,
        # "wrapped" is classic pretraining packing: concatenate, then cut into equal blocks.
        packing_strategy="wrapped",
        dataset_text_field="text",
        completion_only_loss=False,
        has_eval=eval_ds is not None,
    )
    _fit_and_finish(
        run, model=model, tokenizer=tokenizer, args=args, train_ds=train_ds, eval_ds=eval_ds
    )


def _scratch_tokenizer(run: Run, train_ds):
    from transformers import AutoTokenizer

    from ..tiny import train_tokenizer

    cfg = run.cfg
    if cfg.tokenizer:
        return load_tokenizer(cfg, cfg.tokenizer)
    tok_dir = run.output_dir / "tokenizer"
    if cfg.resume:
        # Resuming must reuse the tokenizer the checkpoint's embeddings were trained with: the
        # one saved inside the checkpoint (a resume may start in a fresh output folder).
        from ..checkpoints import last_complete

        for source in (last_complete(run.checkpoint_root), tok_dir):
            if source is not None and (source / "tokenizer.json").is_file():
                return AutoTokenizer.from_pretrained(source)
    from accelerate import PartialState

    processes = PartialState()
    # Under several processes rank 0 trains it and the others load what it saved: one
    # vocabulary, and no two processes writing the same files.
    with processes.main_process_first():
        if not processes.is_main_process:
            return AutoTokenizer.from_pretrained(tok_dir)
        run.notes.append(
            f"trained a byte-level BPE tokenizer (vocab {cfg.vocab_size}) on the corpus"
        )
        return train_tokenizer(
            (row["text"] for row in train_ds), tok_dir, cfg.vocab_size,
            model_max_length=cfg.max_length,
        )  # fmt: skip


def _scratch_model(run: Run, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from ..runtime import attn_implementation
    from ..tiny import architecture_config

    cfg = run.cfg
    config = architecture_config(
        cfg.architecture, tokenizer, cfg.max_length, cfg.architecture_overrides
    )
    torch.manual_seed(cfg.seed)
    # float32 weights, bf16/fp16 only under autocast (runtime.weights_dtype says why).
    return AutoModelForCausalLM.from_config(
        config, attn_implementation=attn_implementation(cfg, run.device, run.bf16 or run.fp16)
    )
