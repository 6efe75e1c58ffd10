"""The PPO loop: updates of rollout -> advantages -> PPO epochs over minibatches, with
metrics, periodic atomic checkpoints and an exact resume.

One *update* is one rollout batch of `per_device_train_batch_size x gradient_accumulation_steps`
prompts per process, then `num_ppo_epochs` passes over it in `num_mini_batches` minibatches
(one optimizer step each). Steps on the progress log count updates. A checkpoint taken after
update k holds everything the next update reads, so a run resumed from it runs update k+1
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass, field

import torch

from .. import checkpoints
from ..runtime import NAN_ADVICE, Run, cancel_requested, logging_steps, prepare_resume
from .advantages import (
    KLController,
    gae,
    kl_per_token,
    masked_mean,
    masked_var,
    token_rewards,
    whiten,
)
from .losses import lm_loss, policy_loss, value_loss
from .rollout import PolicyAndValue, entropy_of, logprobs_of, pad_left, rollout, rollout_stats


class Sampler:
    """An endless stream of row indices: a fresh seeded shuffle each epoch, no state but the
    position. Episode p is row perm(p // n)[p % n]; resuming at p is exact, also mid-epoch or
    at an epoch boundary, and a longer run simply reads on."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def take(self, start: int, count: int) -> list[int]:
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + count)]


@dataclass
class PPOState:
    """Counters and history a checkpoint carries beside weights, optimizer and RNG."""

    update: int = 0  # updates done
    episode: int = 0  # prompts consumed, all processes together (the prompt sampler's position)
    ptx_position: int = 0  # rows of the ptx snapshot consumed, all processes together
    history: list[dict] = field(default_factory=list)  # metrics of every update so far

    def state_dict(self) -> dict:
        return {"update": self.update, "episode": self.episode,
                "ptx_position": self.ptx_position, "history": self.history}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.update, self.episode = state["update"], state["episode"]
        self.ptx_position, self.history = state["ptx_position"], list(state["history"])


@dataclass
class Plan:
    """Sizes of one run, derived once from the config and the number of processes."""

    local_batch: int  # prompts per process per update
    global_batch: int
    mini_batch: int  # per process, one optimizer step
    micro_batch: int  # per process, one forward/backward
    num_updates: int

    @classmethod
    def of(cls, cfg, n_prompts: int, num_processes: int) -> Plan:
        local = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
        mini = local // cfg.num_mini_batches
        # The largest micro-batch <= per_device_train_batch_size that divides the minibatch.
        micro = max(d for d in range(1, min(mini, cfg.per_device_train_batch_size) + 1)
                    if mini % d == 0)  # fmt: skip
        global_batch = local * num_processes
        if cfg.max_steps > 0:
            updates = cfg.max_steps  # an update is a step, however many processes share it
        else:
            episodes = cfg.total_episodes or int(cfg.num_train_epochs * n_prompts)
            updates = max(1, math.ceil(episodes / global_batch))
        return cls(local, global_batch, mini, micro, updates)


def _ptx_batch(ptx, state: PPOState, plan: Plan, accelerator, pad_id: int, device):
    """The next micro-batch of the ptx snapshot for this process (right-padded ids, mask)."""
    count = plan.micro_batch * accelerator.num_processes
    rows = ptx["sampler"].take(state.ptx_position, count)
    state.ptx_position += count
    mine = rows[accelerator.process_index * plan.micro_batch :][: plan.micro_batch]
    seqs = [ptx["ids"][i] for i in mine]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    return ids, mask


