"""Evaluation helpers: perplexity, reward-model pairwise accuracy, and a policy's mean reward
and win-rate against a reference policy under a reward model, on held-out prompts."""

from __future__ import annotations

import math
from pathlib import Path


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _text(tokenizer, prompt, response) -> str:
    if isinstance(prompt, list):  # conversational rows: render the whole exchange
        messages = prompt + (response if isinstance(response, list) else
                             [{"role": "assistant", "content": response}])  # fmt: skip
        return tokenizer.apply_chat_template(messages, tokenize=False)
    # TRL's RewardTrainer ends every plain-text answer with the end token, so a reward model
    # learns to give its score there: score it there too.
    text, eos = prompt + response, tokenizer.eos_token or ""
    return text if text.endswith(eos) else text + eos


def perplexity(
    model_dir: str | Path, texts: list[str], *, max_length: int = 1024, batch_size: int = 8
) -> float:
    """Token-level perplexity of a causal LM on `texts` (pads excluded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(_device()).eval()
    nll, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        ).to(model.device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.no_grad():
            logits = model(**batch).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="sum"
        )
        nll += loss.item()
        count += int((target != -100).sum())
    return math.exp(nll / max(count, 1))


class RewardScorer:
    """Scores prompt+response texts with a one-label sequence-classification model."""

    def __init__(self, reward_model_dir: str | Path, *, max_length: int = 1024) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
        self.model.to(_device()).eval()
        self.max_length = max_length

    def score(self, prompts: list, responses: list, batch_size: int = 16) -> list[float]:
        import torch

        texts = [_text(self.tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
        scores: list[float] = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.model.device)
            with torch.no_grad():
                scores += self.model(**batch).logits[:, 0].float().tolist()
        return scores


def reward_accuracy(reward_model_dir: str | Path, rows: list[dict]) -> dict:
    """Pairwise accuracy (chosen scored above rejected) and mean margin on preference rows."""
    scorer = RewardScorer(reward_model_dir)
    prompts = [r.get("prompt", "") for r in rows]
    chosen = scorer.score(prompts, [r["chosen"] for r in rows])
    rejected = scorer.score(prompts, [r["rejected"] for r in rows])
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "accuracy": sum(m > 0 for m in margins) / max(len(margins), 1),
        "margin": sum(margins) / max(len(margins), 1),
        "n": len(margins),
    }


def policy_reward(
    policy_dir: str | Path,
    reward_model_dir: str | Path,
    prompts: list,
    *,
    reference_dir: str | Path | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
) -> dict:
    """Mean reward of the policy's responses and, with a reference, its win-rate (ties count
    half) against the reference policy's responses to the same prompts. Responses are decoded
    `batch_size` prompts at a time (left-padded; under greedy decoding, the default, the same
    texts as one at a time)."""
    from .generation import sample_responses

    def responses(model_dir):
        samples = sample_responses(
            model_dir, prompts, k=1, temperature=temperature,
            max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
        )  # fmt: skip
        return [s[0]["text"] for s in samples]

    scorer = RewardScorer(reward_model_dir)
    policy_scores = scorer.score(prompts, responses(policy_dir))
    result = {
        "mean_reward": sum(policy_scores) / len(policy_scores),
        "n": len(policy_scores),
        "decoding": {
            "temperature": temperature,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "batch_size": batch_size,
        },  # fmt: skip
    }
    if reference_dir is not None:
        ref_scores = scorer.score(prompts, responses(reference_dir))
        wins = sum(1.0 if p > r else 0.5 if p == r else 0.0
                   for p, r in zip(policy_scores, ref_scores, strict=True))  # fmt: skip
        result["reference_mean_reward"] = sum(ref_scores) / len(ref_scores)
        result["win_rate"] = wins / len(policy_scores)
    return result
