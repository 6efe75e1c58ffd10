"""Quality of the raw judgments: agreement, gold accuracy, position bias, consensus, diversity.

Reads, but for two writes kept beside the figures they come from: `consensus_compute` (a new
versioned Consensus row; the raw annotations are never touched) and `task_mark_gold`.

Which judgments count, the units each kind is compared on and what agrees are the rules of
`annotation.rules`. Units of agreement: for pairwise choices the unit is (task, response pair)
and the value is which side won (nominal; ties are a third value); for ratings the unit is the
rated task and the value the score (ordinal); for compare strengths the signed strength
(ordinal).

Agreement with consensus, the one measure of a labeler's quality that every page, the API and
the weighted consensus use: over every unit the labeler judged where at least two other
labelers judged it too, the share where the labeler's value agrees with the others' (a pair:
the others' clear majority, units where they split evenly are left out; a rating: within one
point of the others' median). Leave-one-out: a labeler's own judgment is never part of the
consensus it is measured against.

Self-agreement, where a project lets a labeler judge a prompt again (`Project.repeats_allowed`,
or in a later round): see `self_agreement`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations, groupby
from operator import itemgetter

from django.db import transaction
from django.db.models import QuerySet

from annotation import rules
from annotation.models import (
    Annotation,
    Consensus,
    Project,
    Prompt,
    ReviewStatus,
    TaskKind,
    not_superseded,
)

# --- Krippendorff's alpha --------------------------------------------------------------------


def krippendorff_alpha(units: dict, level: str = "nominal") -> float | None:
    """Alpha for {unit: {coder: value}}; units with fewer than two values are not pairable.

    Ordinal distances use the cumulative marginal frequencies (Krippendorff 2011)."""
    values_by_unit = [list(v.values()) for v in units.values() if len(v) >= 2]
    if not values_by_unit:
        return None
    categories = sorted({x for vals in values_by_unit for x in vals})
    index = {c: i for i, c in enumerate(categories)}
    k = len(categories)
    o = [[0.0] * k for _ in range(k)]  # coincidence matrix
    for vals in values_by_unit:
        m = len(vals)
        for i, a in enumerate(vals):
            for j, b in enumerate(vals):
                if i != j:
                    o[index[a]][index[b]] += 1.0 / (m - 1)
    n_c = [sum(row) for row in o]
    n = sum(n_c)
    if n <= 1:
        return None

    def delta(c: int, d: int) -> float:
        if level == "nominal":
            return 0.0 if c == d else 1.0
        lo, hi = min(c, d), max(c, d)
        s = sum(n_c[g] for g in range(lo, hi + 1)) - (n_c[lo] + n_c[hi]) / 2.0
        return s * s

    observed = sum(o[c][d] * delta(c, d) for c in range(k) for d in range(k))
    expected = sum(n_c[c] * n_c[d] * delta(c, d) for c in range(k) for d in range(k)) / (n - 1)
    if expected == 0:
        return 1.0
    return 1.0 - observed / expected


def kendall_tau(a: list, b: list) -> float | None:
    """Kendall's tau-b between two rankings given as {item: rank position} dicts' values."""
    concordant = discordant = ties_a = ties_b = 0
    for i, j in combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif (da > 0) == (db > 0):
            concordant += 1
        else:
            discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return None if denominator == 0 else (concordant - discordant) / denominator


def _positions(payload: dict) -> dict[int, int]:
    return {rid: rank for rank, group in enumerate(payload["ranking"]) for rid in group}


# --- Agreement -------------------------------------------------------------------------------


def _judgments(project: Project, kind: str | None = None) -> QuerySet[Annotation]:
    qs = rules.by_labelers(Annotation.objects.filter(task__project=project))
    if kind:
        qs = qs.filter(kind=kind)
    return qs


def _opinions(judgments: QuerySet[Annotation]) -> dict[str, dict[tuple, dict[int, object]]]:
    """{kind: {(task, *unit): {labeler: value}}}: what each judgment says on each unit of
    agreement, by its kind's rules (see `annotation.rules`)."""
    units: dict = defaultdict(lambda: defaultdict(dict))
    rows = judgments.filter(kind__in=rules.COMPARED_KINDS).values_list(
        "task_id", "labeler_id", "kind", "payload", "shown_order"
    )
    for task_id, labeler, kind, payload, shown in rows:
        for unit, value in rules.opinions_of(kind, payload, shown).items():
            units[kind][(task_id, *unit)][labeler] = value
    return units


