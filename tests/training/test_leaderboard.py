"""The arena's Bradley–Terry scores and bootstrap intervals (training/leaderboard.py), checked by
hand and against FastChat's own computation on a synthetic battle log."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from training.leaderboard import bt_bootstrap, bt_points, interval, quantile

A, B, C, D = 1, 2, 3, 4


def test_it_scores_two_models_as_worked_by_hand():
    # A beats B three times and loses once: the odds are 3, so A - B = 400 * log10(3) points,
    # split evenly about the mean of 1000.
    scores = bt_points([(A, B, 1.0)] * 3 + [(A, B, 0.0)], prior=0, iterations=500)
    assert scores[A] == pytest.approx(1000 + 200 * math.log10(3), abs=1e-3)  # 1095.42
    assert scores[B] == pytest.approx(1000 - 200 * math.log10(3), abs=1e-3)  # 904.58


def test_it_counts_a_tie_as_half_a_win_each_way():
    # Two wins and a tie: A has 2.5 of 3 points, B 0.5; the odds are 5.
    scores = bt_points([(A, B, 1.0), (A, B, 1.0), (A, B, 0.5)], prior=0, iterations=500)
    assert scores[A] - scores[B] == pytest.approx(400 * math.log10(5), abs=1e-3)  # 279.59


def test_it_scores_three_models_as_worked_by_hand():
    # A and B split 1-1; each beats C 3-1. By symmetry A = B; C's likelihood equation (its
    # 2 wins = 8 games x q / (p + q)) gives p = 3q: A and B lead C by 400 * log10(3) points.
    battles = [(A, B, 1.0), (A, B, 0.0)]
    battles += [(A, C, 1.0)] * 3 + [(A, C, 0.0)] + [(B, C, 1.0)] * 3 + [(B, C, 0.0)]
    scores = bt_points(battles, prior=0, iterations=2000)
    assert scores[A] == pytest.approx(scores[B], abs=1e-6)
    assert scores[A] - scores[C] == pytest.approx(400 * math.log10(3), abs=1e-3)  # 190.85
    assert sum(scores.values()) / 3 == pytest.approx(1000, abs=1e-6)


def test_it_keeps_an_unbeaten_model_finite():
    scores = bt_points([(A, B, 1.0)] * 10)
    assert 1000 < scores[A] < 1600 and scores[B] == pytest.approx(2000 - scores[A])


def test_its_quantiles_interpolate_as_numpy():
    values = [5.0, 1.0, 3.0, 2.0, 4.0, 10.0]
    for q in (0.025, 0.5, 0.975):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)))


# --- FastChat ----------------------------------------------------------------------------
# lm-sys/FastChat, fastchat/serve/monitor/rating_systems.py (read at commit 2bdb2e0):
# `preprocess_for_bt`, `bt_loss_and_grad`, `fit_bt`, `scale_and_offset`, `compute_bt` and
# `compute_bootstrap_bt`, re-implemented below as written there, on numpy arrays instead of a
# pandas frame. One substitution: FastChat minimises the loss with scipy's L-BFGS-B (gtol
# 1e-6); scipy is not a dependency here, so the same loss and gradient are minimised by
# gradient descent with Barzilai-Borwein steps to the same gradient tolerance. Both start at
# zero ratings, and the gradient of every matchup adds +g and -g, so the ratings keep a sum
# of zero: after `scale_and_offset` (no baseline model in the log) the mean is 1000, as ours.


def _fastchat_preprocess_for_bt(model_a, model_b, winner):
    """preprocess_for_bt: unique (model a, model b, outcome) rows and how often each occurs."""
    models = sorted(set(model_a) | set(model_b))
    index = {m: i for i, m in enumerate(models)}
    schedule = np.full((len(winner), 3), fill_value=1, dtype=np.int32)
    schedule[:, 0] = [index[m] for m in model_a]
    schedule[:, 1] = [index[m] for m in model_b]
    winner = np.asarray(winner)
    schedule[winner == "model_a", 2] = 2
    schedule[winner == "model_b", 2] = 0
    matchups_outcomes, weights = np.unique(schedule, return_counts=True, axis=0)
    matchups = matchups_outcomes[:, [0, 1]]
    outcomes = matchups_outcomes[:, 2].astype(np.float64) / 2.0
    return matchups, outcomes, models, weights.astype(np.float64)


def _fastchat_bt_loss_and_grad(ratings, matchups, outcomes, weights, alpha=1.0):
    matchup_ratings = ratings[matchups]
    logits = alpha * (matchup_ratings[:, 0] - matchup_ratings[:, 1])
    probs = 1.0 / (1.0 + np.exp(-logits))  # scipy.special.expit
    loss = -((np.log(probs) * outcomes + np.log(1.0 - probs) * (1.0 - outcomes)) * weights).sum()
    matchups_grads = -alpha * (outcomes - probs) * weights
    model_grad = np.zeros_like(ratings)
    np.add.at(
        model_grad,
        matchups[:, [0, 1]],
        matchups_grads[:, None] * np.array([1.0, -1.0], dtype=np.float64),
    )
    return loss, model_grad


def _fastchat_fit_bt(matchups, outcomes, weights, n_models, alpha, tol=1e-6):
    ratings = np.zeros(n_models, dtype=np.float64)
    _, grad = _fastchat_bt_loss_and_grad(ratings, matchups, outcomes, weights, alpha)
    step = 1e-3
    for _ in range(10_000):
        if np.abs(grad).max() < tol:
            break
        new = ratings - step * grad
        _, new_grad = _fastchat_bt_loss_and_grad(new, matchups, outcomes, weights, alpha)
        s, y = new - ratings, new_grad - grad
        step = float(s @ s / (s @ y)) if s @ y > 0 else step
        ratings, grad = new, new_grad
    return ratings


def _fastchat_compute_bt(model_a, model_b, winner, base=10.0, scale=400.0, init_rating=1000):
    matchups, outcomes, models, weights = _fastchat_preprocess_for_bt(model_a, model_b, winner)
    ratings = _fastchat_fit_bt(matchups, outcomes, weights, len(models), math.log(base))
    return dict(zip(models, ratings * scale + init_rating, strict=True))


def _fastchat_compute_bootstrap_bt(model_a, model_b, winner, num_round, base=10.0, scale=400.0):
    matchups, outcomes, models, weights = _fastchat_preprocess_for_bt(model_a, model_b, winner)
    rng = np.random.default_rng(seed=0)
    idxs = rng.multinomial(n=len(winner), pvals=weights / weights.sum(), size=num_round)
    boot_weights = idxs.astype(np.float64) / len(winner)
    ratings = np.array(
        [_fastchat_fit_bt(matchups, outcomes, w, len(models), np.log(base)) for w in boot_weights]
    )
    return models, ratings * scale + 1000.0


def _synthetic_log(n: int, seed: int = 7) -> list[tuple[int, int, float]]:
    """Battles of four models of known strength (Elo points), ties when close."""
    strength = {A: 1150, B: 1050, C: 1000, D: 800}
    rng = random.Random(seed)
    battles = []
    for _ in range(n):
        a, b = rng.sample(sorted(strength), 2)
        p = 1 / (1 + 10 ** ((strength[b] - strength[a]) / 400))
        draw = rng.random()
        result = 0.5 if abs(draw - p) < 0.08 else (1.0 if draw < p else 0.0)
        battles.append((a, b, result))
    return battles


def _as_fastchat(battles):
    winner = [{1.0: "model_a", 0.0: "model_b", 0.5: "tie"}[r] for _, _, r in battles]
    return [a for a, _, _ in battles], [b for _, b, _ in battles], winner


def test_it_scores_a_battle_log_as_fastchat_does():
    battles = _synthetic_log(400)
    theirs = _fastchat_compute_bt(*_as_fastchat(battles))
    ours = bt_points(battles, prior=0, iterations=3000)
    # The same maximum-likelihood fit: the scores agree to a hundredth of a point.
    for model in (A, B, C, D):
        assert ours[model] == pytest.approx(theirs[model], abs=0.01)
    # The leaderboard's small prior moves no score by more than a few points on this log.
    shrunk = bt_points(battles)
    assert all(abs(shrunk[m] - theirs[m]) < 3 for m in (A, B, C, D))
    assert sorted(ours, key=ours.get) == [D, C, B, A]


def test_its_bootstrap_intervals_match_fastchats():
    battles = _synthetic_log(300)
    models, theirs = _fastchat_compute_bootstrap_bt(*_as_fastchat(battles), num_round=200)
    ours = bt_bootstrap(battles, rounds=200)
    for column, model in enumerate(models):
        low, high = interval([s[model] for s in ours])
        their_low, their_high = np.quantile(theirs[:, column], [0.025, 0.975])
        # Different random draws of the same resampling (and our small prior): with 200 rounds
        # the ends agree within 15 points (measured: at most 10) and the widths within a fifth
        # (measured: 0.98 to 1.11 of FastChat's), on intervals about 90 points wide.
        assert abs(low - their_low) < 15 and abs(high - their_high) < 15
        assert (high - low) == pytest.approx(their_high - their_low, rel=0.2)
