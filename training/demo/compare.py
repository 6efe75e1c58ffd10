"""The maths of the demo's two comparisons, judged by the hidden oracle (plain Python):
reward-model accuracy with bootstrap intervals over prompts, for the active-versus-random
prompt selection, and the oracle's verdict on arena battles beside the labelers'."""

from __future__ import annotations

import random
from collections import defaultdict
from itertools import combinations

from . import oracle
from .evaluate import Sample


def prompt_agreements(groups: list[list[Sample]], scores: list[list[float]]) -> list[list[int]]:
    """Per prompt [agree, total]: of the pairs of its samples the oracle strictly orders and the
    reward model does not tie, how many the reward model orders alike (the rule of
    `evaluate.reward_accuracy`, kept per prompt so that prompts can be resampled)."""
    out = []
    for samples, rm in zip(groups, scores, strict=True):
        agree = total = 0
        for i, j in combinations(range(len(samples)), 2):
            a, b = samples[i], samples[j]
            pref = oracle.prefer(a.prompt, a.text, b.text, a_ended=a.ended, b_ended=b.ended)
            if pref == 0.5 or rm[i] == rm[j]:
                continue
            total += 1
            agree += (pref == 1.0) == (rm[i] > rm[j])
        out.append([agree, total])
    return out


def _percentiles(values: list[float]) -> list[float]:
    ordered = sorted(values)
    n = len(ordered)
    return [round(ordered[int(0.025 * n)], 4), round(ordered[min(n - 1, int(0.975 * n))], 4)]


def accuracies(
    groups: list[list[Sample]],
    scores: dict[str, list[list[float]]],
    *,
    n: int = 2000,
    seed: int = 0,
    baseline: str | None = None,
) -> dict:
    """Each reward model's accuracy against the oracle on the same held-out pairs, with a 95%
    percentile-bootstrap interval (prompts resampled: a prompt's pairs share its samples), and,
    against `baseline`, the paired difference with its interval from the same resamples."""
    per = {name: prompt_agreements(groups, s) for name, s in scores.items()}
    k = len(groups)
    rng = random.Random(seed)
    draws: dict[str, list[float]] = defaultdict(list)
    diffs: dict[str, list[float]] = defaultdict(list)
    for _ in range(n if k else 0):
        idx = [rng.randrange(k) for _ in range(k)]
        acc = {}
        for name, rows in per.items():
            agree = sum(rows[i][0] for i in idx)
            total = sum(rows[i][1] for i in idx)
            acc[name] = agree / total if total else 0.0
            draws[name].append(acc[name])
        if baseline is not None:
            for name in per:
                if name != baseline:
                    diffs[name].append(acc[name] - acc[baseline])
    out = {}
    for name, rows in per.items():
        agree, total = sum(r[0] for r in rows), sum(r[1] for r in rows)
        out[name] = {
            "accuracy": round(agree / total, 4) if total else 0.0,
            "pairs": total,
            "ci95": _percentiles(draws[name]) if draws[name] else [0.0, 0.0],
        }
    for name, values in diffs.items():
        out[name][f"minus_{baseline}"] = round(out[name]["accuracy"] - out[baseline]["accuracy"], 4)
        out[name][f"minus_{baseline}_ci95"] = _percentiles(values)
    return out


def oracle_battles(battles: list[dict]) -> list[tuple[int, int, float]]:
    """The oracle's verdict on each battle {"a", "b" (model ids), "prompt", "a_text", "b_text",
    "a_ended", "b_ended"}, as the leaderboard's battles: (lower model id, other, its result)."""
    out = []
    for x in battles:
        result = oracle.prefer(
            x["prompt"], x["a_text"], x["b_text"], a_ended=x["a_ended"], b_ended=x["b_ended"]
        )
        a, b = x["a"], x["b"]
        out.append((a, b, result) if a < b else (b, a, 1.0 - result))
    return out


def win_rates(battles: list[tuple[int, int, float]]) -> dict[tuple[int, int], dict]:
    """(model, other) -> {"battles", "win_rate"} with ties half, both ways round."""
    results: dict[tuple[int, int], list[float]] = defaultdict(list)
    for a, b, result in battles:
        results[(a, b)].append(result)
        results[(b, a)].append(1.0 - result)
    return {
        pair: {"battles": len(v), "win_rate": round(sum(v) / len(v), 3)}
        for pair, v in results.items()
    }
