"""The demo's synthetic world, hidden oracle, evaluation maths and report: fast, no Django."""

from __future__ import annotations

import random

from training.demo import evaluate, oracle, report, world
from training.demo.evaluate import Sample


def test_it_builds_the_same_world_from_the_same_seed():
    a, b = world.build_world(3, corpus_docs=200), world.build_world(3, corpus_docs=200)
    assert a.train == b.train and a.test == b.test and a.corpus == b.corpus
    assert world.build_world(4, corpus_docs=200).test != a.test


def test_it_splits_by_prompt_and_keeps_held_out_prompts_out_of_the_corpus():
    w = world.build_world(0, n_test=250, n_dev=150, corpus_docs=2000)
    assert len(w.test) == 250 and len(w.dev) == 150
    assert not set(w.train) & set(w.test) and not set(w.train) & set(w.dev)
    assert not set(w.dev) & set(w.test)
    corpus = "\n".join(w.corpus)
    assert not any(p in corpus for p in w.test + w.dev)


def test_it_parses_every_prompt_back_into_what_a_correct_answer_is():
    assert world.parse("What is 7 plus 5?") == world.Spec("arith", answer=12)
    assert world.parse("Compute 9 minus 4.").answer == 5
    spec = world.parse("Can you name a red fruit?")
    assert (spec.family, spec.category, spec.colour) == ("category", "fruit", "red")
    assert world.parse("Hello!").family == "greeting"


def test_the_oracle_prefers_correct_polite_concise_finished_answers():
    p = "What is 7 plus 5?"
    assert oracle.score(p, "12.") == 2.0
    assert oracle.score(p, "It is 13.") == 1.0  # off by one: partial credit
    assert oracle.score(p, "It is 20.") == 0.0
    assert oracle.score(p, "Ugh, obviously 12. Stupid question.") == 0.5
    assert oracle.score(p, "12.", ended=False) == 1.0
    padded = "Sure, I would be very happy to help you with that. The answer is 12."
    assert oracle.score(p, padded) == 2.0 - 0.1 * (len(padded.split()) - 7)
    assert oracle.prefer(p, "12.", padded) == 1.0
    assert oracle.prefer(p, "It is 12.", "12.") == 0.5
    fruit = "Name a fruit that is red."
    assert oracle.score(fruit, "A cherry.") == 2.0
    assert oracle.score(fruit, "A banana.") == 1.0  # a fruit, wrong colour
    assert oracle.score(fruit, "A carrot.") == 0.0
    assert oracle.score("Hello!", "Hi! What can I do for you?") == 2.0


def test_every_demonstration_style_is_scored_as_intended():
    rng = random.Random(0)
    w = world.build_world(1, corpus_docs=10)
    for p in w.train[:200]:
        assert oracle.score(p, world.response(p, "good", rng)) == 2.0
        assert 0 < oracle.score(p, world.response(p, "verbose", rng)) < 2.0
        assert oracle.score(p, world.response(p, "wrong", rng)) <= 1.0
        assert oracle.score(p, world.response(p, "rude", rng)) < 1.0


def test_the_padded_style_is_the_single_most_common_way_to_start_a_demonstration():
    # What makes temperature sharpening prefer the padded answer and feedback matter.
    rng = random.Random(0)
    w = world.build_world(2, corpus_docs=10)
    starts: dict[str, int] = {}
    for p in w.train[:400]:
        style = world.pick_style(rng, world.DEMO_STYLE_WEIGHTS)
        first = world.response(p, style, rng).split()[0]
        starts[first] = starts.get(first, 0) + 1
    assert max(starts, key=starts.get) == "Sure,"


def _s(prompt, text, ended=True):
    return Sample(prompt, text, ended)


def test_win_rates_count_ties_half_and_come_with_a_bootstrap_interval():
    p = "What is 1 plus 1?"
    policy = [_s(p, "2.")] * 6 + [_s(p, "3.")] * 2 + [_s(p, "2.")] * 2
    baseline = [_s(p, "5.")] * 6 + [_s(p, "2.")] * 2 + [_s(p, "It is 2.")] * 2
    out = evaluate.win_rate(policy, baseline)
    assert (out["wins"], out["ties"], out["losses"]) == (6, 2, 2)
    assert out["win_rate"] == 0.7
    low, high = out["ci95"]
    assert low <= 0.7 <= high and 0 <= low < high <= 1


