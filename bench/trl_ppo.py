"""The engine's former PPO stage, kept for `bench/ppo.py` alone: trl.experimental.ppo.PPOTrainer
(trl==1.12.0, the last release that ships it) behind the stage interface, as
training/engine/stages/ppo.py was before the engine's own PPO replaced it. Nothing in
training/ imports it; the benchmark swaps it in as the `ppo` stage for its baseline runs.
Its loop always starts at step 0 and has no stop flag, so resume is refused with a note and cancel/NaN leave the
loop by exception (RunStopped) after the current update.
"""

from __future__ import annotations

import os

from training.engine.runtime import (
    EngineCallback,
    Run,
    RunStopped,
    load_model,
    load_tokenizer,
    lora_config,
    save_model,
    trainer_args,
)
from training.engine.snapshots import check_columns, load_split, read_snapshot

CANNOT_RESUME = (
    "PPO cannot resume from a checkpoint (the TRL PPO loop restarts at step 0 and does not "
    "restore optimizer or rollout state); this run starts from the beginning."
)


def _prompt_dataset(snapshot, split: str, tokenizer, max_prompt_length: int):
    ds = load_split(snapshot, split, ("prompt",))

    def tokenize(row):
        prompt = row["prompt"]
        if isinstance(prompt, list):  # conversational prompt: render up to the assistant turn
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return {"input_ids": list(ids)}

    ds = ds.map(tokenize, remove_columns=ds.column_names)
    return ds.filter(lambda row: 0 < len(row["input_ids"]) <= max_prompt_length)


def run(run: Run) -> None:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo import PPOConfig as TRLPPOConfig
    from trl.experimental.ppo import PPOTrainer

    cfg = run.cfg
    if cfg.resume:
        run.notes.append(CANNOT_RESUME)
    # PPO generates from prompts, so they are padded on the left.
    tokenizer = load_tokenizer(cfg, cfg.model, padding_side="left")
    snapshot = read_snapshot(cfg.prompts, field="ppo.prompts")
    run.use_snapshot("prompts", snapshot)
    check_columns(snapshot, "ppo", field="ppo.prompts")
    train_ds = _prompt_dataset(snapshot, "train", tokenizer, cfg.max_prompt_length)
    eval_split = "test" if snapshot.has("test") else "train"
    eval_ds = _prompt_dataset(snapshot, eval_split, tokenizer, cfg.max_prompt_length)

    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    total_episodes = cfg.total_episodes
    if total_episodes is None and cfg.max_steps > 0:
        total_episodes = cfg.max_steps * batch  # one PPO update per rollout batch
    args = trainer_args(
        run,
        TRLPPOConfig,
        total_episodes=total_episodes,
        kl_coef=cfg.kl_coef,
        kl_estimator=cfg.kl_estimator,
        response_length=cfg.response_length,
        stop_token=cfg.stop_token,
        missing_eos_penalty=cfg.missing_eos_penalty,
        temperature=cfg.temperature,
        num_ppo_epochs=cfg.num_ppo_epochs,
        num_mini_batches=cfg.num_mini_batches,
        local_rollout_forward_batch_size=cfg.local_rollout_forward_batch_size,
        cliprange=cfg.cliprange,
        cliprange_value=cfg.cliprange_value,
        vf_coef=cfg.vf_coef,
        gamma=cfg.gamma,
        lam=cfg.lam,
        whiten_rewards=cfg.whiten_rewards,
        sft_model_path=cfg.model,
        reward_model_path=cfg.reward_model,
        num_sample_generations=0,
        # Periodic checkpoints would be unresumable; we save the policy on cancel and at the end.
        save_strategy="no",
    )
    policy = load_model(cfg.model, run, tokenizer)
    ref_model = None
    if not cfg.use_lora:  # with LoRA the reference is the policy with adapters disabled
        ref_model = load_model(cfg.ref_model or cfg.model, run, tokenizer, trainable=False)
    reward_model = load_model(cfg.reward_model, run, tokenizer, kind="score", trainable=False)
    value_model = load_model(cfg.value_model or cfg.reward_model, run, tokenizer, kind="score")
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_model,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        peft_config=lora_config(cfg),
        callbacks=[
            EngineCallback(run, loss_keys=("loss/policy_avg", "loss/value_avg"), raise_on_stop=True)
        ],
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    try:
        trainer.train()
    except RunStopped:
        pass
    run.global_step = trainer.state.global_step
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    if run.failure:
        return
    if run.cancelled:
        _save_cancel_checkpoint(run, trainer, policy, tokenizer)
        return

    from training.engine.artifacts import write_artifacts

    keys = ("objective/kl", "objective/scores", "objective/rlhf_reward", "objective/entropy",
            "objective/non_score_reward", "loss/policy_avg", "loss/value_avg", "eps")  # fmt: skip
    run.metrics = {k: run.last_logs[k] for k in keys if k in run.last_logs}
    run.metrics["train_loss"] = run.last_logs.get("loss")
    if trainer.is_world_process_zero():
        save_model(policy, tokenizer, run.output_dir, merge_lora=cfg.merge_lora)
        write_artifacts(
            run.output_dir,
            cfg,
            snapshots=run.snapshots,
            metrics=run.metrics,
            global_step=run.global_step,
            device=run.device,
        )


def _save_cancel_checkpoint(run: Run, trainer, policy, tokenizer) -> None:
    from training.engine import checkpoints

    if not trainer.is_world_process_zero():
        return
    path = run.checkpoint_root / f"checkpoint-{run.global_step}"
    path.mkdir(parents=True, exist_ok=True)
    # Policy weights only: enough to sample from or to start a new PPO run, not to resume.
    save_model(policy, tokenizer, path, merge_lora=False)
    checkpoints.mark_complete(path, run.global_step)
    run.sink.emit("checkpoint", step=run.global_step, path=str(path), policy_only=True)
