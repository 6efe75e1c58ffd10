"""The rules of a judgment, in one place: what each kind of task accepts, how its judgments vote
and agree, which judgments count, and what text can be stored.

A new task type needs its `TaskKind`, one entry in `KINDS` (its validation, and its votes and
opinions when it judges responses) and one template, `templates/annotation/kinds/_<kind>.html`.

Which judgments count (`counted`): those no correction superseded and no curator rejected
(pending and approved ones). Imported judgments count like any other wherever votes are tallied
(dataset exports, consensus scores). Agreement figures measure labelers against labelers
(`by_labelers`): a judgment without a labeler (imported, or its account deleted) is nobody's
work to score, and no labeler is scored against one.

Rating flags, the rating scale and comparison strengths are the project's (`Project.labels`,
`annotation.labels`): a kind whose rules read them says so (`needs_labels`), and its validation
is given them.

Text (`clean_text`, `model_text`): PostgreSQL cannot store NUL (U+0000). Text a person sends (a
form, the API, an import file, the admin) is refused when it holds one, naming the field, so
it is fixed where it was written; a model's sample, which nobody can fix, is stored with each
NUL replaced by U+FFFD, so the sample is kept and the mark is visible. Any text is at most
`MAX_TEXT` characters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from statistics import median

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from annotation.labels import Labels
from annotation.models import (
    Annotation,
    Project,
    ReviewStatus,
    Task,
    TaskKind,
    not_superseded,
)

VALID_ROLES = ("system", "user", "assistant")

# An agreement with "the consensus" needs at least two other labelers on the item: with one,
# it would be agreement with that one labeler (the pairwise figure).
CONSENSUS_MIN_OTHERS = 2

# --- Text ----------------------------------------------------------------------------------

MAX_TEXT = 100_000
NUL = "\x00"
NUL_REFUSED = "contains a NUL character (U+0000), which cannot be stored; remove it."


def text_refusal(value: str) -> str | None:
    """Why a person's text cannot be stored, or None when it can."""
    if len(value) > MAX_TEXT:
        return f"is {len(value):,} characters; the limit is {MAX_TEXT:,}."
    if NUL in value:
        return NUL_REFUSED
    return None


def model_text(text: str) -> str:
    """A model's sample as stored: each NUL replaced by U+FFFD (the sample is kept, marked)."""
    return text.replace(NUL, "\ufffd")


def clean_text(value, field: str, *, required: bool = True) -> str:
    """A person's text as stored, or ValidationError naming `field`."""
    if not isinstance(value, str):
        raise ValidationError({field: f"expected text, got {type(value).__name__}."})
    if required and not value.strip():
        raise ValidationError({field: "must not be empty."})
    if (refusal := text_refusal(value)) is not None:
        raise ValidationError({field: refusal})
    return value


def clean_tags(tags, field: str = "tags") -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValidationError({field: "expected a list of strings."})
    return [t.strip() for t in tags if t.strip()]


def validate_messages(messages, *, field: str = "messages") -> None:
    """A conversation: a non-empty list of {role, content} turns whose contents can be stored."""
    if not isinstance(messages, list) or not messages:
        raise ValidationError(
            {
                field: ValidationError(
                    "must be a non-empty list of {role, content} objects.", code="empty"
                )
            }
        )
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise ValidationError({field: f"{where}: expected an object."})
        if message.get("role") not in VALID_ROLES:
            raise ValidationError(
                {
                    field: f"{where}.role: {message.get('role')!r} is not one of {', '.join(VALID_ROLES)}."
                }
            )
        if not isinstance(message.get("content"), str):
            raise ValidationError({field: f"{where}.content: expected text."})
        if (refusal := text_refusal(message["content"])) is not None:
            raise ValidationError({field: f"{where}.content: {refusal}"})


# --- Which judgments count -----------------------------------------------------------------


def counted(judgments: QuerySet[Annotation]) -> QuerySet[Annotation]:
    """The judgments of `judgments` that count (see the module's docstring)."""
    return judgments.filter(not_superseded()).exclude(review_status=ReviewStatus.REJECTED)


