"""Rows of a dataset snapshot, in TRL's exact formats, streamed from the database.

Every generator yields `(prompt_id, row)` in a deterministic order (by prompt id, then by the
ids inside it), reading the database in chunks of prompts so memory stays flat however large
the project is. The split (train/test) is decided by prompt by the caller, never by row, so a
prompt never appears on both sides.

Which judgments count: rank and compare annotations that are not rejected (pending and
approved, imported ones included), not superseded by a correction, and not marked "all
unacceptable". Preference pairs are aggregated per (prompt, response pair) over all the
judgments that order that pair (the consensus of the overlap): each vote is +strength for one
side, -strength for the other (a ranking's strength is 1, a tie is 0); the side with the
larger sum is `chosen`, a pair whose votes cancel out is a tie and is dropped (counted in the
manifest). `agreement` is the share of votes that agree with the chosen side, `margin` is the
mean signed strength towards it. With `pairs="per_annotation"` each judgment gives its own
rows instead (agreement 1.0).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from itertools import combinations

from django.db.models import QuerySet

from annotation.models import (
    Annotation,
    Prompt,
    Response,
    ReviewStatus,
    TaskKind,
)

CHUNK = 5000
_encode_str = json.encoder.encode_basestring  # the C encoder json uses with ensure_ascii=False
_encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))


class EncodedRow(dict):
    """A row that carries its canonical JSON line, built from pieces encoded once per chunk
    (a prompt repeats in every pair of its ranking, a response in K-1 pairs)."""

    __slots__ = ("line",)


def _judgments(project, filters: dict) -> QuerySet[Annotation]:
    qs = Annotation.objects.filter(task__project=project, superseded_by__isnull=True)
    if filters.get("review") == "approved":
        qs = qs.filter(review_status=ReviewStatus.APPROVED)
    else:
        qs = qs.exclude(review_status=ReviewStatus.REJECTED)
    if filters.get("source"):
        qs = qs.filter(source=filters["source"])
    if filters.get("guideline_version_min"):
        qs = qs.filter(guideline_version__gte=filters["guideline_version_min"])
    return qs


def prompts_in_scope(project, filters: dict) -> QuerySet[Prompt]:
    qs = Prompt.objects.filter(project=project)
    if filters.get("language"):
        qs = qs.filter(language=filters["language"])
    for tag in filters.get("tags") or ():
        # JSON containment is not on SQLite; a tag list is small, so match the JSON text.
        qs = qs.filter(tags__icontains=f'"{tag}"')
    return qs


def _prompt_chunks(prompts: QuerySet[Prompt]) -> Iterator[list[dict]]:
    last = 0
    base = prompts.order_by("id").values("id", "text", "messages", "metadata", "content_hash")
    while True:
        chunk = list(base.filter(id__gt=last)[:CHUNK])
        if not chunk:
            return
        yield chunk
        last = chunk[-1]["id"]


def _is_document(prompt: dict) -> bool:
    return bool((prompt.get("metadata") or {}).get("document"))


def conversation(prompt: dict) -> list[dict]:
    if prompt["messages"]:
        return [{"role": m["role"], "content": m["content"]} for m in prompt["messages"]]
    return [{"role": "user", "content": prompt["text"]}]


def _flat(prompt: dict) -> str:
    if prompt["messages"]:
        return "\n\n".join(m["content"] for m in prompt["messages"])
    return prompt["text"]


def _as_messages(filters: dict, prompts: QuerySet[Prompt]) -> bool:
    """Conversational rows for the whole snapshot when asked or when any prompt in it is a
    conversation (one Arrow column cannot mix text and message lists)."""
    if "_as_messages" in filters:
        return filters["_as_messages"]
    return bool(filters.get("conversational")) or any_conversational(prompts)


def any_conversational(prompts: QuerySet[Prompt]) -> bool:
    return prompts.filter(messages__isnull=False).exclude(messages=[]).exists()


class BuildStats:
    """Counters the caller reads for the manifest."""

    def __init__(self) -> None:
        self.ties_dropped = 0
        self.below_agreement = 0
        self.judgments = 0
        self.min_id: int | None = None
        self.max_id: int | None = None
        self.guideline_versions: set[int] = set()

    def saw(self, annotation_id: int, guideline_version: int | None) -> None:
        self.judgments += 1
        self.min_id = annotation_id if self.min_id is None else min(self.min_id, annotation_id)
        self.max_id = annotation_id if self.max_id is None else max(self.max_id, annotation_id)
        if guideline_version is not None:
            self.guideline_versions.add(guideline_version)


# --- pretrain / prompts ----------------------------------------------------------------------


def pretrain_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, dict]]:
    """Imported documents as they are, then each demonstration as prompt + reply."""
    demos = demonstration_rows(project, filters, stats)
    prompts = prompts_in_scope(project, filters)
    for chunk in _prompt_chunks(prompts):
        for prompt in chunk:
            if _is_document(prompt):
                yield prompt["id"], {"text": _flat(prompt)}
    for prompt, completion in demos:
        yield prompt["id"], {"text": _flat(prompt) + "\n\n" + completion}


def prompt_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, dict]]:
    prompts = prompts_in_scope(project, filters)
    as_messages = _as_messages(filters, prompts)
    for chunk in _prompt_chunks(prompts):
        for prompt in chunk:
            if _is_document(prompt):
                continue
            value = conversation(prompt) if as_messages else prompt["text"]
            yield prompt["id"], {"prompt": value}


# --- demonstrations: sft / instruction -------------------------------------------------------


def demonstration_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[dict, str]]:
    """(prompt, completion) for every demonstration judgment in scope, by prompt then id."""
    prompts = prompts_in_scope(project, filters)
    judgments = _judgments(project, filters).filter(kind=TaskKind.DEMONSTRATION)
    for chunk in _prompt_chunks(prompts):
        by_id = {p["id"]: p for p in chunk}
        rows = (
            judgments.filter(
                task__prompt_id__gte=chunk[0]["id"], task__prompt_id__lte=chunk[-1]["id"]
            )
            .order_by("task__prompt_id", "id")
            .values_list("id", "task__prompt_id", "payload", "guideline_version")
        )
        for annotation_id, prompt_id, payload, guideline_version in rows.iterator(chunk_size=CHUNK):
            if prompt_id not in by_id:  # in the id range but filtered out (tags, language)
                continue
            stats.saw(annotation_id, guideline_version)
            yield by_id[prompt_id], payload["text"]


def sft_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, dict]]:
    prompts = prompts_in_scope(project, filters)
    as_messages = _as_messages(filters, prompts)
    for prompt, completion in demonstration_rows(project, filters, stats):
        if as_messages:
            messages = conversation(prompt) + [{"role": "assistant", "content": completion}]
            yield prompt["id"], {"messages": messages}
        else:
            yield prompt["id"], {"prompt": prompt["text"], "completion": completion}


def instruction_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, dict]]:
    for prompt, completion in demonstration_rows(project, filters, stats):
        system = (prompt.get("metadata") or {}).get("system")
        messages = conversation(prompt)
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}] + messages
        messages.append({"role": "assistant", "content": completion})
        yield prompt["id"], {"messages": messages}


# --- preferences -----------------------------------------------------------------------------


def votes_of(kind: str, payload: dict, shown: list | None = None) -> Iterator[tuple[int, int, int]]:
    """(better, worse, strength) for every ordered pair a judgment states; strength 0 is a tie."""
    if kind == TaskKind.COMPARE:
        if payload.get("tie") or payload.get("winner") is None:
            # A tied comparison names no responses; the pair is the one that was shown.
            if shown and len(shown) == 2:
                yield min(shown), max(shown), 0
            return
        yield payload["winner"], payload["loser"], int(payload.get("strength") or 1)
    elif kind == TaskKind.RANK:
        if payload.get("all_unacceptable"):
            return
        groups = [g if isinstance(g, list) else [g] for g in payload["ranking"]]
        for i, better_group in enumerate(groups):
            for a, b in combinations(better_group, 2):
                yield min(a, b), max(a, b), 0
            for worse_group in groups[i + 1 :]:
                for better in better_group:
                    for worse in worse_group:
                        yield better, worse, 1


def preference_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, dict]]:
    prompts = prompts_in_scope(project, filters)
    as_messages = _as_messages(filters, prompts)
    per_annotation = filters.get("pairs") == "per_annotation"
    min_agreement = float(filters.get("min_agreement") or 0)
    judgments = _judgments(project, filters).filter(kind__in=[TaskKind.RANK, TaskKind.COMPARE])
    for chunk in _prompt_chunks(prompts):
        by_id = {p["id"]: p for p in chunk}
        # Id ranges, not IN lists: a chunk is a contiguous run of prompt ids, and a range keeps
        # the statement small and index-friendly however many rows the chunk has.
        lo, hi = chunk[0]["id"], chunk[-1]["id"]
        rows = list(
            judgments.filter(task__prompt_id__gte=lo, task__prompt_id__lte=hi)
            .order_by("task__prompt_id", "id")
            .values_list(
                "id", "task__prompt_id", "kind", "payload", "guideline_version", "shown_order"
            )
        )
        if not rows:
            continue
        texts = dict(
            Response.objects.filter(prompt_id__gte=lo, prompt_id__lte=hi, prompt__project=project)
            .values_list("id", "text")
            .iterator(chunk_size=CHUNK * 4)
        )
        encoded: dict = {}
        # (prompt, low id, high id) -> list of signed strengths from low's point of view
        tallies: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        for annotation_id, prompt_id, kind, payload, guideline_version, shown in rows:
            if prompt_id not in by_id:  # in the id range but filtered out (tags, language)
                continue
            stats.saw(annotation_id, guideline_version)
            for better, worse, strength in votes_of(kind, payload, shown):
                if per_annotation:
                    if strength == 0:
                        stats.ties_dropped += 1
                        continue
                    yield (
                        prompt_id,
                        _pair_row(
                            by_id[prompt_id],
                            texts,
                            better,
                            worse,
                            strength,
                            1.0,
                            as_messages,
                            encoded,
                        ),
                    )
                    continue
                low, high = min(better, worse), max(better, worse)
                sign = strength if better == low else -strength
                tallies[(prompt_id, low, high)].append(sign)
        for (prompt_id, low, high), signs in sorted(tallies.items()):
            total = sum(signs)
            if total == 0:
                stats.ties_dropped += 1
                continue
            chosen, rejected = (low, high) if total > 0 else (high, low)
            direction = 1 if total > 0 else -1
            agreeing = sum(1 for s in signs if s * direction > 0)
            agreement = agreeing / len(signs)
            if agreement < min_agreement:
                stats.below_agreement += 1
                continue
            margin = abs(total) / len(signs)
            yield (
                prompt_id,
                _pair_row(
                    by_id[prompt_id],
                    texts,
                    chosen,
                    rejected,
                    margin,
                    agreement,
                    as_messages,
                    encoded,
                ),
            )


def _pair_row(prompt, texts, chosen_id, rejected_id, margin, agreement, as_messages, encoded):
    margin, agreement = round(float(margin), 6), round(float(agreement), 6)
    if as_messages:
        chosen = [{"role": "assistant", "content": texts[chosen_id]}]
        rejected = [{"role": "assistant", "content": texts[rejected_id]}]
        return {
            "prompt": conversation(prompt),
            "chosen": chosen,
            "rejected": rejected,
            "margin": margin,
            "agreement": agreement,
        }
    row = EncodedRow(
        prompt=prompt["text"],
        chosen=texts[chosen_id],
        rejected=texts[rejected_id],
        margin=margin,
        agreement=agreement,
    )
    key = ("p", prompt["id"])
    if key not in encoded:
        encoded[key] = _encode_str(prompt["text"])
    for rid in (chosen_id, rejected_id):
        if rid not in encoded:
            encoded[rid] = _encode_str(texts[rid])
    # Sorted keys, compact separators: byte-identical to `canonical(row)`. Finite floats are
    # written by json as float.__repr__.
    row.line = (
        f'{{"agreement":{agreement!r},"chosen":{encoded[chosen_id]},'
        f'"margin":{margin!r},"prompt":{encoded[key]},'
        f'"rejected":{encoded[rejected_id]}}}'
    )
    return row


ROW_BUILDERS = {
    "pretrain": pretrain_rows,
    "sft": sft_rows,
    "instruction": instruction_rows,
    "prompts": prompt_rows,
    "preference": preference_rows,
}
