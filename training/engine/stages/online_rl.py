"""GRPO and RLOO: TRL's GRPOTrainer / RLOOTrainer on a prompts snapshot. The policy samples
`num_generations` completions per prompt; the reward is the platform's reward model (a
sequence classifier, passed to the trainer as a reward function with its own tokenizer) plus
the configured rule rewards (training/engine/rewards.py), summed with their weights."""

from __future__ import annotations

from ..config import ConfigError
from ..rewards import rule_rewards
from ..runtime import Run, finish, fit, load_model, load_tokenizer, lora_config, trainer_args
from ..snapshots import check_columns, load_split, read_snapshot


def _prompts(run: Run, tokenizer):
    """The train prompts that fit max_prompt_length, as TRL's `{prompt}` rows."""
    cfg = run.cfg
    field = f"{cfg.stage}.prompts"
    snapshot = read_snapshot(cfg.prompts, field=field)
    run.use_snapshot("prompts", snapshot)
    check_columns(snapshot, cfg.stage, field=field)
    ds = load_split(snapshot, "train", ("prompt",))

    def fits(row) -> bool:
        prompt = row["prompt"]
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
        else:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return 0 < len(ids) <= cfg.max_prompt_length

    kept = ds.filter(fits)
    if len(kept) == 0:
        raise ConfigError(f"{field}: no train prompt of {snapshot.path} fits "
                          f"max_prompt_length={cfg.max_prompt_length} tokens")  # fmt: skip
    if len(kept) < len(ds):
        run.notes.append(f"dropped {len(ds) - len(kept)} prompts longer than max_prompt_length")
    return kept


def _rewards(run: Run):
    """(reward functions, their processing classes, weights): the reward model first."""
    cfg = run.cfg
    funcs, weights = rule_rewards(cfg.reward_rules)
    classes: list = [None] * len(funcs)
    if cfg.reward_model:
        from transformers import AutoTokenizer

        reward_tokenizer = AutoTokenizer.from_pretrained(cfg.reward_model)
        if reward_tokenizer.pad_token is None:
            raise ConfigError(f"{cfg.stage}.reward_model: its tokenizer has no pad token")
        scorer = load_model(cfg.reward_model, run, reward_tokenizer, kind="score",
                            trainable=False)  # fmt: skip
        scorer.requires_grad_(False)
        funcs, classes, weights = [scorer, *funcs], [reward_tokenizer, *classes], [1.0, *weights]
    return funcs, classes, weights


def run(run: Run) -> None:
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    cfg = run.cfg
    grpo = cfg.stage == "grpo"

    # --- Data: the prompts ------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg, cfg.model)
    train_ds = _prompts(run, tokenizer)

    # --- Models: the policy (the trainer makes its reference) and the reward ---------------
    funcs, classes, weights = _rewards(run)
    model = load_model(cfg.model, run, tokenizer)

    # --- Training ----------------------------------------------------------------------------
    stage_kwargs = dict(
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        num_iterations=cfg.num_iterations,
        epsilon=cfg.epsilon,
        beta=cfg.beta,
        reward_weights=weights,
        # The reward model and rules read only prompt and completion.
        remove_unused_columns=False,
    )
    if grpo:
        stage_kwargs.update(loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards)
    else:
        stage_kwargs.update(normalize_advantages=cfg.normalize_advantages)
    args = trainer_args(run, GRPOConfig if grpo else RLOOConfig, **stage_kwargs)
    trainer = fit(
        run,
        GRPOTrainer if grpo else RLOOTrainer,
        model=model,
        reward_funcs=funcs,
        reward_processing_classes=classes,
        args=args,
        train_ds=train_ds,
        eval_ds=None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
    )
    finish(run, trainer, tokenizer, _final_metrics(run))


def _final_metrics(run: Run) -> dict:
    """The last logged reward, its spread and the KL, for metrics.json and the artifact."""
    last = run.last_logs
    keys = ("reward", "reward_std", "kl", "entropy", "completions/mean_length")
    return {k: last[k] for k in keys if isinstance(last.get(k), int | float)}
