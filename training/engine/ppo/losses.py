"""The PPO objective: clipped policy loss, clipped value loss, and PPO-ptx's LM loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .advantages import masked_mean


def policy_loss(new_logprobs, old_logprobs, advantages, mask, cliprange: float) -> tuple:
    """PPO-clip (Schulman et al. 2017, eq. 7), as a loss to minimise.

    Returns (loss, clip fraction, approx KL). The approx KL is 0.5 x mean(logratio^2), as TRL
    reports it, so the figure keeps its meaning on the charts.
    """
    logratio = new_logprobs - old_logprobs
    ratio = logratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(logratio**2, mask)
    return loss, clipfrac, approx_kl, ratio


def value_loss(new_values, old_values, returns, mask, cliprange_value: float) -> tuple:
    """Clipped value loss: the critic may not move further than `cliprange_value` from the
    values it had at rollout, which keeps it from chasing one batch's noisy returns."""
    clipped = old_values + (new_values - old_values).clamp(-cliprange_value, cliprange_value)
    losses = torch.max((new_values - returns) ** 2, (clipped - returns) ** 2)
    loss = 0.5 * masked_mean(losses, mask)
    clipfrac = masked_mean(((clipped - returns) ** 2 > (new_values - returns) ** 2).float(), mask)
    return loss, clipfrac


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask) -> torch.Tensor:
    """Mean next-token cross-entropy over real tokens: PPO-ptx's pretraining term (Ouyang et
    al. 2022, eq. 2), which keeps the policy's language while PPO chases the reward."""
    labels = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
    )
