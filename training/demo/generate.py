"""Sampling from a policy and scoring with a reward model, on CPU, in batches.

The engine's `sample_responses` samples one prompt at a time and decodes without telling whether
the end token was emitted; the oracle needs that (an unfinished answer costs 1), and evaluation
samples thousands of short answers, so this batches prompts and reports `ended`. Decoding
settings are explicit so that every compared policy is sampled the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .world import format_prompt


@dataclass
class Sample:
    prompt: str
    text: str
    ended: bool  # emitted the end token within the length limit


_POLICIES: dict[str, tuple] = {}


def _printable(text: str) -> str:
    """Drop control characters a byte-level model can emit: PostgreSQL rejects NUL in text
    columns, and no labeler should see the others either."""
    return "".join(ch for ch in text if ch >= " " or ch in "\n\t")


def _load_policy(model_dir: str):
    """The engine's loader, cached: evaluation samples the same policy at several settings."""
    from training.engine.generation import load_policy

    if model_dir not in _POLICIES:
        if len(_POLICIES) >= 4:
            _POLICIES.pop(next(iter(_POLICIES)))
        _POLICIES[model_dir] = load_policy(model_dir)
    return _POLICIES[model_dir]


def sample(
    model_dir: str,
    prompts: list[str],
    *,
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    seed: int = 0,
    batch_size: int = 128,
) -> list[list[Sample]]:
    """`n` samples per prompt. temperature 0 decodes greedily (then n should be 1)."""
    import torch

    model, tok = _load_policy(model_dir)
    torch.manual_seed(seed)
    out: list[list[Sample]] = [[] for _ in prompts]
    flat = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
    with torch.no_grad():
        for start in range(0, len(flat), batch_size):
            chunk = flat[start : start + batch_size]
            enc = tok(
                [format_prompt(p) for _, p in chunk],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(model.device)
            kwargs = dict(
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            else:
                kwargs.update(do_sample=False)
            gen = model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1] :]
            for (i, p), ids in zip(chunk, new.tolist(), strict=True):
                ended = tok.eos_token_id in ids
                if ended:
                    ids = ids[: ids.index(tok.eos_token_id)]
                ids = [t for t in ids if t != tok.pad_token_id]
                text = _printable(tok.decode(ids, skip_special_tokens=True)).strip()
                out[i].append(Sample(p, text, ended))
    return out


def reward_scores(
    rm_dir: str, pairs: list[tuple[str, str]], *, batch_size: int = 128
) -> list[float]:
    """Reward-model scores of (prompt, response) pairs by the engine's scorer, each response
    ended by the end token as TRL's reward trainer ends the chosen and rejected answers."""
    from training.engine.evaluation import RewardScorer

    scorer = RewardScorer(rm_dir)
    eos = scorer.tokenizer.eos_token
    return scorer.score(
        [format_prompt(p) for p, _ in pairs], [r + eos for _, r in pairs], batch_size=batch_size
    )
