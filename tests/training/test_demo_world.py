"""The demo's synthetic world, hidden oracle, evaluation maths and report: fast, no Django."""

from __future__ import annotations

import random
from collections import Counter

from training.demo import evaluate, oracle, report, world
from training.demo.evaluate import Sample


def test_it_builds_the_same_world_from_the_same_seed():
    a, b = world.build_world(3, corpus_docs=200), world.build_world(3, corpus_docs=200)
    assert a.train == b.train and a.test == b.test and a.corpus == b.corpus
    assert world.build_world(4, corpus_docs=200).test != a.test


def test_it_splits_by_prompt_and_keeps_held_out_prompts_out_of_the_corpus():
    w = world.build_world(0, n_test=360, n_dev=180, corpus_docs=2000)
    assert len(w.test) == 360 and len(w.dev) == 180
    assert not set(w.train) & set(w.test) and not set(w.train) & set(w.dev)
    assert not set(w.dev) & set(w.test)
    corpus = "\n".join(w.corpus)
    assert not any(p in corpus for p in w.test + w.dev)


def test_every_family_gets_at_least_40_test_prompts_and_the_old_ones_a_small_share_of_train():
    w = world.build_world(1)
    test = Counter(world.parse(p).family for p in w.test)
    assert set(test) == set(world.FAMILIES) and min(test.values()) >= 40
    assert Counter(world.parse(p).family for p in w.dev) == {f: 20 for f in world.FAMILIES}
    train = Counter(world.parse(p).family for p in w.train)
    constrained = sum(train[f] for f in world.CONSTRAINT_TYPES)
    assert train["arith"] + train["category"] < 0.2 * len(w.train) < constrained


def test_it_parses_every_prompt_back_into_what_a_correct_answer_is():
    assert world.parse("What is 7 plus 5?") == world.Spec("arith", answer=12)
    assert world.parse("Compute 9 minus 4.").answer == 5
    spec = world.parse("Can you name a red fruit?")
    assert (spec.family, spec.category, spec.colour) == ("category", "fruit", "red")
    spec = world.parse("Describe the cherry. Answer in one word.")
    assert (spec.family, spec.item, spec.colour, spec.category) == (
        "one_word", "cherry", "red", "fruit")  # fmt: skip
    assert world.parse("Tell me about the fox. Answer in 3 words or fewer.").n == 3
    assert world.parse('Describe the lime. Use the word "fresh".').word == "fresh"
    # The asked colour follows the item, even when the item is a colour's name.
    assert world.parse("Is the orange red? Start with Yes or No.").truth is False
    assert world.parse("Is the orange orange? Start with Yes or No.").truth is True
    for family, prompts in world.prompts_by_family().items():
        assert {world.parse(p).family for p in prompts} == {family}


def test_the_oracle_scores_compliance_first_then_brevity_and_politeness():
    p = "Describe the cherry. Answer in one word."
    assert oracle.score(p, "Cherry.") == 2.0
    assert oracle.score(p, "Trains.") == 1.5  # follows the constraint, off topic
    assert oracle.score(p, "The cherry is a red fruit.") == 0.5  # on topic, ignores it
    assert oracle.score(p, "Cherry.", ended=False) == 1.0
    padded = "Sure, I would be very happy to help you with that. The cherry is a red fruit."
    assert oracle.score(p, padded) == 0.5 - 0.1 * (len(padded.split()) - 7)
    assert oracle.prefer(p, "Red.", "Cherry.") == 0.5
    cases = {
        "Tell me about the fox. Answer in capitals.": ("THE FOX IS ORANGE.", "The FOX."),
        "Give three words about the fox, separated by commas.": (
            "Orange, animal, small.", "Orange, animal."),
        "Is the fox orange? Start with Yes or No.": ("Yes, it is orange.", "It is orange."),
        "Describe the fox. End with a question.": ("Do you like the fox?", "A fox. Hm."),
        "Describe the fox. Use at most 2 words.": ("Orange animal.", "An orange animal."),
        'Describe the fox. Use the word "tiny".': ("A tiny fox.", "A small fox."),
    }  # fmt: skip
    for prompt, (good, bad) in cases.items():
        assert oracle.complies(prompt, good) and not oracle.complies(prompt, bad), prompt
        assert oracle.prefer(prompt, good, bad) == 1.0, prompt
    assert oracle.complies("What is 7 plus 5?", "12.") is None
    # Garbled text (what a barely trained model writes) is worse the more garbled it is.
    assert oracle.score(p, "Cherry\x7f.") == 1.9 and oracle.score(p, "Cherry.@#") == 1.8
    assert oracle.score(p, "#" * 40 + "Cherry.") == 0.0  # at most -2
    # The old families keep their correctness with partial credit.
    q = "What is 7 plus 5?"
    assert oracle.score(q, "12.") == 2.0 and oracle.score(q, "It is 13.") == 1.0
    assert oracle.score(q, "Ugh, obviously 12. Stupid question.") == 0.5
    fruit = "Name a fruit that is red."
    assert oracle.score(fruit, "A cherry.") == 2.0 and oracle.score(fruit, "A banana.") == 1.0