def _pairs(by_kind: dict) -> dict:
    return {unit: v for kind in rules.VOTING_KINDS for unit, v in by_kind[kind].items()}


def pairwise_units(project: Project) -> dict:
    """{(task, low, high): {labeler: 'low'|'high'|'tie'}} from the judgments that vote."""
    return _pairs(_opinions(_judgments(project)))


@dataclass(frozen=True)
class Agreement:
    """A labeler's agreement with consensus: `agreed` of `compared` units."""

    agreed: int = 0
    compared: int = 0

    @property
    def share(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


def _consensus_agreement(by_kind: dict) -> dict[int, Agreement]:
    counts: dict[int, Counter] = defaultdict(Counter)
    for kind, units in by_kind.items():
        for values in units.values():
            for labeler, value in values.items():
                others = [v for other, v in values.items() if other != labeler]
                agrees = rules.agrees_with_consensus(kind, value, others)
                if agrees is not None:
                    counts[labeler]["compared"] += 1
                    counts[labeler]["agreed"] += agrees
    return {labeler: Agreement(c["agreed"], c["compared"]) for labeler, c in counts.items()}


def consensus_agreement(judgments: QuerySet[Annotation]) -> dict[int, Agreement]:
    """Each labeler's agreement with consensus (see the module's docstring) over `judgments`,
    which must hold every judgment of the tasks it covers (the others make the consensus)."""
    return _consensus_agreement(_opinions(rules.by_labelers(judgments)))


def self_agreement(judgments: QuerySet[Annotation]) -> dict[int, Agreement]:
    """Each labeler's agreement with themselves: over every response pair they stated a
    preference on (a side or a tie, as pairwise agreement compares them) in more than one
    counted judgment, in any tasks, kinds or rounds, each later judgment's value on the pair
    set against their first one's (the lowest id, the first submitted); `agreed` of
    `compared` later values. A pair judged three times, the two later ones like the first,
    is 2 of 2. Labelers who judged no pair twice have no entry."""
    first: dict[tuple, object] = {}
    counts: dict[int, Counter] = defaultdict(Counter)
    rows = (
        rules.by_labelers(judgments)
        .filter(kind__in=rules.VOTING_KINDS)
        .order_by("id")
        .values_list("labeler_id", "kind", "payload", "shown_order")
    )
    for labeler, kind, payload, shown in rows.iterator(chunk_size=2000):
        for pair, value in rules.opinions_of(kind, payload, shown).items():
            key = (labeler, pair)
            if key not in first:
                first[key] = value
                continue
            counts[labeler]["compared"] += 1
            counts[labeler]["agreed"] += value == first[key]
    return {labeler: Agreement(c["agreed"], c["compared"]) for labeler, c in counts.items()}


def agreement_report(project: Project) -> dict:
    """Per project and per labeler: pairwise agreement, alpha, tau, agreement with consensus,
    self-agreement, gold accuracy and position bias."""
    by_kind = _opinions(_judgments(project))
    units = _pairs(by_kind)
    agree = total = 0
    per_labeler: dict[int, Counter] = defaultdict(Counter)
    for votes in units.values():
        for (la, va), (lb, vb) in combinations(sorted(votes.items()), 2):
            total += 1
            agree += va == vb
            for labeler in (la, lb):
                per_labeler[labeler]["pairs"] += 1
                per_labeler[labeler]["pairs_agree"] += va == vb
    consensus = _consensus_agreement(by_kind)

    strengths = defaultdict(dict)
    for task_id, labeler, payload, shown in _judgments(project, TaskKind.COMPARE).values_list(
        "task_id", "labeler_id", "payload", "shown_order"
    ):
        ids = sorted(shown) if shown else []
        if payload.get("tie"):
            strengths[task_id][labeler] = 0
        elif ids:
            sign = 1 if payload["winner"] == ids[0] else -1
            strengths[task_id][labeler] = sign * int(payload["strength"])

    taus = []
    by_task = defaultdict(dict)
    for task_id, labeler, payload in _judgments(project, TaskKind.RANK).values_list(
        "task_id", "labeler_id", "payload"
    ):
        by_task[task_id][labeler] = _positions(payload)
    for rankings in by_task.values():
        for (_, ra), (_, rb) in combinations(sorted(rankings.items()), 2):
            items = sorted(ra)
            tau = kendall_tau([ra[i] for i in items], [rb.get(i, 0) for i in items])
            if tau is not None:
                taus.append(tau)

    gold = _gold_hits(project)
    bias = position_bias(project)
    itself = self_agreement(_judgments(project))
    labelers = {}
    # Every figure with its n: the count of units (pairs, compared units, gold tasks,
    # judgments, repeated values) behind it.
    for labeler in (
        per_labeler.keys()
        | consensus.keys()
        | gold.keys()
        | bias["labelers"].keys()
        | itself.keys()
    ):
        c = per_labeler[labeler]
        hits = gold.get(labeler, [])
        labelers[labeler] = {
            "pairwise_agreement": c["pairs_agree"] / c["pairs"] if c["pairs"] else None,
            "pairwise_n": c["pairs"],
            "consensus_agreement": consensus.get(labeler, Agreement()).share,
            "consensus_n": consensus.get(labeler, Agreement()).compared,
            "self_agreement": itself.get(labeler, Agreement()).share,
            "self_agreement_n": itself.get(labeler, Agreement()).compared,
            "gold_accuracy": sum(hits) / len(hits) if hits else None,
            "gold_n": len(hits),
            "first_shown_wins": bias["labelers"].get(labeler),
            "first_shown_n": bias["labeler_n"].get(labeler, 0),
            "first_shown_chance": bias["labeler_chance"].get(labeler),
        }
    return {
        "pairwise_agreement": agree / total if total else None,
        "alpha_pairwise_nominal": krippendorff_alpha(units, "nominal"),
        "alpha_rating_ordinal": krippendorff_alpha(by_kind[TaskKind.RATE], "ordinal"),
        "alpha_strength_ordinal": krippendorff_alpha(strengths, "ordinal"),
        "kendall_tau_mean": sum(taus) / len(taus) if taus else None,
        "position_bias": bias["overall"],
        "position_bias_by_type": bias["by_type"],
        "labelers": labelers,
    }


def _gold_hits(project: Project) -> dict[int, list[int]]:
    """{labeler: [1 or 0 per gold judgment]}: answered like the known answer or not."""
    from annotation.gold import gold_hit

    hits: dict[int, list[int]] = defaultdict(list)
    rows = _judgments(project).filter(task__is_gold=True).select_related("task")
    for annotation in rows:
        ok = gold_hit(annotation.kind, annotation.payload, annotation.task.gold_answer)
        if ok is None:
            continue
        hits[annotation.labeler_id].append(int(ok))
    return hits


def gold_accuracy(project: Project) -> dict[int, float]:
    """Each labeler's share of gold tasks answered like the known answer (the first choice)."""
    return {labeler: sum(v) / len(v) for labeler, v in _gold_hits(project).items()}


# --- Position bias ---------------------------------------------------------------------------


def _binomial_pmf(k: int, n: int, p: float) -> float:
    if p in (0.0, 1.0):
        return float(k == (n if p else 0))
    log = (
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        + k * math.log(p) + (n - k) * math.log1p(-p)
    )  # fmt: skip
    return math.exp(log)


def binomial_test(successes: int, n: int, p: float) -> float | None:
    """The two-sided exact binomial test: the probability, if each trial succeeded with
    chance `p`, of an outcome no more likely than `successes` of `n` (the method of R's
    `binom.test` and SciPy's `binomtest`, with their relative tolerance for ties in
    likelihood). None when there are no trials. In log space, so thousands of trials neither
    overflow nor underflow."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be from 0 to {n}, got {successes}")
    observed = _binomial_pmf(successes, n, p)
    bound = observed * (1 + 1e-7)
    total = sum(q for k in range(n + 1) if (q := _binomial_pmf(k, n, p)) <= bound)
    return min(1.0, total)


# Below this p-value the share is called a bias on the curate page.
BIAS_SIGNIFICANCE = 0.05


def position_bias(project: Project) -> dict:
    """How often the response shown first wins a comparison or tops a ranking, beside chance.

    A comparison (ties left out) is won by the first shown with chance 1/2; a ranking of K
    responses is topped by it with chance 1/K. A ranking whose top place is shared is left out
    (who "won" is unclear). `by_type`: one row per task type and K, with the share, its n, the
    chance and the two-sided exact binomial test of the share against chance. `labelers`: each
    labeler's share over all their judgments, with `labeler_n` and `labeler_chance` (the mean
    chance of their judgments: what the share would be without any bias). `overall` mixes task
    types and so has no chance of its own; it is kept for the API's readers, not shown."""
    # labeler -> [(won, chance)]; (kind, K) -> [wins, n]
    judged: dict[int, list[tuple[int, float]]] = defaultdict(list)
    types: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    rows = _judgments(project).filter(kind__in=rules.VOTING_KINDS)
    for labeler, kind, payload, shown in rows.values_list(
        "labeler_id", "kind", "payload", "shown_order"
    ):
        if not shown:
            continue
        if kind in (TaskKind.COMPARE, TaskKind.ARENA):
            if payload.get("tie"):
                continue
            won = int(payload["winner"] == shown[0])
        else:
            top = payload["ranking"][0]
            top = top if isinstance(top, list) else [top]
            if len(top) != 1:
                continue
            won = int(top[0] == shown[0])
        k = len(shown)
        judged[labeler].append((won, 1 / k))
        tally = types[(kind, k)]
        tally[0] += won
        tally[1] += 1
    by_type = []
    for (kind, k), (wins, n) in sorted(types.items()):
        p_value = binomial_test(wins, n, 1 / k)
        by_type.append(
            {
                "kind": kind,
                "candidates": k,
                "first_shown_wins": wins,
                "n": n,
                "share": wins / n,
                "chance": 1 / k,
                "p_value": p_value,
                "biased": p_value < BIAS_SIGNIFICANCE,
            }
        )
    flat = [won for v in judged.values() for won, _ in v]
    return {
        "overall": sum(flat) / len(flat) if flat else None,
        "by_type": by_type,
        "labelers": {labeler: sum(w for w, _ in v) / len(v) for labeler, v in judged.items()},
        "labeler_n": {labeler: len(v) for labeler, v in judged.items()},
        "labeler_chance": {labeler: sum(c for _, c in v) / len(v) for labeler, v in judged.items()},
    }


