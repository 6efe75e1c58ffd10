"""DPO: TRL DPOTrainer on the same preference snapshots, no reward model needed."""

from __future__ import annotations

from trl import DPOConfig as TRLDPOConfig
from trl import DPOTrainer

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


def _losses(cfg) -> dict:
    """TRL's loss list: the DPO variant, plus an SFT term on the chosen side when weighted."""
    if not cfg.sft_weight:
        return {"loss_type": [cfg.loss_type]}
    return {"loss_type": [cfg.loss_type, "sft"], "loss_weights": [1.0, cfg.sft_weight]}


def run(run: Run) -> None:
    cfg = run.cfg
    tokenizer = load_tokenizer(cfg, cfg.model)
    train_ds, eval_ds, _ = splits_load(run, "dpo")

    args = trainer_args(
        run,
        TRLDPOConfig,
        max_length=cfg.max_length,
        beta=cfg.beta,
        **_losses(cfg),
        has_eval=eval_ds is not None,
    )
    model = load_model(cfg.model, run, tokenizer)
    # With LoRA the reference is the base model with adapters disabled; otherwise load it
    # explicitly so it shares our tokenizer fixes (added pad token, resized embeddings).
    ref_model = None
    if not cfg.use_lora:
        ref_model = load_model(cfg.ref_model or cfg.model, run, tokenizer, trainable=False)
    trainer = fit(
        run,
        DPOTrainer,
        model=model,
        ref_model=ref_model,
        args=args,
        train_ds=train_ds,
        eval_ds=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
    )
    metrics = evaluate(
        run, trainer, eval_ds, accuracy="eval_rewards/accuracies", margin="eval_rewards/margins"
    )
    finish(run, trainer, tokenizer, metrics)
