"""Reward model: TRL RewardTrainer on preference pairs, a one-label scorer on the SFT model."""

from __future__ import annotations

from trl import RewardConfig as TRLRewardConfig
from trl import RewardTrainer

from ..runtime import (
    EngineCallback,
    Run,
    finish,
    load_model,
    load_tokenizer,
    lora_config,
    train,
    trainer_args,
)
from ..snapshots import check_columns, first_row, load_split, read_snapshot


def run(run: Run) -> None:
    cfg = run.cfg
    tokenizer = load_tokenizer(cfg, cfg.model)
    snapshot = read_snapshot(cfg.dataset)
    run.use_snapshot("dataset", snapshot)
    columns = check_columns(snapshot, "reward")
    # RewardTrainer subtracts a `margin` column inside the loss; the web side's snapshots may
    # carry one meaning something else, so it is only used when asked for.
    if cfg.use_margin and "margin" in first_row(snapshot.split_path("train")):
        columns = (*columns, "margin")
    train_ds = load_split(snapshot, "train", columns)
    eval_ds = load_split(snapshot, "test", columns) if snapshot.has("test") else None

    args = trainer_args(
        run,
        TRLRewardConfig,
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        has_eval=eval_ds is not None,
    )
    model = load_model(cfg.model, run, tokenizer, kind="score")
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, "SEQ_CLS"),
        callbacks=[EngineCallback(run)],
    )
    train(trainer, run)
    metrics = {}
    if not (run.cancelled or run.failure) and eval_ds is not None:
        metrics = trainer.evaluate()
        metrics["accuracy"] = metrics.get("eval_accuracy")
        metrics["margin"] = metrics.get("eval_margin")
    finish(run, trainer, tokenizer, metrics)