# --- Consensus -------------------------------------------------------------------------------


def bradley_terry(
    comparisons: list[tuple[int, int, float]], iterations: int = 200, prior: float = 0.1
) -> dict:
    """Scores (log-strengths, mean 0) from weighted (winner, loser, weight) comparisons, by the
    MM algorithm (Hunter 2004) with a small prior (`prior` virtual games against an item of
    strength 1) so unbeaten items stay finite; `prior=0` is the plain maximum likelihood. A tie
    is half a win each way: (a, b, 0.5) and (b, a, 0.5)."""
    items = sorted({x for w, l_, _ in comparisons for x in (w, l_)})
    if not items:
        return {}
    wins = Counter()
    pair_weight: dict[tuple[int, int], float] = Counter()
    for winner, loser, weight in comparisons:
        wins[winner] += weight
        pair_weight[(min(winner, loser), max(winner, loser))] += weight
    opponents: dict[int, list[tuple[int, float]]] = {i: [] for i in items}
    for (a, b), n in pair_weight.items():
        opponents[a].append((b, n))
        opponents[b].append((a, n))
    p = dict.fromkeys(items, 1.0)
    for _ in range(iterations):
        new = {}
        for i in items:
            denominator = 2 * prior / (p[i] + 1.0)
            for j, n in opponents[i]:
                denominator += n / (p[i] + p[j])
            new[i] = (wins[i] + prior) / denominator if denominator else p[i]
        mean_log = sum(math.log(v) for v in new.values()) / len(new)
        p = {i: math.exp(math.log(v) - mean_log) for i, v in new.items()}
    return {i: round(math.log(v), 6) for i, v in p.items()}


