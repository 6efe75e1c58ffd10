"""Reward model: TRL RewardTrainer on preference pairs, a one-label scorer on the SFT model."""

from __future__ import annotations

from trl import RewardConfig as TRLRewardConfig
from trl import RewardTrainer

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
    # RewardTrainer subtracts a `margin` column inside the loss; the web side's snapshots may
    # carry one meaning something else, so it is only used when asked for.
    train_ds, eval_ds, _ = splits_load(
        run, "reward", optional=("margin",) if cfg.use_margin else ()
    )

    args = trainer_args(
        run,
        TRLRewardConfig,
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        has_eval=eval_ds is not None,
    )
    trainer = fit(
        run,
        RewardTrainer,
        model=load_model(cfg.model, run, tokenizer, kind="score"),
        args=args,
        train_ds=train_ds,
        eval_ds=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, "SEQ_CLS"),
    )
    metrics = evaluate(run, trainer, eval_ds, accuracy="eval_accuracy", margin="eval_margin")
    finish(run, trainer, tokenizer, metrics)
