"""Evaluation under the hidden oracle: win-rates with bootstrap CIs, the best-temperature
control, reward-model accuracy and labeler quality. Pure Python over samples and rankings."""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

from . import oracle


@dataclass
class Sample:
    """One sampled answer as the oracle judges it."""

    prompt: str
    text: str
    ended: bool  # emitted the end token within the length limit


def outcomes(policy: list[Sample], baseline: list[Sample]) -> list[float]:
    """Per prompt: 1 if the oracle prefers the policy's sample, 0 if the baseline's, 0.5 tie."""
    return [
        oracle.prefer(p.prompt, p.text, b.text, a_ended=p.ended, b_ended=b.ended)
        for p, b in zip(policy, baseline, strict=True)
    ]


def bootstrap_ci(values: list[float], *, n: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the mean, resampling prompts."""
    if not values:
        return [0.0, 0.0]
    rng = random.Random(seed)
    k = len(values)
    means = sorted(sum(rng.choices(values, k=k)) / k for _ in range(n))
    return [round(means[int(0.025 * n)], 4), round(means[min(n - 1, int(0.975 * n))], 4)]


def win_rate(policy: list[Sample], baseline: list[Sample], *, seed: int = 0) -> dict:
    values = outcomes(policy, baseline)
    return {
        "win_rate": round(sum(values) / len(values), 4) if values else 0.0,
        "ci95": bootstrap_ci(values, seed=seed),
        "wins": sum(1 for v in values if v == 1.0),
        "ties": sum(1 for v in values if v == 0.5),
        "losses": sum(1 for v in values if v == 0.0),
        "prompts": len(values),
    }


def mean_score(samples: list[Sample]) -> float:
    if not samples:
        return 0.0
    return round(
        statistics.fmean(oracle.score(s.prompt, s.text, ended=s.ended) for s in samples), 4
    )


def style_profile(samples: list[Sample]) -> dict:
    """Shares of padded, rude, unfinished and fully correct answers: what changed, in words."""
    from .world import RUDE_WORDS

    n = max(1, len(samples))
    padded = sum(1 for s in samples if len(s.text.split()) > oracle.MAX_WORDS)
    rude = sum(
        1 for s in samples if any(w.strip(".,!?") in RUDE_WORDS for w in s.text.lower().split())
    )
    unfinished = sum(1 for s in samples if not s.ended)
    correct = sum(1 for s in samples if oracle.correctness(s.prompt, s.text) == 2.0)
    return {
        "mean_oracle_score": mean_score(samples),
        "padded": round(padded / n, 4),
        "rude": round(rude / n, 4),
        "unfinished": round(unfinished / n, 4),
        "correct": round(correct / n, 4),
    }


def reward_accuracy(groups: list[list[Sample]], scores: list[list[float]]) -> dict:
    """Share of response pairs, among those the oracle strictly orders, that the RM orders alike."""
    agree = total = 0
    for samples, rm in zip(groups, scores, strict=True):
        for i, j in combinations(range(len(samples)), 2):
            a, b = samples[i], samples[j]
            pref = oracle.prefer(a.prompt, a.text, b.text, a_ended=a.ended, b_ended=b.ended)
            if pref == 0.5 or rm[i] == rm[j]:
                continue
            total += 1
            agree += (pref == 1.0) == (rm[i] > rm[j])
    return {"accuracy": round(agree / total, 4) if total else 0.0, "pairs": total}


# --- Labelers --------------------------------------------------------------------------------


def _pairs_of(ranking: list[list[int]]) -> dict[tuple[int, int], int]:
    """(low id, high id) -> +1 if low ranked better, -1 if worse (ties omitted)."""
    out = {}
    for i, better_group in enumerate(ranking):
        for worse_group in ranking[i + 1 :]:
            for b in better_group:
                for w in worse_group:
                    out[(min(b, w), max(b, w))] = 1 if b < w else -1
    return out


def labeler_quality(rankings: list[dict], oracle_order: dict[tuple[int, int], int]) -> dict:
    """Quality of each labeler: agreement with the leave-one-out consensus of the others.

    `rankings`: {"task", "labeler", "ranking"} per rank annotation. For each pair a labeler
    ordered, the others' votes on that pair (excluding theirs) give a consensus; quality is
    the share of pairs where the labeler sides with it (pairs the others tie on are skipped).
    `oracle_order` gives the hidden truth per pair, reported beside it (never used by the
    platform). Also returns overall pairwise agreement between labelers.
    """
    votes: dict[tuple[int, tuple[int, int]], dict[str, int]] = defaultdict(dict)
    for r in rankings:
        for pair, sign in _pairs_of(r["ranking"]).items():
            votes[(r["task"], pair)][r["labeler"]] = sign
    stats: dict[str, dict[str, int]] = defaultdict(
        lambda: {"agree": 0, "n": 0, "oracle_agree": 0, "oracle_n": 0}
    )
    pair_agree = pair_total = 0
    for (_task, pair), by_labeler in votes.items():
        for name, sign in by_labeler.items():
            others = sum(s for other, s in by_labeler.items() if other != name)
            if others != 0:
                stats[name]["n"] += 1
                stats[name]["agree"] += (sign > 0) == (others > 0)
            truth = oracle_order.get(pair, 0)
            if truth != 0:
                stats[name]["oracle_n"] += 1
                stats[name]["oracle_agree"] += sign == truth
        for (_a, sa), (_b, sb) in combinations(by_labeler.items(), 2):
            pair_total += 1
            pair_agree += sa == sb
    quality = {
        name: {
            "quality": round(s["agree"] / s["n"], 4) if s["n"] else 0.0,
            "oracle_agreement": round(s["oracle_agree"] / s["oracle_n"], 4)
            if s["oracle_n"]
            else 0.0,
            "pairs": s["n"],
        }
        for name, s in stats.items()
    }
    return {
        "labelers": quality,
        "pairwise_agreement": round(pair_agree / pair_total, 4) if pair_total else 0.0,
    }
