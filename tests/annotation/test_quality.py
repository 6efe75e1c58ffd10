"""Agreement figures against hand-computed values and the `krippendorff` package; consensus;
diversity."""

from __future__ import annotations

import random

import krippendorff
import numpy as np
import pytest
from snapshot_testutils import judge, prompt_with

from annotation import quality, services
from annotation.models import Consensus, TaskKind


@pytest.fixture
def setup(make_user):
    a, b = make_user("ann"), make_user("bob")
    project = services.project_create(name="Q", slug="q", overlap=2)
    return project, a, b


def test_it_matches_hand_computed_alpha_agreement_and_position_bias(setup):
    project, a, b = setup
    # Units: A says low,low,high,high; B says low,high,high,high ("low" = the lower id wins).
    choices = [("low", "low"), ("low", "high"), ("high", "high"), ("high", "high")]
    for i, (ca, cb) in enumerate(choices):
        _, (x, y), task = prompt_with(project, f"P{i}", [f"x{i}", f"y{i}"], kind=TaskKind.COMPARE)
        judge(task, a, {"winner": x.pk if ca == "low" else y.pk})
        judge(task, b, {"winner": x.pk if cb == "low" else y.pk})

    report = quality.agreement_report(project)

    # Coincidences: o_ll=2, o_lh=o_hl=1, o_hh=4; n_l=3, n_h=5, n=8;
    # alpha = 1 - (n-1) * (o_lh+o_hl) / (2 n_l n_h) = 1 - 7*2/30 = 8/15.
    assert report["alpha_pairwise_nominal"] == pytest.approx(8 / 15)
    expected = krippendorff.alpha(
        reliability_data=[[0, 0, 1, 1], [0, 1, 1, 1]], level_of_measurement="nominal"
    )
    assert report["alpha_pairwise_nominal"] == pytest.approx(expected)
    assert report["pairwise_agreement"] == pytest.approx(3 / 4)
    # Shown order is by id here, so "first shown wins" = "low wins": A 2/4, B 1/4.
    assert report["position_bias"] == pytest.approx(3 / 8)
    assert report["labelers"][a.pk]["first_shown_wins"] == pytest.approx(0.5)
    assert report["labelers"][a.pk]["pairwise_agreement"] == pytest.approx(3 / 4)


def test_ordinal_alpha_matches_the_krippendorff_package():
    rng = random.Random(3)
    data = [[rng.choice([1, 2, 3, 4, 5, None]) for _ in range(30)] for _ in range(4)]
    units = {u: {c: data[c][u] for c in range(4) if data[c][u] is not None} for u in range(30)}
    matrix = np.array([[np.nan if v is None else v for v in row] for row in data], dtype=float)

    for level in ("ordinal", "nominal"):
        assert quality.krippendorff_alpha(units, level) == pytest.approx(
            krippendorff.alpha(reliability_data=matrix, level_of_measurement=level)
        )


def test_it_computes_kendall_tau_and_leave_one_out_consensus(setup, make_user):
    project, a, b = setup
    c = make_user("cat")
    _, (r1, r2, r3), task = prompt_with(project, "Rank", ["one", "two", "three"], required=3)
    judge(task, a, {"ranking": [[r1.pk], [r2.pk], [r3.pk]]})
    judge(task, b, {"ranking": [[r1.pk], [r3.pk], [r2.pk]]})
    judge(task, c, {"ranking": [[r1.pk], [r2.pk], [r3.pk]]})

    report = quality.agreement_report(project)

    # tau(a,b) = (2-1)/3, tau(a,c) = 1, tau(b,c) = 1/3 -> mean 5/9
    assert report["kendall_tau_mean"] == pytest.approx(5 / 9)
    # b disagrees with the others' majority on (r2, r3) only: 2 of 3 pairs agree.
    assert report["labelers"][b.pk]["consensus_agreement"] == pytest.approx(2 / 3)
    assert report["labelers"][a.pk]["consensus_agreement"] == pytest.approx(1.0)


def test_it_scores_gold_tasks_per_labeler(setup):
    project, a, b = setup
    (prompt,), _ = services.prompts_create(project=project, items=[{"text": "gold"}])
    good = services.response_create(prompt=prompt, text="right", origin="seed")
    bad = services.response_create(prompt=prompt, text="wrong", origin="seed")
    task = services.task_create(
        project=project,
        kind=TaskKind.COMPARE,
        prompt=prompt,
        candidates=[good, bad],
        is_gold=True,
        gold_answer={"winner": good.pk},
    )
    judge(task, a, {"winner": good.pk})
    judge(task, b, {"winner": bad.pk})

    assert quality.gold_accuracy(project) == {a.pk: 1.0, b.pk: 0.0}


def test_consensus_is_bradley_terry_versioned_and_leaves_raw_judgments_alone(setup, make_user):
    project, a, b = setup
    c = make_user("cat")
    _, (x, y), task = prompt_with(project, "P", ["x", "y"], kind=TaskKind.COMPARE, required=3)
    judge(task, a, {"winner": x.pk})
    judge(task, b, {"winner": x.pk})
    judge(task, c, {"winner": y.pk})
    before = list(task.annotations.values_list("id", "payload"))

    first = quality.consensus_compute(project=project)
    second = quality.consensus_compute(project=project, weighted=True)

    scores = first.scores[str(task.prompt_id)]
    assert scores[str(x.pk)] > scores[str(y.pk)]
    assert (first.version, second.version) == (1, 2)
    assert Consensus.objects.count() == 2
    assert list(task.annotations.values_list("id", "payload")) == before


