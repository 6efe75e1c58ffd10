"""The arena leaderboard of a project and the promotion gate (reads only).

Scores are Bradley–Terry strengths fitted to the counted arena battles (`annotation.rules.counted`:
not superseded, not rejected), on FastChat's Elo-like scale: 400 points per factor of ten in
the odds, mean 1000 (lm-sys/FastChat, fastchat/serve/monitor/rating_systems.py, `compute_bt`).
A tie, "both bad" included, is half a win each way, as there. The fit is the one of the
consensus (`annotation.quality.bradley_terry`), with its small prior so a model that has never
lost keeps a finite score. The 95% interval is the 2.5th to 97.5th percentile of the scores
fitted to bootstrap resamples of the battles (`compute_bootstrap_bt`), drawn from a fixed seed
so a page shows the same figures on every load.

The promotion gate compares a policy with its parent on the same resamples: the lead's interval
is the percentiles of the per-resample differences, and the policy passes when the lower end
reaches the project's `arena_margin`.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence

from django.db.models import QuerySet

from annotation import rules
from annotation.models import Annotation, Project, Task, TaskKind
from annotation.quality import bradley_terry
from training.models import ModelArtifact

POINTS = 400 / math.log(10)  # Elo points per unit of natural log-strength
BASE = 1000.0
ROUNDS = 200

Battle = tuple[int, int, float]  # (model a, model b, a's result: 1 win, 0.5 tie, 0 loss)


def bt_points(battles: Sequence[Battle], prior: float = 0.1, iterations: int = 200) -> dict:
    """{model: score}: the Bradley–Terry fit of `battles`, in Elo points around 1000."""
    weights: Counter = Counter()
    for a, b, result in battles:
        if result > 0:
            weights[(a, b)] += result
        if result < 1:
            weights[(b, a)] += 1 - result
    strengths = bradley_terry(
        [(w, l_, n) for (w, l_), n in weights.items()], iterations=iterations, prior=prior
    )
    return {model: BASE + POINTS * s for model, s in strengths.items()}


def bt_bootstrap(battles: Sequence[Battle], rounds: int = ROUNDS, seed: int = 0) -> list[dict]:
    """The fit of `rounds` resamples of the battles (drawn with replacement, as many as there
    are), each {model: score}."""
    rng = random.Random(seed)
    return [bt_points(rng.choices(battles, k=len(battles))) for _ in range(rounds)]


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile with linear interpolation (numpy's and pandas' default)."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def interval(values: Sequence[float]) -> tuple[float, float] | None:
    return (quantile(values, 0.025), quantile(values, 0.975)) if values else None


# --- Battles of a project ------------------------------------------------------------------


def arena_judgments(project: Project, tag: str = "") -> QuerySet[Annotation]:
    judgments = rules.counted(
        Annotation.objects.filter(task__project=project, kind=TaskKind.ARENA, task__is_gold=False)
    )
    if tag:
        # JSON containment is not on SQLite; a tag list is small, so match the JSON text.
        judgments = judgments.filter(task__prompt__tags__icontains=f'"{tag}"')
    return judgments


def battles_of(project: Project, tag: str = "") -> list[Battle]:
    """Each counted arena judgment as one battle between the models of its two responses (the
    lower model id first)."""
    rows = list(arena_judgments(project, tag).values_list("payload", "shown_order", "task_id"))
    task_ids = {task_id for _, _, task_id in rows}
    pairs: dict[int, list[int]] = defaultdict(list)
    model_of: dict[int, int] = {}
    links = Task.candidates.through.objects.filter(
        task_id__in=task_ids, response__model_artifact__isnull=False
    )
    for task_id, response_id, model_id in links.values_list(
        "task_id", "response_id", "response__model_artifact_id"
    ):
        pairs[task_id].append(response_id)
        model_of[response_id] = model_id
    battles = []
    for payload, _, task_id in rows:
        if len(pairs[task_id]) != 2:
            continue  # a response's model was deleted since
        a, b = sorted(pairs[task_id], key=model_of.__getitem__)
        if model_of[a] == model_of[b]:
            continue
        winner = payload.get("winner")
        result = 0.5 if winner is None else (1.0 if winner == a else 0.0)
        battles.append((model_of[a], model_of[b], result))
    return battles


def leaderboard(project: Project, tag: str = "", rounds: int = ROUNDS) -> dict:
    """The leaderboard: rows best first (score, 95% interval, battles, wins, ties, losses, the
    model's run and lineage) and the win-rate matrix (ties count half)."""
    battles = battles_of(project, tag)
    scores = bt_points(battles)
    samples = bt_bootstrap(battles, rounds) if battles else []
    tally: dict[int, Counter] = defaultdict(Counter)
    versus: dict[tuple[int, int], list[float]] = defaultdict(list)
    for a, b, result in battles:
        for me, other, mine in ((a, b, result), (b, a, 1 - result)):
            tally[me]["battles"] += 1
            tally[me][{1.0: "wins", 0.5: "ties", 0.0: "losses"}[mine]] += 1
            versus[(me, other)].append(mine)
    models = {m.pk: m for m in ModelArtifact.objects.filter(pk__in=scores).select_related("run")}
    rows = []
    for pk, score in sorted(scores.items(), key=lambda item: -item[1]):
        low_high = interval([s[pk] for s in samples if pk in s])
        artifact = models[pk]
        rows.append(
            {
                "artifact": artifact.pk,
                "name": artifact.name,
                "stage": artifact.stage,
                "run": artifact.run_id,
                "parent": artifact.parent_id,
                "lineage": [a.name for a in artifact.lineage()],
                "promoted": artifact.promoted_at is not None,
                "score": round(score, 1),
                "lower": round(low_high[0], 1) if low_high else None,
                "upper": round(low_high[1], 1) if low_high else None,
                **{key: tally[pk][key] for key in ("battles", "wins", "ties", "losses")},
            }
        )
    order = [row["artifact"] for row in rows]
    matrix = [
        {
            "artifact": me,
            "against": [
                {
                    "artifact": other,
                    "battles": len(versus[(me, other)]),
                    "win_rate": round(sum(versus[(me, other)]) / len(versus[(me, other)]), 3)
                    if versus[(me, other)]
                    else None,
                }
                for other in order
            ],
        }
        for me in order
    ]
    return {"tag": tag, "battles": len(battles), "rows": rows, "matrix": matrix}


# --- The promotion gate --------------------------------------------------------------------


def reward_win_rate(artifact: ModelArtifact) -> float | None:
    """The win-rate against its parent that a reward model measured, when the run wrote one."""
    for metrics in (artifact.metrics or {}, getattr(artifact.run, "metrics", None) or {}):
        for key, value in metrics.items():
            if "win_rate" in key and isinstance(value, int | float):
                return float(value)
    return None


def promotion_gate(artifact: ModelArtifact, rounds: int = ROUNDS) -> dict:
    """The artifact's arena score against its parent's: both scores, the lead with its 95%
    interval (the same resamples for both), their battles, the project's margin, the reward
    model's win-rate where one exists, and whether the gate is passed."""
    project = artifact.project
    parent = artifact.parent
    gate = {
        "artifact": artifact.pk,
        "parent": parent.pk if parent else None,
        "parent_name": parent.name if parent else "",
        "margin": project.arena_margin if project else None,
        "reward_win_rate": reward_win_rate(artifact),
        "promoted": artifact.promoted_at is not None,
        "passed": False,
        "battles": 0,
        "head_to_head": 0,
    }
    if project is None or parent is None:
        return {**gate, "reason": "It has no parent to be compared with."}
    battles = battles_of(project)
    scores = bt_points(battles)
    mine = [b for b in battles if artifact.pk in b[:2]]
    gate["battles"] = len(mine)
    gate["head_to_head"] = sum(1 for b in mine if parent.pk in b[:2])
    if artifact.pk not in scores or parent.pk not in scores:
        return {**gate, "reason": "It and its parent need arena battles first."}
    leads = [
        s[artifact.pk] - s[parent.pk]
        for s in bt_bootstrap(battles, rounds)
        if artifact.pk in s and parent.pk in s
    ]
    low, high = interval(leads)
    gate.update(
        score=round(scores[artifact.pk], 1),
        parent_score=round(scores[parent.pk], 1),
        lead=round(scores[artifact.pk] - scores[parent.pk], 1),
        lead_lower=round(low, 1),
        lead_upper=round(high, 1),
        passed=low >= project.arena_margin,
    )
    return {
        **gate,
        "reason": f"The lower end of its lead ({low:+.1f}) "
        + ("reaches" if gate["passed"] else "does not reach")
        + f" the project's margin ({project.arena_margin:+.1f}).",
    }