def train(
    run: Run,
    *,
    accelerator,
    policy,
    critic,
    ref_policy,
    reward_model,
    prompts: list[list[int]],
    tokenizer,
    ptx: dict | None = None,
) -> PolicyAndValue:
    """Train to the end (or to cancel / a non-finite loss); return the trained models."""
    cfg = run.cfg
    pad_id = tokenizer.pad_token_id
    stop_id = tokenizer.eos_token_id if cfg.stop_token == "eos" else None
    plan = Plan.of(cfg, len(prompts), accelerator.num_processes)
    sampler = Sampler(len(prompts), cfg.seed)

    # --- Models, optimizer, schedule ---------------------------------------------------------
    # PPO's ratio compares two forward passes of the same weights: dropout would make it noise.
    for m in (policy, critic, ref_policy, reward_model):
        for module in m.modules() if m is not None else ():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if cfg.gradient_checkpointing:
        for m in (policy, critic):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = PolicyAndValue(policy, critic)
    adam = cfg.trainer_kwargs  # only adam_beta1/2 and adam_epsilon get here (config.py)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.learning_rate,
        betas=(adam.get("adam_beta1", 0.9), adam.get("adam_beta2", 0.999)),
        eps=adam.get("adam_epsilon", 1e-8),
        weight_decay=cfg.weight_decay,
    )
    from transformers import get_scheduler

    # One schedule step per update; a resume with another total_episodes keeps the step it
    # reached and follows the new horizon from there.
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=plan.num_updates)  # fmt: skip
    model, optimizer = accelerator.prepare(model, optimizer)
    if ref_policy is not None:
        ref_policy = ref_policy.to(accelerator.device).eval()
    if reward_model is not None:
        reward_model = reward_model.to(accelerator.device).eval()
    kl_ctl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    state = PPOState()
    # Checkpoints: the trained parameters only (with LoRA the frozen base would be most of it).
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    accelerator.register_save_state_pre_hook(
        lambda models, weights, _dir: weights.__setitem__(
            0, {k: v for k, v in weights[0].items() if k in trained}
        )
    )
    accelerator.register_for_checkpointing(scheduler, kl_ctl, state)

    # --- Resume ------------------------------------------------------------------------------
    prepare_resume(run)  # rank 0 tidies the folder, every rank waits for it
    resume_from = checkpoints.last_complete(run.checkpoint_root) if cfg.resume else None
    if resume_from is not None:
        accelerator.load_state(str(resume_from), strict=False)  # RNG states included
        # The schedule is this run's: its horizon (the lambda was built for plan.num_updates)
        # and its peak, should the resume have changed learning_rate.
        scheduler.base_lrs = [cfg.learning_rate] * len(scheduler.base_lrs)
    else:
        from accelerate.utils import set_seed

        set_seed(cfg.seed, device_specific=True)  # each process samples its own responses
    run.start_step = run.global_step = state.update
    run.started = time.time()
    if accelerator.is_main_process:
        run.sink.emit("start", stage=cfg.stage, output_dir=str(run.output_dir),
                      notes=list(run.notes), step=state.update, total_steps=plan.num_updates,
                      epoch=state.episode / len(prompts),
                      resumed_from=str(resume_from) if resume_from else None)  # fmt: skip
    unwrapped = accelerator.unwrap_model(model)
    device = accelerator.device
    episodes_at_start, tokens = state.episode, 0

    # --- Updates -----------------------------------------------------------------------------
    while state.update < plan.num_updates:
        rows = sampler.take(state.episode, plan.global_batch)
        mine = rows[accelerator.process_index * plan.local_batch :][: plan.local_batch]
        queries = pad_left([prompts[i] for i in mine], pad_id).to(device)
        model.train()
        ro = rollout(unwrapped, queries, ref_policy=ref_policy, reward_model=reward_model,
                     pad_id=pad_id, stop_id=stop_id, response_length=cfg.response_length,
                     temperature=cfg.temperature, chunk_size=cfg.local_rollout_forward_batch_size,
                     missing_eos_penalty=cfg.missing_eos_penalty)  # fmt: skip
        tokens += int((queries != pad_id).sum() + ro.mask.sum())

        kl = kl_per_token(ro.logprobs, ro.ref_logprobs, cfg.kl_estimator) * ro.mask
        rewards, non_score = token_rewards(ro.scores, kl, kl_ctl.value, ro.mask, ro.last_index)
        if cfg.whiten_rewards:
            rewards = whiten(rewards, ro.mask, shift_mean=False) * ro.mask
        advantages, returns = gae(rewards, ro.values, ro.mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, ro.mask) * ro.mask

        stats = _optimize(model, optimizer, accelerator, ro, advantages, returns, cfg=cfg,
                          plan=plan, pad_id=pad_id, ptx=ptx, state=state)  # fmt: skip
        lr = scheduler.get_last_lr()[0]
        scheduler.step()

        # --- Metrics: averaged over processes, so every rank logs and decides the same -----
        local = {k: torch.stack(v).mean() for k, v in stats.items()}
        local.update(rollout_stats(ro, kl, non_score))
        keys = sorted(local)
        means = accelerator.reduce(torch.stack([local[k].float() for k in keys]), "mean")
        metrics = {k: float(v) for k, v in zip(keys, means.tolist(), strict=True)}
        metrics["val/num_eos_tokens"] *= accelerator.num_processes  # a count: the sum
        kl_ctl.update(metrics["objective/kl"], plan.global_batch)
        state.update += 1
        state.episode += plan.global_batch
        elapsed = max(time.time() - run.started, 1e-9)
        metrics.update({
            "objective/kl_coef": kl_ctl.value,
            "eps": (state.episode - episodes_at_start) / elapsed,
            "lr": lr,
            "episode": state.episode,
        })  # fmt: skip
        state.history.append(metrics)
        accelerator.log(metrics, step=state.update)  # report_to's trackers; none: a no-op
        run.global_step = state.update

        bad = [k for k in ("loss/policy_avg", "loss/value_avg", "loss/ptx")
               if k in metrics and not math.isfinite(metrics[k])]  # fmt: skip
        if bad:
            run.failure = f"{bad[0]} became {metrics[bad[0]]} at step {state.update}"
            run.advice = NAN_ADVICE
        if state.update % logging_steps(cfg, run.device) == 0 or bad:
            # Throughput of all processes together (every rank takes this branch: a collective).
            all_tokens = float(accelerator.reduce(torch.tensor(float(tokens), device=device),
                                                  "sum"))  # fmt: skip
        if accelerator.is_main_process and (
            state.update % logging_steps(cfg, run.device) == 0 or bad
        ):
            done = state.update - run.start_step
            run.sink.emit(
                "progress",
                step=state.update,
                total_steps=plan.num_updates,
                epoch=state.episode / len(prompts),
                loss=metrics["loss/policy_avg"],
                learning_rate=lr,
                tokens_per_s=all_tokens / elapsed,
                eta_s=elapsed / done * (plan.num_updates - state.update),
                metrics=metrics,
            )
        run.last_logs = metrics | {"loss": metrics["loss/policy_avg"]}
        if bad:  # a non-finite checkpoint is worse than none
            break
        if state.update == plan.num_updates:
            break  # done: the stage saves the model; a checkpoint would only be deleted
        # Rank 0 reads the flag and every process gets its answer: all stop at this update.
        cancelled = cancel_requested(run)
        if cancelled or state.update % cfg.save_steps == 0:
            save_checkpoint(run, accelerator, state, plan)
        if cancelled:
            run.cancelled = True
            break
    return unwrapped


