"""Figures with yardsticks: position bias per task type beside its chance baseline with an
exact binomial test, every per-labeler figure with its n, and the curate page's filters kept
across its pages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from snapshot_testutils import judge, prompt_with

from annotation import quality, services
from annotation.models import Assignment, Role, TaskKind


def judge_shown(task, labeler, payload, shown):
    """Judge `task` as `labeler` having been shown the responses in the order `shown`."""
    Assignment.objects.create(
        task=task,
        labeler=labeler,
        expires_at=timezone.now() + timedelta(minutes=10),
        shown_order=[r.pk for r in shown],
    )
    return judge(task, labeler, payload)


def test_the_exact_binomial_test_matches_hand_computed_values():
    """Two-sided: the chance of an outcome no more likely than the one seen.

    6 of 8 at 1/2: outcomes 0,1,2,6,7,8 are as unlikely or less: (1+8+28+28+8+1)/256.
    3 of 4 at 1/4: pmf is 81,108,54,12,1 (/256); 3 and 4 are as unlikely or less: 13/256.
    5 of 5 at 1/3: only 5 itself (1/243; none of 0..4 is as unlikely)."""
    assert quality.binomial_test(6, 8, 0.5) == pytest.approx(74 / 256)
    assert quality.binomial_test(3, 4, 0.25) == pytest.approx(13 / 256)
    assert quality.binomial_test(5, 5, 1 / 3) == pytest.approx(1 / 243)
    assert quality.binomial_test(1, 4, 0.25) == pytest.approx(1.0)
    assert quality.binomial_test(0, 0, 0.5) is None
    # Thousands of trials neither overflow nor underflow.
    assert quality.binomial_test(2500, 10_000, 0.25) == pytest.approx(1.0, abs=1e-6)
    assert quality.binomial_test(2900, 10_000, 0.25) < 1e-15


@pytest.fixture
def biased(make_user):
    """Comparisons (chance 1/2): Ann picks the first shown 4 of 4, Bob 2 of 4: 6 of 8.
    Rankings of 3 (chance 1/3): Cat tops the first shown 5 of 5. Rankings of 4 (chance 1/4):
    Dan 3 of 4, and one ranking with a shared top place, left out. A gold task Ann answers
    right, shown in no recorded order."""
    people = {n: make_user(n) for n in ("owner", "ann", "bob", "cat", "dan")}
    project = services.project_create(name="Bias", slug="bias", overlap=2)
    services.membership_set(project=project, user=people["owner"], role=Role.CURATOR)
    for name in ("ann", "bob", "cat", "dan"):
        services.membership_set(project=project, user=people[name], role=Role.LABELER)
    for i in range(4):
        _, (x, y), task = prompt_with(project, f"C{i}", [f"x{i}", f"y{i}"], kind=TaskKind.COMPARE)
        judge_shown(task, people["ann"], {"winner": y.pk}, [y, x])
        judge_shown(task, people["bob"], {"winner": y.pk if i < 2 else x.pk}, [y, x])
    for i in range(5):
        _, rs, task = prompt_with(project, f"R3 {i}", [f"a{i}", f"b{i}", f"c{i}"], required=1)
        shown = [rs[2], rs[0], rs[1]]
        judge_shown(task, people["cat"], {"ranking": [[r.pk] for r in shown]}, shown)
    for i in range(5):
        _, rs, task = prompt_with(project, f"R4 {i}", [f"{i}{j}" for j in range(4)], required=1)
        if i == 4:
            ranking = [[rs[0].pk, rs[1].pk], [rs[2].pk], [rs[3].pk]]  # a shared top place
        else:
            top = rs[0] if i < 3 else rs[1]
            ranking = [[top.pk]] + [[r.pk] for r in rs if r != top]
        judge_shown(task, people["dan"], {"ranking": ranking}, rs)
    (prompt,), _ = services.prompts_create(project=project, items=[{"text": "gold"}])
    good = services.response_create(prompt=prompt, text="right", origin="seed")
    bad = services.response_create(prompt=prompt, text="wrong", origin="seed")
    gold = services.task_create(
        project=project, kind=TaskKind.COMPARE, prompt=prompt, candidates=[good, bad],
        is_gold=True, gold_answer={"winner": good.pk},
    )  # fmt: skip
    judge_shown(gold, people["ann"], {"winner": good.pk}, [])
    return project, people


def test_position_bias_per_task_type_beside_chance_with_its_test(biased):
    project, people = biased

    bias = quality.position_bias(project)

    rows = {(r["kind"], r["candidates"]): r for r in bias["by_type"]}
    assert set(rows) == {("compare", 2), ("rank", 3), ("rank", 4)}
    compare, rank3, rank4 = rows["compare", 2], rows["rank", 3], rows["rank", 4]
    assert (compare["first_shown_wins"], compare["n"], compare["chance"]) == (6, 8, 0.5)
    assert compare["p_value"] == pytest.approx(74 / 256) and not compare["biased"]
    assert (rank3["first_shown_wins"], rank3["n"]) == (5, 5)
    assert rank3["chance"] == pytest.approx(1 / 3)
    assert rank3["p_value"] == pytest.approx(1 / 243) and rank3["biased"]
    assert (rank4["first_shown_wins"], rank4["n"], rank4["chance"]) == (3, 4, 0.25)
    assert rank4["p_value"] == pytest.approx(13 / 256) and not rank4["biased"]
    dan = people["dan"].pk
    assert bias["labelers"][dan] == 0.75 and bias["labeler_n"][dan] == 4
    assert bias["labeler_chance"][dan] == 0.25


def test_the_curate_page_shows_bias_against_chance_and_every_figure_with_its_n(client, biased):
    project, people = biased
    client.force_login(people["owner"])

    html = client.get("/curate/bias/").content.decode()

    # No bar for the mixed share (a green bar at chance); a table beside chance instead.
    assert "first-shown wins</span>" not in html
    table = html[
        html.index('id="position-bias"') : html.index("</table>", html.index('id="position-bias"'))
    ]
    assert "<td>rank</td><td>3</td>" in table
    assert "1.00 (5 of 5)</td>\n      <td>0.33</td><td>5</td>\n      <td>0.0041</td>" in table
    assert "favours the first shown" in table
    assert "0.75 (3 of 4)</td>\n      <td>0.25</td><td>4</td>\n      <td>0.0508</td>" in table
    assert table.count("consistent with chance") == 2
    labelers = html[html.index('id="labeler-quality"') : html.index('id="diversity-h"')]
    ann = labelers[
        labelers.index("<td>ann</td>") : labelers.index("</tr>", labelers.index("<td>ann</td>"))
    ]
    # Pairwise: 4 pairs with Bob, 2 agree; gold 1 of 1; first shown 4 of 4 comparisons.
    assert '0.50 <span class="n">n=4</span>' in ann
    assert '1.00 <span class="n">n=1</span>' in ann
    assert '1.00 (0.50) <span class="n">n=4</span>' in ann
    dan = labelers[
        labelers.index("<td>dan</td>") : labelers.index("</tr>", labelers.index("<td>dan</td>"))
    ]
    assert '0.75 (0.25) <span class="n">n=4</span>' in dan


def test_the_curate_pages_keep_their_filters(client, make_user):
    """52 judgments of the chosen kind and source: page 1 links to page 2 of the same filters,
    and page 2 holds the last 2 of them."""
    owner, ann, bob = make_user("owner"), make_user("ann"), make_user("bob")
    project = services.project_create(name="Pages", slug="pages", overlap=2)
    services.membership_set(project=project, user=owner, role=Role.CURATOR)
    for i in range(26):
        _, (x, y), task = prompt_with(project, f"P{i}", [f"x{i}", f"y{i}"], kind=TaskKind.COMPARE)
        judge(task, ann, {"winner": x.pk})
        judge(task, bob, {"winner": y.pk})
    _, rs, task = prompt_with(project, "ranked", ["r1", "r2"])
    judge(task, ann, {"ranking": [[rs[0].pk], [rs[1].pk]]})
    client.force_login(owner)

    first = client.get("/curate/pages/", {"kind": "compare", "source": "labeler"}).content.decode()

    assert "Page 1 of 2 (52 judgments)" in first
    assert '<a href="?kind=compare&amp;source=labeler&amp;page=2">next</a>' in first
    second = client.get("/curate/pages/?kind=compare&source=labeler&page=2").content.decode()
    assert "Page 2 of 2 (52 judgments)" in second
    assert '<a href="?kind=compare&amp;source=labeler&amp;page=1">previous</a>' in second
    # Unfiltered, the links carry nothing but the page.
    plain = client.get("/curate/pages/").content.decode()
    assert "Page 1 of 2 (53 judgments)" in plain and '<a href="?page=2">next</a>' in plain


def test_self_agreement_sets_a_labelers_repeats_against_their_first_judgment(client, make_user):
    """Ann compares the pair (x, y) in rounds 1, 2 and 3, picking x each time: the two later
    values agree with the first, 2 of 2. She ranks a, b, c in round 1 and a, c, b in round 2:
    of the three pairs, (a, b) and (a, c) agree and (b, c) does not, 2 of 3. Self-agreement
    4 of 5 = 0.80, n=5. Bob judged (x, y) once, picking y: he has no repeats (—), and his
    different choice does not touch Ann's figure."""
    owner, ann, bob = make_user("owner"), make_user("ann"), make_user("bob")
    project = services.project_create(name="Repeats", slug="repeats", repeats_allowed=True)
    services.membership_set(project=project, user=owner, role=Role.CURATOR)
    for labeler in (ann, bob):
        services.membership_set(project=project, user=labeler, role=Role.LABELER)
    prompt, (x, y), task = prompt_with(project, "P", ["x", "y"], kind=TaskKind.COMPARE)
    judge(task, ann, {"winner": x.pk})
    judge(task, bob, {"winner": y.pk})
    for round_ in (2, 3):
        again = services.task_create(
            project=project, kind=TaskKind.COMPARE, prompt=prompt, candidates=[x, y], round=round_
        )
        judge(again, ann, {"winner": x.pk})
    prompt, (a, b, c), task = prompt_with(project, "Q", ["a", "b", "c"])
    judge(task, ann, {"ranking": [[a.pk], [b.pk], [c.pk]]})
    again = services.task_create(
        project=project, kind=TaskKind.RANK, prompt=prompt, candidates=[a, b, c], round=2
    )
    judge(again, ann, {"ranking": [[a.pk], [c.pk], [b.pk]]})
    client.force_login(owner)

    figures = quality.agreement_report(project)["labelers"]
    html = client.get("/curate/repeats/").content.decode()
    api = client.get(f"/api/v1/quality/{project.pk}/").json()["agreement"]["labelers"]

    assert (figures[ann.pk]["self_agreement"], figures[ann.pk]["self_agreement_n"]) == (0.8, 5)
    assert (figures[bob.pk]["self_agreement"], figures[bob.pk]["self_agreement_n"]) == (None, 0)
    assert (api[str(ann.pk)]["self_agreement"], api[str(ann.pk)]["self_agreement_n"]) == (0.8, 5)
    labelers = html[html.index('id="labeler-quality"') : html.index('id="diversity-h"')]
    assert "<th>Self-agreement (repeated pairs)</th>" in labelers
    rows = {
        name: labelers[labelers.index(f"<td>{name}</td>") :].split("</tr>")[0].split("<td>")
        for name in ("ann", "bob")
    }
    # Cells: name, pairwise, consensus, self-agreement, ...
    assert rows["ann"][4] == '0.80 <span class="n">n=5</span></td>\n        '
    assert rows["bob"][4] == "—</td>\n        "
