"""Rewards to advantages: the per-token KL penalty, GAE, whitening, and the KL controller."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    # Bessel's correction: whitening a handful of tokens must not shrink them towards 0.
    return var * n / (n - 1) if n > 1 else var


def whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean (unless shift_mean=False: rewards keep their sign), unit variance over `mask`."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def kl_per_token(logprobs, ref_logprobs, estimator: str) -> torch.Tensor:
    """KL(policy || reference) per sampled token. k1 is unbiased but can go negative; k3
    (Schulman 2020, "Approximating KL divergence") is unbiased and never negative."""
    logr = ref_logprobs - logprobs
    if estimator == "k3":
        return logr.exp() - 1 - logr
    return -logr


def token_rewards(scores, kl, kl_coef: float, mask, last_index) -> tuple:
    """(rewards, non_score_reward): -kl_coef x KL at every response token, and the reward
    model's score added at the last real token of each response (where the episode ends)."""
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    rewards[torch.arange(len(scores), device=scores.device), last_index] += scores
    return rewards, non_score


def gae(rewards, values, mask, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    Values past the end of a response are 0, so the last real token bootstraps from nothing:
    the episode ends there. Returns (advantages, returns); returns = advantages + values is the
    value target.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, advantages + values


class KLController:
    """The KL coefficient: fixed, or adapted towards `target` (Ziegler et al. 2019, eq. 2).

    Adaptive: beta <- beta x (1 + clip(KL / target - 1, -0.2, 0.2) x n / horizon), with n the
    episodes of the update. Its value is state: a resumed run continues with the coefficient
    the interrupted run had reached, so it lives in every checkpoint.
    """

    def __init__(self, value: float, target: float | None = None, horizon: int = 10000) -> None:
        self.value = value
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n_episodes: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_episodes / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