@transaction.atomic
def consensus_compute(*, project: Project, weighted: bool = False) -> Consensus:
    """Bradley-Terry scores per prompt over the votes of every counted judgment (imported ones
    included), one vote per labeler per response pair whatever the task type (their newest,
    `rules.votes_per_voter`), each vote of weight 1 whatever its strength (a "much better"
    comparison is one preference, as one ranking's pair is), optionally weighted by the
    labeler's agreement with consensus (1.0 for judgments without a labeler or labelers with no
    figure yet); stored as a new version. Ties cast no vote.

    The summary says what it covered: prompts, judgments, votes (after one per labeler per
    pair) and the highest annotation id read, so a snapshot can say how current it is."""
    Project.objects.select_for_update().get(pk=project.pk)
    weights: dict = {}
    if weighted:
        agreement = consensus_agreement(Annotation.objects.filter(task__project=project))
        weights = {labeler: a.share for labeler, a in agreement.items()}
    rows = (
        rules.counted(Annotation.objects.filter(task__project=project))
        .filter(kind__in=rules.VOTING_KINDS)
        # By id within a prompt: the newest vote of a labeler is the last one, and the fit's
        # sums run in the same order on every database.
        .order_by("task__prompt_id", "id")
        .values_list("task__prompt_id", "id", "labeler_id", "kind", "payload", "shown_order")
    )
    scores: dict[str, dict[str, float]] = {}
    judgments = votes = 0
    max_id = None
    for prompt_id, group in groupby(rows.iterator(chunk_size=2000), itemgetter(0)):
        group = [row[1:] for row in group]
        judgments += len(group)
        max_id = max(max_id or 0, max(row[0] for row in group))
        comparisons = []
        for pair in sorted(by_pair := rules.votes_per_voter(group)):
            for voter, (better, worse, strength) in by_pair[pair].items():
                if strength:
                    votes += 1
                    comparisons.append((better, worse, weights.get(voter, 1.0)))
        if comparisons:
            fitted = bradley_terry(comparisons)
            scores[str(prompt_id)] = {str(k): v for k, v in fitted.items()}
    latest = project.consensus.order_by("-version").values_list("version", flat=True).first()
    return Consensus.objects.create(
        project=project,
        version=(latest or 0) + 1,
        method="bradley-terry",
        weighted=weighted,
        scores=scores,
        summary={
            "prompts": len(scores),
            "judgments": judgments,
            "votes": votes,
            "annotation_max_id": max_id,
        },
    )