def by_labelers(judgments: QuerySet[Annotation]) -> QuerySet[Annotation]:
    """The counted judgments that agreement figures score: those a labeler made."""
    return counted(judgments).exclude(labeler__isnull=True)


# --- Validation per kind -------------------------------------------------------------------


def _validate_written_prompt(payload: dict, ids: list[int], labels: Labels | None) -> dict:
    tags = clean_tags(payload.get("tags"), "payload.tags")
    if payload.get("messages") is not None:
        messages = payload["messages"]
        validate_messages(messages, field="payload.messages")
        if messages[-1]["role"] != "user":
            raise ValidationError({"payload.messages": "the last turn must be the user's."})
        return {"messages": messages, "tags": tags}
    return {"text": clean_text(payload.get("text"), "payload.text"), "tags": tags}


def _validate_demonstration(payload: dict, ids: list[int], labels: Labels | None) -> dict:
    return {"text": clean_text(payload.get("text"), "payload.text")}


def _validate_ranking(payload: dict, ids: list[int], labels: Labels | None) -> dict:
    ranking = payload.get("ranking")
    shape = "expected a list of rank groups, best first, e.g. [[3], [1, 2]]."
    if not isinstance(ranking, list):
        raise ValidationError({"payload.ranking": shape})
    seen: list[int] = []
    groups = []
    for i, group in enumerate(ranking):
        if isinstance(group, int):
            group = [group]
        if not isinstance(group, list) or not group or not all(isinstance(x, int) for x in group):
            raise ValidationError({f"payload.ranking[{i}]": "expected a list of response ids."})
        groups.append(sorted(group))
        seen.extend(group)
    if not ranking or sorted(seen) != sorted(ids):
        # Coded, with the responses left out, so a form can name them in its own words.
        message = (
            f"must place every response exactly once: expected {sorted(ids)}, got {seen}."
            if ranking
            else shape
        )
        missing = [i for i in ids if i not in seen]
        raise ValidationError(
            {
                "payload.ranking": ValidationError(
                    message, code="unplaced", params={"missing": missing}
                )
            }
        )
    unacceptable = _unacceptable(payload)
    return {"ranking": groups, "all_unacceptable": unacceptable, **_better(payload, unacceptable)}


def _unacceptable(payload: dict) -> bool:
    unacceptable = payload.get("all_unacceptable", False)
    if not isinstance(unacceptable, bool):
        raise ValidationError({"payload.all_unacceptable": "expected true or false."})
    return unacceptable


def _better(payload: dict, unacceptable: bool) -> dict:
    """ "Write a better one" (rank and compare tasks): the answer that should have been given,
    when none of the responses is acceptable; it becomes a demonstration
    (services.better_answer_record)."""
    better = payload.get("better")
    if better is None or better == "":
        return {}
    if not unacceptable:
        message = "a better answer goes with all_unacceptable: true."
        raise ValidationError(
            {"payload.better": ValidationError(message, code="without_unacceptable")}
        )
    return {"better": clean_text(better, "payload.better")}


def _validate_comparison(payload: dict, ids: list[int], labels: Labels) -> dict:
    """`winner` (a response id) with a `strength`, or null for a tie; `all_unacceptable`: a tie
    in which neither response is acceptable (no vote), which may carry a `better` answer."""
    winner = payload.get("winner")
    unacceptable = _unacceptable(payload)
    if unacceptable:
        if winner is not None:
            raise ValidationError(
                {"payload.all_unacceptable": "neither is acceptable names no winner: send "
                 "winner null."}
            )  # fmt: skip
        return {"winner": None, "loser": None, "tie": True, "strength": 0,
                "all_unacceptable": True, **_better(payload, True)}  # fmt: skip
    _better(payload, False)  # a better answer without all_unacceptable is refused
    if winner is None:
        return {"winner": None, "loser": None, "tie": True, "strength": 0}
    if winner not in ids:
        raise ValidationError({"payload.winner": f"expected one of {ids} or null for a tie."})
    strengths = labels.strengths
    strength = payload.get("strength", min(strengths))
    if isinstance(strength, bool) or strength not in strengths:
        raise ValidationError({"payload.strength": f"expected one of {sorted(strengths)}."})
    loser = next(i for i in ids if i != winner)
    return {"winner": winner, "loser": loser, "tie": False, "strength": strength}