def test_diversity_counts_tags_languages_and_near_duplicates(setup):
    project, _, _ = setup
    base = "please explain in simple words how the moon causes the tides on the sea every day"
    items = [
        {"text": base, "tags": ["science"], "language": "en"},
        {"text": base + " and night", "tags": ["science"], "language": "en"},
        {"text": "wie spät ist es", "tags": ["science"], "language": "de"},
        {"text": "write a poem", "tags": ["poetry"], "language": "en"},
    ]
    services.prompts_create(project=project, items=items)

    report = quality.diversity_report(project)

    assert report["tags"] == {"science": 3, "poetry": 1}
    assert report["languages"] == {"en": 3, "de": 1}
    assert len(report["near_duplicates"]) == 1
    assert report["warnings"] == ["tag 'science' covers 75% of prompts (over 50%)"]
    assert report["length"]["min"] == len("write a poem")


def test_weighted_consensus_trusts_the_labelers_who_agree_with_the_others(setup, make_user):
    """Ann, Bob and Cat agree on four comparisons where Dan always dissents (agreement with
    consensus: Ann 4/4, Dan 0/4; the ranking only the two of them judged has no consensus to
    agree with, fewer than two others). On that ranking, in opposite orders, the plain
    Bradley-Terry scores cannot tell x from z; weighted by agreement, Ann's order wins.

    Kills: quality.py consensus_compute(weighted=True) gives every labeler weight 1.0 (or
    weighs by 1 - agreement)."""
    project, ann, bob = setup
    cat, dan = make_user("cat"), make_user("dan")
    for i in range(4):
        _, (p, q), task = prompt_with(
            project, f"Calibrate {i}", [f"p{i}", f"q{i}"], kind=TaskKind.COMPARE, required=4
        )
        for labeler in (ann, bob, cat):
            judge(task, labeler, {"winner": p.pk})
        judge(task, dan, {"winner": q.pk})
    prompt, (x, y, z), task = prompt_with(project, "Target", ["x", "y", "z"], required=2)
    judge(task, ann, {"ranking": [[x.pk], [y.pk], [z.pk]]})
    judge(task, dan, {"ranking": [[z.pk], [y.pk], [x.pk]]})
    labelers = quality.agreement_report(project)["labelers"]
    assert labelers[ann.pk]["consensus_agreement"] == 1.0
    assert labelers[dan.pk]["consensus_agreement"] == 0

    plain = quality.consensus_compute(project=project).scores[str(prompt.pk)]
    weighted = quality.consensus_compute(project=project, weighted=True)

    scores = weighted.scores[str(prompt.pk)]
    assert plain[str(x.pk)] == pytest.approx(plain[str(z.pk)], abs=1e-6)
    assert scores[str(x.pk)] > scores[str(y.pk)] > scores[str(z.pk)]
    assert scores[str(x.pk)] - scores[str(z.pk)] > 1.0
    assert weighted.weighted is True


def test_consensus_counts_no_rejected_superseded_or_tied_judgment(setup, make_user):
    """x and y each win one live comparison. A rejected vote for y, a superseded vote for x
    and a tie (x has the lower id) would each tip the balance if they were counted.

    Kills: quality.py consensus_compute counts rejected judgments; counts superseded ones;
    counts a tie as a win (`if strength:` dropped)."""
    project, ann, bob = setup
    cat, dan, eve = make_user("cat"), make_user("dan"), make_user("eve")
    owner = make_user("owner")
    prompt, (x, y), task = prompt_with(project, "P", ["x", "y"], kind=TaskKind.COMPARE, required=5)
    judge(task, ann, {"winner": x.pk})
    judge(task, bob, {"winner": y.pk})
    rejected = judge(task, cat, {"winner": y.pk})
    services.annotation_review(annotation=rejected, reviewer=owner, decision="rejected")
    judge(task, dan, {"winner": None})
    first = judge(task, eve, {"winner": x.pk})
    services.annotation_correct(original=first, labeler=eve, payload={"winner": None})

    consensus = quality.consensus_compute(project=project)

    scores = consensus.scores[str(prompt.pk)]
    assert scores[str(x.pk)] == pytest.approx(scores[str(y.pk)], abs=1e-6)
    assert consensus.summary["prompts"] == 1 and consensus.summary["judgments"] == 4
    assert consensus.summary["votes"] == 2  # the two live wins; ties cast none


def test_agreement_with_consensus_leaves_out_items_where_the_others_split(setup, make_user):
    """Ann and Bob pick x, Cat picks y. Cat disagrees with the others' majority; for Ann (and
    Bob) the others split one to one: no consensus to agree with, so no figure at all.

    Kills: rules.py `_agrees_with_the_majority` scoring an even split as a majority."""
    project, ann, bob = setup
    cat = make_user("cat")
    _, (x, y), task = prompt_with(project, "P", ["x", "y"], kind=TaskKind.COMPARE, required=3)
    judge(task, ann, {"winner": x.pk})
    judge(task, bob, {"winner": x.pk})
    judge(task, cat, {"winner": y.pk})

    labelers = quality.agreement_report(project)["labelers"]

    assert labelers[cat.pk]["consensus_agreement"] == 0
    assert labelers[ann.pk]["consensus_agreement"] is None
    assert labelers[bob.pk]["consensus_agreement"] is None