# --- Diversity -------------------------------------------------------------------------------

NUM_HASHES = 64
SHINGLE = 5


def _minhash(text: str) -> tuple[int, ...]:
    words = re.findall(r"\w+", text.casefold())
    shingles = {" ".join(words[i : i + SHINGLE]) for i in range(max(1, len(words) - SHINGLE + 1))}
    return tuple(
        min(
            int.from_bytes(hashlib.blake2b(f"{seed}:{s}".encode(), digest_size=8).digest(), "big")
            for s in shingles
        )
        for seed in range(NUM_HASHES)
    )


def diversity_report(project: Project, *, prompt_ids=None, near_threshold: float = 0.7,
                     dominance: float = 0.5) -> dict:  # fmt: skip
    """Counts by tag and language, prompt length distribution, exact and near-duplicate prompts
    (MinHash over word 5-shingles; 16 bands of 4 rows), and a warning when a tag dominates."""
    prompts = Prompt.objects.filter(project=project)
    if prompt_ids is not None:
        prompts = prompts.filter(id__in=prompt_ids)
    tags, languages, lengths = Counter(), Counter(), []
    exact: dict[str, list[int]] = defaultdict(list)
    bands: dict[tuple, list[int]] = defaultdict(list)
    signatures = {}
    for prompt in prompts.iterator(chunk_size=2000):
        text = (
            prompt.display_text
            if not prompt.messages
            else "\n".join(m["content"] for m in prompt.messages)
        )
        tags.update(prompt.tags or ["(untagged)"])
        languages[prompt.language or "(unknown)"] += 1
        lengths.append(len(text))
        exact[hashlib.sha256(text.encode()).hexdigest()].append(prompt.pk)
        signature = _minhash(text)
        signatures[prompt.pk] = signature
        for band in range(16):
            bands[(band, signature[band * 4 : band * 4 + 4])].append(prompt.pk)
    near = set()
    for members in bands.values():
        for a, b in combinations(members, 2):
            similarity = (
                sum(x == y for x, y in zip(signatures[a], signatures[b], strict=True)) / NUM_HASHES
            )
            if similarity >= near_threshold:
                near.add((min(a, b), max(a, b)))
    lengths.sort()
    total = len(lengths)
    warnings = []
    if total:
        top, count = tags.most_common(1)[0]
        if count / total > dominance and len(tags) > 1:
            warnings.append(
                f"tag {top!r} covers {count / total:.0%} of prompts (over {dominance:.0%})"
            )
    return {
        "prompts": total,
        "tags": dict(tags.most_common()),
        "languages": dict(languages.most_common()),
        "length": {
            "min": lengths[0] if lengths else None,
            "median": lengths[total // 2] if lengths else None,
            "p90": lengths[min(total - 1, int(total * 0.9))] if lengths else None,
            "max": lengths[-1] if lengths else None,
        },
        "exact_duplicates": [ids for ids in exact.values() if len(ids) > 1],
        "near_duplicates": sorted(near),
        "warnings": warnings,
    }


# --- Curation writes -------------------------------------------------------------------------


@transaction.atomic
def task_mark_gold(*, task, answer: dict | None = None, judgment: Annotation | None = None):
    """Make a task gold with a curator's answer: `answer` as given, or the payload of
    `judgment`, an approved judgment of this task the curator picked, or (neither given) the
    newest approved judgment. An unapproved judgment is never the answer: one labeler's own
    word would score that labeler 1.0. The answer is held to the rules of the task's kind; a
    complete task opens again, since a gold task goes to every labeler. The judgments
    themselves are not changed. ValidationError naming `gold_answer` otherwise."""
    from django.core.exceptions import ValidationError

    from annotation.gold import gold_answer_check
    from annotation.models import Task

    if answer is None:
        if judgment is not None and judgment.task_id != task.pk:
            raise ValidationError({"gold_answer": f"judgment {judgment.pk} is of another task."})
        if judgment is not None and judgment.review_status != ReviewStatus.APPROVED:
            raise ValidationError(
                {"gold_answer": f"judgment {judgment.pk} is not approved; approve it first."}
            )
        if judgment is None:
            judgment = (
                task.annotations.filter(not_superseded(), review_status=ReviewStatus.APPROVED)
                .order_by("-id")
                .first()
            )
        if judgment is None:
            raise ValidationError(
                {"gold_answer": f"task {task.pk} has no approved judgment to take the answer from."}
            )
        answer = judgment.payload
    answer = gold_answer_check(
        kind=task.kind,
        answer=answer,
        candidate_ids=task.candidate_ids(),
        labels=task.project.labels,
    )
    status = Task.Status.OPEN if task.status == Task.Status.COMPLETE else task.status
    Task.objects.filter(pk=task.pk).update(is_gold=True, gold_answer=answer, status=status)
    task.is_gold, task.gold_answer, task.status = True, answer, status
    return task