def _validate_arena(payload: dict, ids: list[int], labels: Labels | None) -> dict:
    """A battle: `winner` (a response id), or null for a tie; `both_bad` marks a tie in which
    neither response is acceptable. No strength: an arena counts wins, as Chatbot Arena does."""
    winner = payload.get("winner")
    both_bad = payload.get("both_bad", False)
    if not isinstance(both_bad, bool):
        raise ValidationError({"payload.both_bad": "expected true or false."})
    if winner is None:
        return {"winner": None, "loser": None, "tie": True, "both_bad": both_bad}
    if both_bad:
        raise ValidationError({"payload.both_bad": "both bad names no winner: send winner null."})
    if winner not in ids:
        raise ValidationError({"payload.winner": f"expected one of {ids} or null for a tie."})
    loser = next(i for i in ids if i != winner)
    return {"winner": winner, "loser": loser, "tie": False, "both_bad": False}


def _validate_rating(payload: dict, ids: list[int], labels: Labels) -> dict:
    score = payload.get("score")
    low, high = labels.low, labels.high
    if not isinstance(score, int) or isinstance(score, bool) or not low <= score <= high:
        raise ValidationError({"payload.score": f"expected a whole number from {low} to {high}."})
    flags = payload.get("flags") or []
    known = labels.flags
    if not isinstance(flags, list) or any(not isinstance(f, str) or f not in known for f in flags):
        listed = ", ".join(known) or "(this project has no flags)"
        raise ValidationError({"payload.flags": f"expected a list of: {listed}."})
    return {"score": score, "flags": sorted(set(flags))}


# --- Votes per kind ------------------------------------------------------------------------

Vote = tuple[int, int, int]  # (better, worse, strength); strength 0 is a tie


def _comparison_votes(payload: dict, shown: list | None) -> list[Vote]:
    """A comparison's one vote; neither acceptable (`all_unacceptable`) prefers neither and,
    like an all-unacceptable ranking, casts no vote."""
    if payload.get("all_unacceptable"):
        return []
    if payload.get("tie") or payload.get("winner") is None:
        # A tied comparison names no responses; the pair is the one that was shown.
        if shown and len(shown) == 2:
            return [(min(shown), max(shown), 0)]
        return []
    return [(payload["winner"], payload["loser"], int(payload.get("strength") or 1))]


def _arena_votes(payload: dict, shown: list | None) -> list[Vote]:
    """A battle votes as a comparison of strength 1; "both bad" prefers neither and, like an
    all-unacceptable ranking, casts no vote."""
    if payload.get("both_bad"):
        return []
    return _comparison_votes({**payload, "strength": 1}, shown)


def _ranking_votes(payload: dict, shown: list | None) -> list[Vote]:
    """Every ordered pair of a ranking, strength 1; responses tied in a group vote a tie. An
    "all unacceptable" ranking orders nothing worth learning from: it casts no vote."""
    if payload.get("all_unacceptable"):
        return []
    ranking = payload["ranking"]
    order = [g[0] if type(g) is list and len(g) == 1 else g for g in ranking]
    if list not in map(type, order):  # no ties: the common case, by position
        return [(order[i], order[j], 1) for i, j in _ordered_pairs(len(order))]
    votes = []
    groups = [g if isinstance(g, list) else [g] for g in ranking]
    for i, better_group in enumerate(groups):
        for a, b in combinations(better_group, 2):
            votes.append((min(a, b), max(a, b), 0))
        for worse_group in groups[i + 1 :]:
            for better in better_group:
                for worse in worse_group:
                    votes.append((better, worse, 1))
    return votes


