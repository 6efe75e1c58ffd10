"""PPO (RLHF) and PPO-ptx: the engine's own implementation (training/engine/ppo/), behind the
stage interface. Three blocks: models and tokenizer, data, training."""

from __future__ import annotations

from ..config import ConfigError
from ..runtime import (
    Run,
    is_sharded,
    load_model,
    load_tokenizer,
    lora_config,
    processes_note,
    save_model,
    tracker_kwargs,
)
from ..snapshots import check_columns, load_split, read_snapshot

# What the run's metrics.json keeps from the last update (the names TRL's PPO used).
FINAL_METRICS = ("objective/kl", "objective/scores", "objective/rlhf_reward", "objective/entropy",
                 "objective/non_score_reward", "objective/kl_coef", "loss/policy_avg",
                 "loss/value_avg", "loss/ptx", "eps")  # fmt: skip


def _prompt_ids(snapshot, split: str, tokenizer, max_prompt_length: int) -> list[list[int]]:
    ds = load_split(snapshot, split, ("prompt",))
    out = []
    for prompt in ds["prompt"]:
        if isinstance(prompt, list):  # conversational prompt: render up to the assistant turn
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if 0 < len(ids) <= max_prompt_length:
            out.append(list(ids))
    return out


def _ptx_ids(run: Run, tokenizer) -> list[list[int]]:
    """Token ids of the ptx snapshot's train rows: pretrain text, prompt + completion, or a
    chat rendered with the template; cut at max_length."""
    cfg = run.cfg
    field = "ppo.ptx_snapshot"
    if not cfg.ptx_snapshot:
        raise ConfigError(f"{field}: required when ptx_coef > 0 (a pretrain or SFT snapshot)")
    snapshot = read_snapshot(cfg.ptx_snapshot, field=field)
    if snapshot.kind not in ("pretrain", "sft", "instruction"):
        raise ConfigError(f"{field}: snapshot kind {snapshot.kind!r} does not fit PPO-ptx "
                          "(expected pretrain, sft or instruction)")  # fmt: skip
    columns = check_columns(snapshot, snapshot.kind, field=field)
    run.use_snapshot("ptx_snapshot", snapshot)
    out = []
    for row in load_split(snapshot, "train", columns):
        if "messages" in row:
            ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
        else:
            text = row["text"] if "text" in row else row["prompt"] + row["completion"]
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > 1:
            out.append(list(ids)[: cfg.max_length])
    if not out:
        raise ConfigError(f"{field}: no train row of {snapshot.path} has two or more tokens")
    return out


def run(run: Run) -> None:
    from accelerate import Accelerator
    from transformers import set_seed

    from ..ppo.loop import Sampler, train

    cfg = run.cfg

    # --- Data: prompts (left-padded by the rollout) and the optional ptx snapshot -----------
    tokenizer = load_tokenizer(cfg, cfg.model, padding_side="left")
    snapshot = read_snapshot(cfg.prompts, field="ppo.prompts")
    run.use_snapshot("prompts", snapshot)
    check_columns(snapshot, "ppo", field="ppo.prompts")
    prompts = _prompt_ids(snapshot, "train", tokenizer, cfg.max_prompt_length)
    if not prompts:
        raise ConfigError(f"ppo.prompts: no train prompt of {snapshot.path} fits "
                          f"max_prompt_length={cfg.max_prompt_length} tokens")  # fmt: skip
    ptx = None
    if cfg.ptx_coef > 0:
        ids = _ptx_ids(run, tokenizer)
        ptx = {"ids": ids, "sampler": Sampler(len(ids), cfg.seed + 1)}

    # --- Models: policy + critic trained; reference and reward frozen (see ppo/__init__) -----
    accelerator = Accelerator(cpu=run.device == "cpu", **tracker_kwargs(run))
    if is_sharded(accelerator):
        # Each rank's rollout generates with the whole policy; sharded, the first forward pass
        # would die on a DTensor error that names neither PPO nor the accelerate config.
        raise ConfigError("ppo: the engine's PPO does not run sharded (FSDP, DeepSpeed ZeRO-3): "
                          "its rollout needs the whole policy on each process; launch it with "
                          "training/accelerate/ddp.yaml or zero2.yaml")  # fmt: skip
    if cfg.report_to != "none":  # beside the sink: every update's metrics (ppo/loop.py)
        accelerator.init_trackers("tensorboard" if cfg.report_to == "tensorboard" else cfg.stage)
    set_seed(cfg.seed)  # LoRA adapters start from random weights
    policy = load_model(cfg.model, run, tokenizer)
    critic_source = cfg.value_model or cfg.reward_model
    critic = load_model(critic_source, run, tokenizer, kind="score")
    ref_policy = reward_model = None
    if cfg.use_lora:
        from peft import get_peft_model

        policy = get_peft_model(policy, lora_config(cfg))
        critic = get_peft_model(critic, lora_config(cfg, "SEQ_CLS"))
    if not cfg.use_lora or cfg.ref_model:
        ref_policy = load_model(cfg.ref_model or cfg.model, run, tokenizer, trainable=False)
    if not cfg.use_lora or critic_source != cfg.reward_model:
        reward_model = load_model(cfg.reward_model, run, tokenizer, kind="score", trainable=False)
    for frozen in (ref_policy, reward_model):
        if frozen is not None:
            frozen.requires_grad_(False)

    # --- Training ----------------------------------------------------------------------------
    try:
        model = train(run, accelerator=accelerator, policy=policy, critic=critic,
                      ref_policy=ref_policy, reward_model=reward_model, prompts=prompts,
                      tokenizer=tokenizer, ptx=ptx)  # fmt: skip
    finally:
        # Flush and close the trackers. Not `accelerator.end_training()`: it also destroys the
        # process group, which the collectives below (weights check, save) still need.
        for tracker in accelerator.trackers:
            tracker.finish()
    if run.cancelled or run.failure:
        return
    from ..artifacts import write_artifacts

    last = run.last_logs
    run.metrics = {k: last[k] for k in FINAL_METRICS if k in last}
    run.metrics["train_loss"] = last.get("loss/policy_avg")
    processes_note(run, accelerator, model)
    if accelerator.is_main_process:
        save_model(model.policy, tokenizer, run.output_dir, merge_lora=cfg.merge_lora)
        write_artifacts(run.output_dir, cfg, snapshots=run.snapshots, metrics=run.metrics,
                        global_step=run.global_step, device=run.device)  # fmt: skip