def test_the_bootstrap_interval_narrows_with_more_prompts():
    values = [1.0, 0.0] * 20
    wide = evaluate.bootstrap_ci(values)
    narrow = evaluate.bootstrap_ci(values * 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_reward_accuracy_counts_only_pairs_the_oracle_orders():
    p = "What is 1 plus 1?"
    group = [_s(p, "2."), _s(p, "5."), _s(p, "It is 2.")]
    assert evaluate.reward_accuracy([group], [[3.0, 1.0, 2.0]]) == {"accuracy": 1.0, "pairs": 2}
    assert evaluate.reward_accuracy([group], [[1.0, 3.0, 2.0]])["accuracy"] == 0.0


def test_a_labeler_who_disagrees_with_the_others_gets_the_lowest_quality():
    rankings = []
    for task in range(20):
        for name in ("a", "b", "c"):
            rankings.append({"task": task, "labeler": name, "ranking": [[1], [2], [3]]})
        rankings.append({"task": task, "labeler": "careless", "ranking": [[3], [1], [2]]})
    q = evaluate.labeler_quality(rankings, {(1, 2): 1, (1, 3): 1, (2, 3): 1})
    quality = {k: v["quality"] for k, v in q["labelers"].items()}
    assert min(quality, key=quality.get) == "careless"
    assert quality["a"] == 1.0
    assert q["labelers"]["careless"]["oracle_agreement"] < 0.5


def test_the_html_report_escapes_model_text():
    data = {
        "seed": 0,
        "rounds": 1,
        "quick": True,
        "project": {"slug": "x"},
        "examples": [{"prompt": "<script>alert(1)</script>", "sft": "<b>x</b>"}],
        "labelers": [{"name": "<i>", "quality": 0.5, "careless": True}],
        "stages": [{"name": "world", "seconds": 1.0}],
        "total_seconds": 1.0,
        "ppo_vs_sft": {"win_rate": 0.6, "ci95": [0.5, 0.7], "wins": 1, "ties": 0, "losses": 0},
        "checks": {},
    }
    html = report.render_html(data)
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html
    assert "<b>x</b>" not in html and "<i>" not in html
    assert "0.60 [0.50, 0.70]" in html


def test_sampled_text_loses_control_characters_postgresql_would_reject():
    from training.demo.stages import shown_text

    assert shown_text(" a\x00b\x1bc\nd\te ") == "abc\nd\te"


def test_the_html_report_gives_each_family_its_interval():
    base = {"seed": 0, "rounds": 1, "quick": True, "project": {"slug": "x"}, "stages": [],
            "total_seconds": 1.0, "checks": {}}  # fmt: skip
    family = {"prompts": 9, "ppo_vs_sft": 0.61, "dpo_vs_sft": 0.55, "correct": {"sft@1.0": 0.1}}
    html = report.render_html({**base, "families": {"greeting": {
        **family, "ppo_vs_sft_ci95": [0.4, 0.8], "dpo_vs_sft_ci95": [0.3, 0.75]}}})  # fmt: skip
    assert "0.610 [0.40, 0.80]" in html and "0.550 [0.30, 0.75]" in html
    # A report written before the intervals were: the figures alone.
    html = report.render_html({**base, "families": {"greeting": family}})
    assert "<td>0.610</td>" in html and "[0." not in html.split("By prompt family")[1]


def test_the_report_shows_each_policys_reward_model_score_on_training_prompts():
    """Kills mutation: training/demo/report.py render_html the policy-scores paragraph
    dropped."""
    base = {"seed": 0, "rounds": 1, "quick": True, "project": {"slug": "x"}, "stages": [],
            "total_seconds": 1.0, "checks": {}}  # fmt: skip
    scores = {"prompts": 40, "sft@1.0": 0.0213, "ppo@1.0": 0.031, "dpo@1.0": 0.0149}
    html = report.render_html({**base, "reward_model": {"policy_scores": scores}})
    assert "sft@1.0 0.0213, ppo@1.0 0.0310, dpo@1.0 0.0149 (40 prompts)" in html
    # A report written before the scores were: says so instead of failing.
    assert "the reward PPO maximised:\nn/a." in report.render_html(base)


def test_the_report_draws_training_curves_as_the_run_page_does():
    """The loss and PPO score curves go through `training.charts` and the run page's chart
    template, names escaped; other metrics stay in report.json only."""
    base = {"seed": 0, "rounds": 1, "quick": True, "project": {"slug": "x"}, "stages": [],
            "total_seconds": 1.0, "checks": {}}  # fmt: skip
    curves = {
        "sft": {"loss": [[0, 2.0], [5, 1.5]], "objective/kl": [[0, 1.0]]},
        "ppo_r1": {"objective/scores": [[1, 0.1]]},
        "<x>": {"loss": [[0, 1.0], [1, float("nan")]]},
    }
    html = report.render_html({**base, "curves": curves})
    assert 'data-chart="sft: loss"' in html and 'data-series="loss" data-count="2"' in html
    assert 'data-chart="ppo_r1: objective/scores"' in html and "objective/kl" not in html
    assert 'data-chart="&lt;x&gt;: loss"' in html and "<x>" not in html
