"""Rollout: sample responses to a batch of prompts and record what PPO needs about them.

Everything here runs without gradients. Shapes: B prompts, P prompt tokens (left-padded so
every response starts at column P), R response tokens (right-padded after the stop token).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


def pad_left(sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Prompts padded on the left, so generation continues every one of them at the same column."""
    width = max(len(s) for s in sequences)
    return torch.tensor([[pad_id] * (width - len(s)) + list(s) for s in sequences])


def model_inputs(ids: torch.Tensor, pad_id: int) -> dict:
    """input_ids / attention_mask / position_ids for a padded batch. Positions count real tokens
    only, so a left-padded prompt sees the same positions as it would unpadded."""
    mask = ids != pad_id
    return {
        "input_ids": ids.masked_fill(~mask, 0),
        "attention_mask": mask.long(),
        "position_ids": (mask.cumsum(1) - mask.long()).clamp(min=0),
    }


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token) under the sampling distribution (logits / temperature): the distribution the
    tokens were drawn from, so the PPO ratio starts at exactly 1."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def unwrap_peft(model):
    """The transformers model inside a PeftModel (LoRA layers stay injected), or the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def adapter_disabled(model):
    """The base model without its LoRA adapter: the reference policy / the reward model."""
    with model.disable_adapter():
        yield


def scorer_values(model, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """A one-label scorer's output at every position (B, T). Its own forward pools the last
    token only; the critic needs a value per token, so we run trunk and head ourselves."""
    base = unwrap_peft(model)
    trunk = getattr(base, base.base_model_prefix)
    hidden = trunk(**model_inputs(ids, pad_id), use_cache=False).last_hidden_state
    return base.score(hidden).squeeze(-1).float()


class PolicyAndValue(nn.Module):
    """The two trained models as one module: one optimizer, one `accelerator.prepare`, one
    gradient all-reduce under DDP (what TRL does too). PPO-ptx's batch goes through the same
    forward so that every parameter DDP tracks takes part in every backward."""

    def __init__(self, policy: nn.Module, critic: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic

    def forward(self, ids, pad_id: int, ptx_ids=None, ptx_mask=None):
        logits = self.policy(**model_inputs(ids, pad_id), use_cache=False).logits
        values = scorer_values(self.critic, ids, pad_id)
        ptx_logits = None
        if ptx_ids is not None:
            ptx_logits = self.policy(input_ids=ptx_ids, attention_mask=ptx_mask).logits
        return logits, values, ptx_logits


@dataclass
class Rollout:
    queries: torch.Tensor  # (B, P) left-padded prompts
    responses: torch.Tensor  # (B, R) responses, pad after the stop token
    mask: torch.Tensor  # (B, R) 1.0 on real response tokens (the stop token included)
    last_index: torch.Tensor  # (B,) index of each response's last real token
    logprobs: torch.Tensor  # (B, R) under the policy that sampled them
    ref_logprobs: torch.Tensor  # (B, R) under the reference policy
    values: torch.Tensor  # (B, R) the critic's value before each response token
    scores: torch.Tensor  # (B,) reward model score, after the missing-EOS penalty
    ended: torch.Tensor  # (B,) whether the response emitted the stop token

    @property
    def query_responses(self) -> torch.Tensor:
        return torch.cat([self.queries, self.responses], dim=1)


def truncate_at_stop(responses: torch.Tensor, stop_id: int | None, pad_id: int) -> torch.Tensor:
    """Everything after the first stop token becomes padding (the stop token itself stays)."""
    if stop_id is None:
        return responses
    is_stop = responses == stop_id
    after = (is_stop.long().cumsum(1) - is_stop.long()) > 0
    return responses.masked_fill(after, pad_id)


@torch.no_grad()
def generate(policy, queries: torch.Tensor, *, pad_id, stop_id, response_length, temperature):
    """Sampled responses (B, response_length), pad after the stop token. Generation runs in eval
    mode: with gradient checkpointing on, train mode would switch the KV cache off."""
    was_training = policy.training
    policy.eval()
    try:
        out = policy.generate(
            **{k: v for k, v in model_inputs(queries, pad_id).items() if k != "position_ids"},
            max_new_tokens=response_length,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            pad_token_id=pad_id,
            # No stop token: sample the full length (EOS may still appear as a token).
            eos_token_id=stop_id,
        )
    finally:
        policy.train(was_training)
    responses = out[:, queries.shape[1] :]
    if responses.shape[1] < response_length:  # every sequence stopped early
        fill = responses.new_full((len(responses), response_length - responses.shape[1]), pad_id)
        responses = torch.cat([responses, fill], dim=1)
    return truncate_at_stop(responses, stop_id, pad_id)


@torch.no_grad()
def rollout(
    model: PolicyAndValue,
    queries: torch.Tensor,
    *,
    ref_policy,
    reward_model,
    pad_id: int,
    stop_id: int | None,
    response_length: int,
    temperature: float,
    chunk_size: int,
    missing_eos_penalty: float | None,
) -> Rollout:
    """Generate for `queries` in chunks of `chunk_size` and score every response.

    `ref_policy` / `reward_model` None mean "the trained model with its LoRA adapter disabled".
    """
    responses = torch.cat(
        [
            generate(model.policy, q, pad_id=pad_id, stop_id=stop_id,
                     response_length=response_length, temperature=temperature)
            for q in queries.split(chunk_size)
        ]
    )  # fmt: skip
    # Drop the columns that are padding in every row: every later forward pass gets shorter.
    real = responses != pad_id
    width = int(real.any(0).nonzero().max()) + 1 if real.any() else 1
    responses = responses[:, :width]
    real = real[:, :width]
    # Responses end at their last real token; an empty one (immediate pad) counts its column 0.
    last_index = (real.cumsum(1) * real).argmax(1)
    mask = (torch.arange(width, device=responses.device) <= last_index[:, None]).float()
    ended = (
        (responses == stop_id).any(1) if stop_id is not None else torch.ones_like(last_index).bool()
    )

    P = queries.shape[1]
    parts: dict[str, list] = {"logprobs": [], "ref": [], "values": [], "scores": []}
    for q, r, last in zip(queries.split(chunk_size), responses.split(chunk_size),
                          last_index.split(chunk_size), strict=True):  # fmt: skip
        ids = torch.cat([q, r], dim=1)
        logits, values, _ = model(ids, pad_id)
        parts["logprobs"].append(logprobs_of(logits[:, P - 1 : -1], r, temperature))
        parts["values"].append(values[:, P - 1 : -1])
        if ref_policy is None:
            with adapter_disabled(model.policy):
                ref_logits = model.policy(**model_inputs(ids, pad_id), use_cache=False).logits
        else:
            ref_logits = ref_policy(**model_inputs(ids, pad_id), use_cache=False).logits
        parts["ref"].append(logprobs_of(ref_logits[:, P - 1 : -1], r, temperature))
        if reward_model is None:
            with adapter_disabled(model.critic):
                all_scores = scorer_values(model.critic, ids, pad_id)
        else:
            all_scores = scorer_values(reward_model, ids, pad_id)
        # The reward model reads the whole answer: its score at the last real token.
        parts["scores"].append(all_scores[torch.arange(len(ids)), P + last])
    scores = torch.cat(parts["scores"])
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~ended).float()
    return Rollout(
        queries=queries,
        responses=responses,
        mask=mask,
        last_index=last_index,
        logprobs=torch.cat(parts["logprobs"]) * mask,
        ref_logprobs=torch.cat(parts["ref"]) * mask,
        values=torch.cat(parts["values"]) * mask,
        scores=scores,
        ended=ended,
    )


def rollout_stats(
    ro: Rollout, kl: torch.Tensor, non_score: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-process sums/means of what the charts show, before the all-process average."""
    return {
        "objective/kl": (kl * ro.mask).sum(1).mean(),
        "objective/entropy": (-ro.logprobs * ro.mask).sum(1).mean(),
        "objective/non_score_reward": non_score.sum(1).mean(),
        "objective/rlhf_reward": (ro.scores + non_score.sum(1)).mean(),
        "objective/scores": ro.scores.mean(),
        "val/num_eos_tokens": ro.ended.float().sum(),
        "response_length": ro.mask.sum(1).mean(),
    }
