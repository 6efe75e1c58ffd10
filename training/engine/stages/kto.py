"""KTO: TRL KTOTrainer on unpaired thumbs-up / thumbs-down rows (the `kto` snapshot kind:
`{prompt, completion, label}`), against a frozen reference policy."""

from __future__ import annotations

from trl import KTOConfig as TRLKTOConfig
from trl import KTOTrainer

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


def run(run: Run) -> None:
    cfg = run.cfg
    tokenizer = load_tokenizer(cfg, cfg.model)
    train_ds, eval_ds, _ = splits_load(run, "kto")

    args = trainer_args(
        run,
        TRLKTOConfig,
        max_length=cfg.max_length,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        desirable_weight=cfg.desirable_weight,
        undesirable_weight=cfg.undesirable_weight,
        has_eval=eval_ds is not None,
    )
    model = load_model(cfg.model, run, tokenizer)
    # As for DPO: with LoRA the reference is the base with adapters off; otherwise an explicit
    # frozen copy that shares our tokenizer fixes.
    ref_model = None
    if not cfg.use_lora:
        ref_model = load_model(cfg.ref_model or cfg.model, run, tokenizer, trainable=False)
    trainer = fit(
        run,
        KTOTrainer,
        model=model,
        ref_model=ref_model,
        args=args,
        train_ds=train_ds,
        eval_ds=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
    )
    metrics = evaluate(run, trainer, eval_ds, margin="eval_rewards/margins")
    finish(run, trainer, tokenizer, metrics)
