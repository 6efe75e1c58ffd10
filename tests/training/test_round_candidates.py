"""The engine side of rounds: K distinct candidates from several models with a bounded retry
budget, and the uncertainty criterion of active selection against a hand-computed example."""

from __future__ import annotations

import pytest

from training.engine.candidates import distinct_candidates, most_uncertain_first, shares


def scripted(name: str, script: list[list[str]], calls: list):
    """A sampler that answers call n with script[n] for every prompt (then repeats the last)."""

    def sample(prompts: list, k: int, seed: int) -> list[list[dict]]:
        texts = script[min(len(calls), len(script) - 1)]
        calls.append((name, len(prompts), k, seed))
        return [[{"text": t, "seed": seed} for t in texts[:k]] for _ in prompts]

    return sample


def test_it_keeps_k_distinct_responses_after_whitespace_normalisation():
    calls: list = []
    sampler = scripted("a", [["It is 24.", "It is  24. ", "25"], ["26", "27"]], calls)

    out = distinct_candidates(["What is 4*6?"], [("a", sampler)], k=3, seed=7, retries=2)

    assert [s["text"] for s in out.rows[0]] == ["It is 24.", "25", "26"]
    assert out.duplicates == 1  # "It is  24. " is "It is 24." with other spaces
    assert out.retries == 1 and out.shortfall == 0
    assert calls[0][3] != calls[1][3], "a retry samples with a new seed"


def test_it_counts_the_shortfall_when_the_retry_budget_runs_out():
    calls: list = []
    sampler = scripted("a", [["same", "same", "same", "same"]], calls)

    out = distinct_candidates(["p", "q"], [("a", sampler)], k=4, seed=0, retries=2)

    assert [len(r) for r in out.rows] == [1, 1]
    assert out.shortfall == 6 and out.short_prompts == [0, 1]
    assert len(calls) == 3, "the first pass and two retries, no more"


def test_a_task_mixes_models_and_each_response_names_its_model():
    a_calls: list = []
    b_calls: list = []
    out = distinct_candidates(
        ["p"],
        [
            ("sft", scripted("sft", [["s1", "s2", "s3"]], a_calls)),
            ("policy", scripted("policy", [["p1", "p2"]], b_calls)),
        ],  # fmt: skip
        k=4,
        seed=1,
    )

    assert [(s["sampler"], s["text"]) for s in out.rows[0]] == [
        ("sft", "s1"), ("sft", "s2"), ("policy", "p1"), ("policy", "p2")
    ]  # fmt: skip
    assert shares(5, 2) == [3, 2]


def test_the_criterion_on_a_hand_computed_example():
    # rewards[prompt][member][candidate]
    rewards = [
        [[0.0, 0.0], [0.0, 0.0]],  # both members: a coin flip, P = 1/2, no disagreement
        [[2.0, 0.0], [0.0, 2.0]],  # the members disagree: P = σ(2) = .880797 and σ(-2) = .119203
        [[1.0, 0.0], [1.0, 0.0]],  # both agree, P = σ(1) = .731059
    ]

    ranked = most_uncertain_first(rewards)

    # Variance of {.880797, .119203} about their mean 1/2: .380797² = .145006.
    assert [u.index for u in ranked] == [1, 0, 2]
    assert ranked[0].disagreement == pytest.approx(0.145006, abs=1e-6)
    assert ranked[1].disagreement == 0 and ranked[1].closeness == 0
    assert ranked[2].closeness == pytest.approx(0.231059, abs=1e-6)


def test_one_reward_model_orders_by_closest_rewards():
    ranked = most_uncertain_first([[[3.0, 0.0, 1.0]], [[0.5, 0.4]], [[2.0, 0.0]]])

    assert [u.index for u in ranked] == [
        1,
        0,
        2,
    ]  # |σ(.1)-.5| < |σ(-1)-.5| (#0's closest pair) < |σ(2)-.5|
