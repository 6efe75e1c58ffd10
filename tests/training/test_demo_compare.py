"""The maths of the demo's comparisons against the hidden oracle, on hand-worked examples: reward
model accuracy per prompt with bootstrap intervals (active versus random selection) and the
oracle's verdict on arena battles. No Django."""

from __future__ import annotations

from training.demo import compare
from training.demo.evaluate import Sample

SUM = "What is 7 plus 5?"  # the oracle: "12." 2.0 > "It is 13." 1.0 > "It is 20." 0.0


def _group(*texts: str) -> list[Sample]:
    return [Sample(SUM, text, True) for text in texts]


def test_accuracy_counts_the_pairs_the_oracle_orders_and_the_reward_model_does_not_tie():
    groups = [_group("12.", "It is 13.", "It is 20."), _group("12.", "It is 12.", "It is 20.")]
    # Prompt 1: three ordered pairs, all agreed. Prompt 2: "12." and "It is 12." tie for the
    # oracle (skipped); of the other two pairs the model orders one alike, one the wrong way.
    scores = [[3.0, 2.0, 1.0], [0.0, 5.0, 1.0]]
    assert compare.prompt_agreements(groups, scores) == [[3, 3], [1, 2]]
    # A reward model's tie counts for nothing either way.
    assert compare.prompt_agreements(groups[:1], [[1.0, 1.0, 0.0]]) == [[2, 2]]


def test_accuracies_come_with_intervals_and_the_paired_difference_against_the_baseline():
    groups = [_group("12.", "It is 13.", "It is 20."), _group("12.", "It is 20.")]
    scores = {
        "active": [[3.0, 2.0, 1.0], [0.0, 1.0]],  # 3 of 3, then 0 of 1: 3/4
        "random": [[1.0, 2.0, 3.0], [1.0, 0.0]],  # 0 of 3, then 1 of 1: 1/4
    }
    out = compare.accuracies(groups, scores, n=500, seed=1, baseline="random")

    assert out["active"]["accuracy"] == 0.75 and out["active"]["pairs"] == 4
    assert out["random"]["accuracy"] == 0.25 and out["random"]["pairs"] == 4
    assert out["active"]["minus_random"] == 0.5
    assert "minus_random" not in out["random"]
    # Resampling the two prompts: {1, 1} gives 1.0 against 0.0, {2, 2} 0.0 against 1.0, so the
    # intervals reach both ends, and the difference's interval runs from -1 to +1.
    assert out["active"]["ci95"] == [0.0, 1.0] and out["random"]["ci95"] == [0.0, 1.0]
    assert out["active"]["minus_random_ci95"] == [-1.0, 1.0]
    # Same seed, same figures: the report does not change when it is read again.
    assert compare.accuracies(groups, scores, n=500, seed=1, baseline="random") == out


def test_the_oracle_judges_each_battle_with_the_lower_model_id_first():
    battles = [
        {"a": 5, "b": 3, "prompt": SUM, "a_text": "12.", "b_text": "It is 20.",
         "a_ended": True, "b_ended": True},
        {"a": 3, "b": 5, "prompt": SUM, "a_text": "12.", "b_text": "It is 12.",
         "a_ended": True, "b_ended": True},
        {"a": 3, "b": 5, "prompt": SUM, "a_text": "12.", "b_text": "12.",
         "a_ended": True, "b_ended": False},
    ]  # fmt: skip
    truth = compare.oracle_battles(battles)

    assert truth == [(3, 5, 0.0), (3, 5, 0.5), (3, 5, 1.0)]
    rates = compare.win_rates(truth)
    assert rates[(3, 5)] == {"battles": 3, "win_rate": 0.5}
    assert rates[(5, 3)] == {"battles": 3, "win_rate": 0.5}
    assert compare.win_rates([(1, 2, 1.0), (1, 2, 0.5)])[(2, 1)]["win_rate"] == 0.25