@lru_cache(maxsize=64)
def _ordered_pairs(n: int) -> tuple[tuple[int, int], ...]:
    return tuple(combinations(range(n), 2))


# --- Opinions and agreement per kind -------------------------------------------------------
# An opinion is what one judgment says about one unit of agreement: for kinds that vote, a
# response pair (which side won, or a tie: nominal); for ratings, the rated response (the
# score: ordinal). Opinions of different labelers on the same unit are compared.


def _sides(votes: list[Vote]) -> dict[tuple, str]:
    opinions = {}
    for better, worse, strength in votes:
        low, high = min(better, worse), max(better, worse)
        opinions[(low, high)] = "tie" if strength == 0 else ("low" if better == low else "high")
    return opinions


def _comparison_opinions(payload: dict, shown: list | None) -> dict[tuple, str]:
    if payload.get("all_unacceptable") and shown and len(shown) == 2:
        return {(min(shown), max(shown)): "both_bad"}
    return _sides(_comparison_votes(payload, shown))


def _arena_opinions(payload: dict, shown: list | None) -> dict[tuple, str]:
    if payload.get("both_bad") and shown and len(shown) == 2:
        return {(min(shown), max(shown)): "both_bad"}
    return _sides(_arena_votes(payload, shown))


def _ranking_opinions(payload: dict, shown: list | None) -> dict[tuple, str]:
    return _sides(_ranking_votes(payload, shown))


def _rating_opinions(payload: dict, shown: list | None) -> dict[tuple, int]:
    score = payload.get("score")
    return {(): score} if isinstance(score, int) else {}


def _agrees_with_the_majority(mine, others: list) -> bool | None:
    """Agreement with the others' clear majority; None when they split evenly (no consensus)."""
    top = Counter(others).most_common(2)
    if len(top) > 1 and top[0][1] == top[1][1]:
        return None
    return mine == top[0][0]


def _within_one_of_the_median(mine: int, others: list[int]) -> bool:
    """Scores are ordinal: within one point of the others' median agrees."""
    return abs(mine - median(others)) <= 1


# --- The table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KindRules:
    """The rules of one kind of task."""

    # How many responses a task of this kind shows (fewest, most).
    candidates: tuple[int, int]
    # The payload as sent -> as stored (ValidationError naming `payload.<field>`), given the ids
    # of the task's responses (sorted; empty when `needs_candidates` is false) and the
    # project's labels (None unless `needs_labels`).
    validate: Callable[[dict, list[int], Labels | None], dict]
    needs_candidates: bool = False
    needs_labels: bool = False
    # How a stored judgment votes for consensus and preference data; none: it casts no vote.
    votes: Callable[[dict, list | None], list[Vote]] | None = None
    # What it says about each unit of agreement, and whether an opinion agrees with those of
    # the others on the unit (None: they reach no consensus); none: it is not compared.
    opinions: Callable[[dict, list | None], dict[tuple, object]] | None = None
    agrees: Callable[[object, list], bool | None] | None = None


KINDS: dict[str, KindRules] = {
    TaskKind.WRITE_PROMPT: KindRules(candidates=(0, 0), validate=_validate_written_prompt),
    TaskKind.DEMONSTRATION: KindRules(candidates=(0, 0), validate=_validate_demonstration),
    TaskKind.RANK: KindRules(
        candidates=(2, 9),
        validate=_validate_ranking,
        needs_candidates=True,
        votes=_ranking_votes,
        opinions=_ranking_opinions,
        agrees=_agrees_with_the_majority,
    ),
    TaskKind.COMPARE: KindRules(
        candidates=(2, 2),
        validate=_validate_comparison,
        needs_candidates=True,
        needs_labels=True,
        votes=_comparison_votes,
        opinions=_comparison_opinions,
        agrees=_agrees_with_the_majority,
    ),
    TaskKind.RATE: KindRules(
        candidates=(1, 1),
        validate=_validate_rating,
        needs_labels=True,
        opinions=_rating_opinions,
        agrees=_within_one_of_the_median,
    ),
    # Two responses of two models (training.arena); the leaderboard reads its battles.
    TaskKind.ARENA: KindRules(
        candidates=(2, 2),
        validate=_validate_arena,
        needs_candidates=True,
        votes=_arena_votes,
        opinions=_arena_opinions,
        agrees=_agrees_with_the_majority,
    ),
}
VOTING_KINDS = [kind for kind, rules in KINDS.items() if rules.votes is not None]
COMPARED_KINDS = [kind for kind, rules in KINDS.items() if rules.opinions is not None]