def test_every_demonstration_style_is_scored_as_intended():
    rng = random.Random(0)
    w = world.build_world(1, corpus_docs=10)
    for p in w.train[:400]:
        constrained = world.parse(p).constrained
        assert oracle.score(p, world.response(p, "good", rng)) == 2.0, p
        verbose = oracle.score(p, world.response(p, "verbose", rng))
        assert verbose < (0.5 if constrained else 2.0), p
        assert oracle.score(p, world.response(p, "rude", rng)) < 0.5, p
        if constrained:
            for answer in world.compliant_answers(p):
                assert oracle.score(p, answer) == 2.0, (p, answer)
            assert oracle.score(p, world.response(p, "plain", rng)) == 0.5, p
        else:
            assert oracle.score(p, world.response(p, "wrong", rng)) <= 1.0, p


def test_the_most_common_demonstration_ignores_the_constraint():
    """What SFT learns is the contractors' mixture: compliant about a third of the time, and the
    single most common answer (what sharpening picks) the plain one that ignores the
    constraint. Feedback has to teach compliance."""
    rng = random.Random(0)
    w = world.build_world(2, corpus_docs=10)
    complied = total = 0
    phrasings: dict[str, Counter] = {}  # constraint type -> phrasing -> demonstrations
    for p in w.train:
        spec = world.parse(p)
        if not spec.constrained:
            continue
        plain = world.PLAIN.format(item=spec.item, colour=spec.colour, cat=spec.category)
        assert not oracle.complies(p, plain), p
        good = world.compliant_answers(p)
        for _ in range(10):
            text = world.demonstration(p, rng)
            key = "plain" if text == plain else good.index(text) if text in good else "other"
            phrasings.setdefault(spec.family, Counter())[key] += 1
            complied += bool(oracle.complies(p, text))
            total += 1
    assert set(phrasings) == set(world.CONSTRAINT_TYPES)
    for family, counts in phrasings.items():
        assert counts.most_common(1)[0][0] == "plain", (family, counts)
    assert 0.3 < complied / total < 0.42


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


def test_the_compliance_table_judges_the_reports_own_samples_per_constraint_type():
    one, caps = "Describe the fox. Answer in one word.", "Describe the fox. Answer in capitals."
    samples = {
        "sft@1.0": [[one, "The fox is an orange animal.", True], [one, "Fox.", True],
                    [caps, "The fox.", True], ["What is 1 plus 1?", "2.", True]],
        "sft@best": [[one, "Fox.", True], [one, "Fox.", True], [caps, "The fox.", True]],
        "ppo@1.0": [[one, "Fox.", True], [one, "Orange.", False], [caps, "FOX.", True]],
    }  # fmt: skip
    table = report.compliance(samples)
    assert list(table) == ["one_word", "capitals"]  # in the world's order; arithmetic left out
    assert table["one_word"] == {"prompts": 2, "sft@1.0": 0.5, "sft@best": 1.0, "ppo@1.0": 1.0}
    assert table["capitals"] == {"prompts": 1, "sft@1.0": 0.0, "sft@best": 0.0, "ppo@1.0": 1.0}
    data = {"total_seconds": 1.0, "compliance": table, "careless_ranks_last": True}
    assert report.checks(data)["compliance_rises_sft_to_ppo_on_every_type"]
    table["capitals"]["ppo@1.0"] = 0.0
    assert not report.checks(data)["compliance_rises_sft_to_ppo_on_every_type"]


def test_several_seeds_give_each_figure_per_seed_with_its_mean_and_range():
    def seed_report(seed, ppo, rm, compliance):
        return {
            "seed": seed, "quick": False, "total_seconds": 500.0 + seed,
            "ppo_vs_sft": {"win_rate": ppo, "ci95": [ppo - 0.05, ppo + 0.05]},
            "reward_model": {"accuracy": rm}, "careless_ranks_last": seed != 2,
            "sft_best_temperature": 1.0,
            "compliance": {"one_word": {"prompts": 40, "sft@1.0": 0.3, "ppo@1.0": compliance}},
            "checks": {"reward_model_accuracy_ge_0.85": rm >= 0.85},
        }  # fmt: skip

    reports = [seed_report(0, 0.74, 0.9, 0.9), seed_report(1, 0.70, 0.8, 0.8),
               seed_report(2, 0.78, 0.88, 1.0)]  # fmt: skip
    summary = report.seeds_summary(reports)
    assert summary["seeds"] == [0, 1, 2]
    rows = {row["figure"]: row for row in summary["figures"]}
    ppo = rows["PPO vs SFT, both T=1.0"]
    assert ppo["per_seed"] == [0.74, 0.70, 0.78]
    assert (ppo["mean"], ppo["min"], ppo["max"]) == (0.74, 0.7, 0.78)
    assert rows["careless labeler last (1 = yes)"]["per_seed"] == [1.0, 1.0, 0.0]
    assert rows["DPO vs SFT, both T=1.0"]["mean"] is None  # not in these reports
    one_word = summary["compliance"]["one_word"]["ppo@1.0"]
    assert (one_word["mean"], one_word["min"], one_word["max"]) == (0.9, 0.8, 1.0)
    table = report.seeds_table(summary)
    assert "| PPO vs SFT, both T=1.0 | 0.74 [0.69, 0.79] | 0.70 [0.65, 0.75] | 0.78 [0.73, 0.83]" \
        " | 0.74 | 0.70–0.78 |" in table  # fmt: skip
    assert "| one_word | 0.30 (0.30–0.30) | n/a (n/a–n/a) | 0.90 (0.80–1.00)" in table
    assert "benchmarks missed: seed 1: reward_model_accuracy_ge_0.85" in table
