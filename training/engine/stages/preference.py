"""What the preference stages against a frozen reference policy (DPO, KTO) share: load the
policy, the reference unless LoRA, build the TRL trainer, fit, evaluate and save. Each stage
module says only what differs: its snapshot kind, TRL's config and trainer, its own options and
the metrics it reports under the engine's names."""

from __future__ import annotations

from typing import Any

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


def fit_against_reference(
    run: Run,
    *,
    kind: str,
    config_class: type,
    trainer_class: type,
    options: dict[str, Any],
    reported: dict[str, str],
) -> None:
    """Train `run.cfg.model` with `trainer_class` on the `kind` snapshot, against a frozen
    reference. `options` are the stage's own TRL config options (beside max_length and beta);
    `reported` maps the engine's metric names to TRL's eval keys."""
    cfg = run.cfg
    tokenizer = load_tokenizer(cfg, cfg.model)
    train_ds, eval_ds, _ = splits_load(run, kind)

    args = trainer_args(
        run,
        config_class,
        max_length=cfg.max_length,
        beta=cfg.beta,
        **options,
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
        trainer_class,
        model=model,
        ref_model=ref_model,
        args=args,
        train_ds=train_ds,
        eval_ds=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
    )
    metrics = evaluate(run, trainer, eval_ds, **reported)
    finish(run, trainer, tokenizer, metrics)