def validate_payload(
    task: Task,
    payload,
    *,
    candidate_ids: list[int] | None = None,
    labels: Labels | None = None,
) -> dict:
    """Check a judgment against its task; return the payload as stored.

    `candidate_ids`: the task's candidates when the caller has them already (else read here).
    `labels`: the project's labels, for the kinds that read them, when the caller has them
    (else the task's project's: one small query when the project is not loaded with the task).
    """
    if not isinstance(payload, dict):
        raise ValidationError({"payload": "expected an object."})
    rules = KINDS.get(task.kind)
    if rules is None:
        raise ValidationError({"kind": f"unknown task kind {task.kind!r}."})
    if rules.needs_labels and labels is None:
        labels = labels_of_task(task)
    if not rules.needs_candidates:
        return rules.validate(payload, [], labels)
    if candidate_ids is None:
        candidate_ids = task.candidate_ids()
    return rules.validate(payload, sorted(candidate_ids), labels)


def labels_of_task(task: Task) -> Labels:
    """The labels of the task's project: its own when loaded, else only its config is read."""
    if Task.project.is_cached(task):
        return task.project.labels
    config = Project.objects.filter(pk=task.project_id).values_list("label_config", flat=True)
    return Project(label_config=config.first()).labels


def votes_of(kind: str, payload: dict, shown: list | None = None) -> list[Vote]:
    """(better, worse, strength) for every ordered pair a judgment states; strength 0 is a tie."""
    rules = KINDS.get(kind)
    if rules is None or rules.votes is None:
        return []
    return rules.votes(payload, shown)


def votes_per_voter(judgments: Iterable[tuple]) -> dict[tuple[int, int], dict[object, Vote]]:
    """{(low id, high id): {voter: vote}}: one vote per labeler per response pair, whatever the
    task type, for the consensus and the snapshots aggregated by it.

    `judgments` are rows of (annotation id, labeler id, kind, payload, shown order) in id
    order. A labeler who judged a pair more than once (a rank and a compare task of the same
    prompt, or two rounds) has one vote on it: their newest judgment's (the highest id, the
    last one submitted; a later tie withdraws an earlier preference). A judgment without a
    labeler (imported) is a voter of its own: nothing says two of them are one person."""
    pairs: dict[tuple[int, int], dict[object, Vote]] = {}
    for annotation_id, labeler, kind, payload, shown in judgments:
        voter = labeler if labeler is not None else ("annotation", annotation_id)
        for vote in votes_of(kind, payload, shown):
            better, worse, _ = vote
            pair = (better, worse) if better < worse else (worse, better)
            voters = pairs.setdefault(pair, {})
            voters.pop(voter, None)  # the newest vote goes last, as it was cast last
            voters[voter] = vote
    return pairs


def opinions_of(kind: str, payload: dict, shown: list | None = None) -> dict[tuple, object]:
    """{unit within the task: value} for every unit of agreement a judgment speaks to."""
    rules = KINDS.get(kind)
    if rules is None or rules.opinions is None:
        return {}
    return rules.opinions(payload, shown)


def agrees_with_consensus(kind: str, mine, others: list) -> bool | None:
    """Whether an opinion agrees with the consensus of the others' opinions on its unit; None
    when there is no consensus to agree with (too few others, or an even split)."""
    if len(others) < CONSENSUS_MIN_OTHERS:
        return None
    return KINDS[kind].agrees(mine, others)
