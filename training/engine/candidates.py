"""Candidates for a labeling round: K distinct responses per prompt from one or several models,
and the order in which prompts are worth asking about (uncertainty sampling).

Plain Python over the engine's samplers and scorers: no Django here.

Distinct. Two samples of a small model are often the same text ("It is 24." twice); a ranking
between them asks the labeler nothing and, once in a snapshot, makes a pair whose chosen and
rejected are equal. Samples equal after whitespace normalisation are dropped, and the prompts
left short are sampled again, a bounded number of times, with fresh seeds; what is still
missing is counted as the shortfall.

Uncertainty. Christiano et al. (2017, "Deep reinforcement learning from human preferences",
§2.2.4) ask humans about the pairs on which an ensemble of reward predictors disagrees most: the
variance across members of the predicted probability that one response is preferred. With one
reward model there is no variance, and the pair whose two rewards are closest (the predicted
preference nearest to one half) is the least certain; so disagreement decides first and
closeness breaks ties. A prompt counts as uncertain as its most uncertain pair. Gleave & Irving
(2022, "Uncertainty Estimation for Language Reward Models") found ensembles of fine-tuned reward
models disagree little (they share a pretrained model) and that active selection by ensemble
variance beat random prompts only modestly; that is why the closeness tie-break matters, and why
the choice is optional and recorded with its scores in the round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations

# sampler(prompts, k, seed) -> K sample dicts per prompt (`generation.sample_responses` rows)
Sampler = Callable[[list, int, int], list[list[dict]]]
SEED_STRIDE = 1_000_003  # far apart: `sample_responses` seeds prompt i with seed + i


def normalised(text: str) -> str:
    """The text as duplicates are told apart: whitespace runs collapsed, ends stripped."""
    return " ".join(text.split())


@dataclass
class Candidates:
    rows: list[list[dict]]  # per prompt, up to K distinct samples, each naming its `sampler`
    duplicates: int = 0  # samples dropped as equal to one kept
    retries: int = 0  # extra sampling passes made for prompts left short
    shortfall: int = 0  # responses still missing after the retries (sum over prompts)
    short_prompts: list[int] = field(default_factory=list)  # indexes of prompts below K


def shares(k: int, n: int) -> list[int]:
    """K responses split over n models as evenly as possible, the first ones taking the rest."""
    return [k // n + (1 if i < k % n else 0) for i in range(n)]


def distinct_candidates(
    prompts: Sequence,
    samplers: Sequence[tuple[str, Sampler]],
    *,
    k: int,
    seed: int,
    retries: int = 2,
) -> Candidates:
    """K distinct responses per prompt, `k` split over the (name, sampler) pairs; each sample
    gets `sampler` (the name). A prompt short of K is sampled again (all models in turn, new
    seeds) at most `retries` times."""
    if not samplers:
        raise ValueError("distinct_candidates: at least one model is needed.")
    out = Candidates(rows=[[] for _ in prompts])
    seen: list[set[str]] = [set() for _ in prompts]
    split = shares(k, len(samplers))

    def take(indexes: list[int], rows: list[list[dict]], name: str, limit: int) -> None:
        for i, samples in zip(indexes, rows, strict=True):
            for sample in samples:
                key = normalised(sample["text"])
                if key in seen[i] or len(out.rows[i]) >= limit:
                    out.duplicates += key in seen[i]
                    continue
                seen[i].add(key)
                out.rows[i].append({**sample, "sampler": name})

    everyone = list(range(len(prompts)))
    for j, (name, sample) in enumerate(samplers):
        if split[j]:
            # Each model fills its own share first, so a fast duplicate-free model cannot
            # crowd the others out of the task.
            limit_rows = [len(out.rows[i]) + split[j] for i in everyone]
            rows = sample(list(prompts), split[j], seed + j * SEED_STRIDE)
            for i, samples in zip(everyone, rows, strict=True):
                take([i], [samples], name, limit_rows[i])
    for attempt in range(1, retries + 1):
        short = [i for i in everyone if len(out.rows[i]) < k]
        if not short:
            break
        out.retries += 1
        for j, (name, sample) in enumerate(samplers):
            short = [i for i in short if len(out.rows[i]) < k]
            if not short:
                break
            want = max(k - min(len(out.rows[i]) for i in short), 1)
            rows = sample(
                [prompts[i] for i in short], want, seed + (attempt * 31 + j) * SEED_STRIDE
            )
            take(short, rows, name, k)
    out.short_prompts = [i for i in everyone if len(out.rows[i]) < k]
    out.shortfall = sum(k - len(out.rows[i]) for i in everyone)
    return out


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


@dataclass(frozen=True)
class Uncertainty:
    index: int  # the prompt's position in the input
    disagreement: float  # max over pairs of the variance across members of P(i preferred to j)
    closeness: float  # min over pairs of |mean P(i preferred to j) - 1/2|


def prompt_uncertainty(rewards: Sequence[Sequence[Sequence[float]]]) -> list[Uncertainty]:
    """`rewards[p][m][c]`: member m's reward for candidate c of prompt p. Per prompt, over its
    pairs (i, j): P_m = sigmoid(r_m(i) - r_m(j)) (Bradley–Terry), disagreement the largest
    population variance of P_m across members, closeness the smallest |mean_m P_m - 1/2|.
    A prompt with fewer than two candidates gets disagreement 0 and closeness 1/2."""
    out = []
    for index, members in enumerate(rewards):
        n = min((len(r) for r in members), default=0)
        disagreement, closeness = 0.0, 0.5
        for i, j in combinations(range(n), 2):
            probs = [_sigmoid(r[i] - r[j]) for r in members]
            mean = sum(probs) / len(probs)
            variance = sum((p - mean) ** 2 for p in probs) / len(probs)
            disagreement = max(disagreement, variance)
            closeness = min(closeness, abs(mean - 0.5))
        out.append(Uncertainty(index, disagreement, closeness))
    return out


def most_uncertain_first(rewards: Sequence[Sequence[Sequence[float]]]) -> list[Uncertainty]:
    """Prompts by uncertainty: most disagreement first, then closest rewards, then input order."""
    return sorted(
        prompt_uncertainty(rewards), key=lambda u: (-u.disagreement, u.closeness, u.index)
    )
