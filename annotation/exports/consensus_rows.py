"""Preference pairs ordered by a Bradley-Terry consensus version (`aggregate=bradley_terry`).

Which pairs: every response pair of a prompt in scope on which a counted judgment in scope (the
snapshot's filters: review, source, guideline version, tags, language) states a preference.
Each labeler has one vote per pair whatever the task type, their newest
(`rules.votes_per_voter`). Which side is `chosen`: the one the consensus version scores higher
(the version is the `consensus_version` filter, or the newest at build time; its number is in
the manifest). `margin` is the difference of the two Bradley-Terry scores (log-strengths),
`agreement` the share of the pair's voters whose vote is for the chosen side (a tie is a vote
for neither).

Dropped and counted in the manifest: a pair every voter tied, or that the version scores
equally (`ties_dropped`); a pair below `min_agreement` (`below_min_agreement`); a pair the
version has no score for, judged after it was computed (`consensus.pairs_not_in_consensus`:
compute a new version to include them).

The scores come from the whole project's counted judgments when the version was computed; the
snapshot's filters choose the pairs and the voters of `agreement`, not the scores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import groupby
from operator import itemgetter

from annotation import rules
from annotation.consensus import consensus_described, consensus_for
from annotation.exports import rows as R
from annotation.models import Response, SnapshotKind

_encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
_COLUMNS = ("id", "task__prompt_id", "kind", "payload", "guideline_version", "shown_order",
            "labeler_id")  # fmt: skip


def aggregate_refusals(project, kind: str, filters: dict) -> dict[str, str]:
    """Why a request's `aggregate` cannot be built, by filter name (empty when it can)."""
    if filters["aggregate"] != "bradley_terry":
        if filters["consensus_version"]:
            return {"filters.consensus_version": "applies only with aggregate=bradley_terry."}
        return {}
    if kind != SnapshotKind.PREFERENCE:
        return {"filters.aggregate": "bradley_terry applies only to preference snapshots."}
    if filters["pairs"] != "aggregate":
        return {
            "filters.aggregate": "bradley_terry orders the pairs of all judgments together; "
            "it cannot be combined with pairs=per_annotation."
        }
    if filters.get("round"):
        return {
            "filters.round": "a consensus version orders the pairs of every round together; "
            "a round's snapshot uses aggregate=votes."
        }
    if filters.get("unacceptable") == "vs_demonstration":
        return {
            "filters.unacceptable": "vs_demonstration adds votes to the summed votes; the "
            "consensus version has no place for them: use it with aggregate=votes."
        }
    from django.core.exceptions import ValidationError

    try:
        consensus_for(project, filters["consensus_version"])
    except ValidationError as error:
        return {name: " ".join(messages) for name, messages in error.message_dict.items()}
    return {}


def bradley_terry_rows(project, filters: dict, stats: R.BuildStats) -> Iterator[tuple[int, object]]:
    consensus = consensus_for(project, filters.get("consensus_version") or 0)
    not_in_consensus = 0
    stats.consensus = {**consensus_described(consensus), "pairs_not_in_consensus": 0}
    prompts = R.prompts_in_scope(project, filters)
    as_messages = R._as_messages(filters, prompts)
    min_agreement = float(filters.get("min_agreement") or 0)
    judgments = R._judgments(project, filters).filter(kind__in=rules.VOTING_KINDS)
    # A response with an excluding flag is never `chosen`, whatever the aggregation.
    flagged = R.FlaggedResponses(project, filters)
    stats.notes["flagged_not_chosen"] = 0
    for batch in R._judgment_batches(judgments, _COLUMNS):
        lo, hi = batch[0][1], batch[-1][1]
        excluded = flagged.between(lo, hi)
        texts = R.texts_by_id(
            Response.objects.filter(prompt__project=project, prompt_id__gte=lo, prompt_id__lte=hi)
        )
        if as_messages:
            by_id = R._prompts_between(prompts, lo, hi)
            texts.update(R._sides_between(lo, hi, project))
        else:
            by_id = R.texts_by_id(prompts.filter(id__gte=lo, id__lte=hi))
        counted = []
        for prompt_id, group in groupby(batch, itemgetter(1)):
            prompt = by_id.get(prompt_id)
            if prompt is None:  # filtered out (tags, language)
                continue
            group = list(group)
            counted += group
            scores = consensus.scores.get(str(prompt_id), {})
            by_pair = rules.votes_per_voter(
                (row[0], row[6], row[2], R._loads(row[3]), R._json(row[5])) for row in group
            )
            pairs = []
            for low, high in sorted(by_pair):
                votes = by_pair[(low, high)].values()
                if not any(strength for _, _, strength in votes):
                    stats.ties_dropped += 1
                    continue
                s_low, s_high = scores.get(str(low)), scores.get(str(high))
                if s_low is None or s_high is None:
                    not_in_consensus += 1
                    continue
                if s_low == s_high:
                    stats.ties_dropped += 1
                    continue
                chosen, rejected = (low, high) if s_low > s_high else (high, low)
                if chosen in excluded:
                    stats.notes["flagged_not_chosen"] += 1
                    continue
                agreeing = sum(1 for better, _, strength in votes if strength and better == chosen)
                if agreeing / len(votes) < min_agreement:
                    stats.below_agreement += 1
                    continue
                margin = round(abs(s_low - s_high), 6)
                pairs.append((chosen, rejected, margin, round(agreeing / len(votes), 6)))
            pairs = R.equal_texts_drop(pairs, texts.__getitem__, stats)
            if not pairs:
                continue
            if as_messages:
                messages = R.conversation(prompt)
                yield (
                    prompt_id,
                    [
                        {
                            "prompt": messages,
                            "chosen": R._side(texts[chosen]),
                            "rejected": R._side(texts[rejected]),
                            "margin": margin,
                            "agreement": agreement,
                        }
                        for chosen, rejected, margin, agreement in pairs
                    ],
                )
                continue
            lines = "".join(
                _encoder.encode(
                    {
                        "agreement": agreement,
                        "chosen": texts[chosen],
                        "margin": margin,
                        "prompt": prompt,
                        "rejected": texts[rejected],
                    }
                )
                + "\n"
                for chosen, rejected, margin, agreement in pairs
            )
            yield prompt_id, R.EncodedRows(lines.encode(), len(pairs))
        stats.saw_all(counted)
        stats.consensus["pairs_not_in_consensus"] = not_in_consensus