def _optimize(model, optimizer, accelerator, ro, advantages, returns, *, cfg, plan, pad_id,
              ptx, state) -> dict[str, list[torch.Tensor]]:  # fmt: skip
    """`num_ppo_epochs` passes over the rollout in shuffled minibatches, one optimizer step
    each; returns every micro-batch's losses and diagnostics."""
    stats: dict[str, list[torch.Tensor]] = {}
    P = ro.queries.shape[1]  # responses start at this column
    n_micro = plan.mini_batch // plan.micro_batch
    for _ in range(cfg.num_ppo_epochs):
        order = torch.randperm(plan.local_batch, device=accelerator.device)
        for mini in order.split(plan.mini_batch):
            for i, idx in enumerate(mini.split(plan.micro_batch)):
                ptx_ids = ptx_mask = None
                if ptx is not None:
                    ptx_ids, ptx_mask = _ptx_batch(ptx, state, plan, accelerator, pad_id,
                                                   accelerator.device)  # fmt: skip
                mask = ro.mask[idx]
                # Gradients are all-reduced once per minibatch, on its last micro-batch.
                last_micro = i == n_micro - 1
                with contextlib.nullcontext() if last_micro else accelerator.no_sync(model):
                    logits, values, ptx_logits = model(ro.query_responses[idx], pad_id,
                                                       ptx_ids, ptx_mask)  # fmt: skip
                    logits = logits[:, P - 1 : -1]
                    new_logprobs = logprobs_of(logits, ro.responses[idx], cfg.temperature)
                    pg_loss, pg_clip, approx_kl, ratio = policy_loss(
                        new_logprobs, ro.logprobs[idx], advantages[idx], mask, cfg.cliprange
                    )
                    vf_loss, vf_clip = value_loss(values[:, P - 1 : -1], ro.values[idx],
                                                  returns[idx], mask, cfg.cliprange_value)  # fmt: skip
                    loss = pg_loss + cfg.vf_coef * vf_loss
                    if ptx_logits is not None:
                        ptx_loss = lm_loss(ptx_logits, ptx_ids, ptx_mask)
                        loss = loss + cfg.ptx_coef * ptx_loss
                        stats.setdefault("loss/ptx", []).append(ptx_loss.detach())
                    accelerator.backward(loss / n_micro)
                with torch.no_grad():
                    for key, value in (
                        ("loss/policy_avg", pg_loss), ("loss/value_avg", vf_loss),
                        ("policy/clipfrac_avg", pg_clip), ("val/clipfrac_avg", vf_clip),
                        ("policy/approxkl_avg", approx_kl),
                        ("policy/entropy_avg", masked_mean(entropy_of(logits), mask)),
                        ("val/ratio", masked_mean(ratio, mask)),
                        ("val/ratio_var", masked_var(ratio, mask)),
                    ):  # fmt: skip
                        stats.setdefault(key, []).append(value.detach())
            if cfg.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return stats


def save_checkpoint(run: Run, accelerator, state: PPOState, plan: Plan) -> None:
    """Write checkpoint-<update>/ and only then its completion marker, so a kill mid-write
    leaves a directory that resume ignores (and removes). Keeps `save_total_limit` of them."""
    path = run.checkpoint_root / f"checkpoint-{state.update}"
    if accelerator.is_main_process and path.exists():
        shutil.rmtree(path)  # an earlier, unmarked attempt at this step
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    checkpoints.mark_complete(path, state.update)
    limit = run.cfg.save_total_limit
    complete = [p for _, p, ok in checkpoints.list_checkpoints(run.checkpoint_root) if ok]
    for old in complete[:-limit] if limit else []:
        shutil.rmtree(old, ignore_errors=True)
    run.sink.emit("checkpoint", step=state.update, total_steps=plan.num_updates, path=str(path))
