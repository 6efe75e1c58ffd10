"""Rows of a dataset snapshot, in TRL's exact formats, streamed from the database.

Every generator yields `(prompt_id, rows)`, the rows of one prompt, in a deterministic order (by
prompt id, then by the ids inside it), reading the database in batches of prompts so memory
stays flat however large the project is. The split (train/test) is decided by prompt by the
caller, never by row, so a prompt never appears on both sides. The generators of whole
snapshots are the `rows` of the kinds in `annotation.exports.kinds.SNAPSHOT_KINDS`.

Which judgments count, and how each kind votes, are the rules of `annotation.rules` (`counted`,
`votes_of`): pending and approved judgments, imported ones included, that no correction
superseded; an "all unacceptable" ranking casts no vote. Preference pairs are aggregated per
(prompt, response pair) over all the judgments that order that pair (the consensus of the
overlap): each vote is +strength for one side, -strength for the other (a ranking's strength is
1, a tie is 0); the side with the larger sum is `chosen`, a pair whose votes cancel out is a tie
and is dropped (counted in the manifest). `agreement` is the share of votes that agree with the
chosen side, `margin` is the mean signed strength towards it. With `pairs="per_annotation"` each
judgment gives its own rows instead (agreement 1.0).

Ratings and flags reach the datasets through the section at the end (`Rating`): `kto` rows are
rated responses; a response an excluding flag marks is never `chosen`; demonstrations are
filtered by rating (`min_rating`, `exclude_flagged`); "all unacceptable" rankings can be pairs
against a written demonstration (`unacceptable="vs_demonstration"`) and are counted otherwise.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import closing
from copy import copy
from itertools import chain, groupby
from operator import itemgetter
from statistics import median

from django.db import connections
from django.db.models import Func, Q, QuerySet, TextField

from annotation import rules
from annotation.exports.threads import prefetched
from annotation.imports.formats import tool_turn_text
from annotation.models import Annotation, Prompt, Response, ReviewStatus, Task, TaskKind

CHUNK = 5000
_encode_str = json.encoder.encode_basestring  # the C encoder json uses with ensure_ascii=False
_scan = json.JSONDecoder().scan_once  # the C scanner under json.loads, without its wrapper


def _loads(text: str):
    """`json.loads(text)`, twice as fast for the small payloads read once per judgment (the
    wrapper's checks cost more than the parsing); anything unusual goes to `json.loads`."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)  # leading whitespace, or not JSON: its error
    return value if end == len(text) else json.loads(text)


def _quoted(text: str) -> bytes:
    """A text as a JSON string in UTF-8, as `canonical` writes it."""
    return _encode_str(text).encode()


def _judgments(project, filters: dict) -> QuerySet[Annotation]:
    # Gold judgments score labelers against a known answer; they are never training data.
    qs = rules.counted(Annotation.objects.filter(task__project=project, task__is_gold=False))
    if not filters.get("arena"):
        # Arena battles rate models; they are preference data only when a snapshot asks.
        qs = qs.exclude(kind=TaskKind.ARENA)
    if filters.get("review") == "approved":
        qs = qs.filter(review_status=ReviewStatus.APPROVED)
    if filters.get("source"):
        qs = qs.filter(source=filters["source"])
    if filters.get("guideline_version_min"):
        qs = qs.filter(guideline_version__gte=filters["guideline_version_min"])
    if filters.get("round"):
        qs = qs.filter(task__round=filters["round"])
    return qs


def prompts_in_scope(project, filters: dict) -> QuerySet[Prompt]:
    qs = Prompt.objects.filter(project=project)
    if filters.get("round"):
        # A round's snapshot holds the prompts its tasks asked about (imported documents,
        # never asked, are no round's).
        asked = Task.objects.filter(project=project, round=filters["round"]).values("prompt_id")
        qs = qs.filter(id__in=asked)
    if filters.get("language"):
        qs = qs.filter(language=filters["language"])
    for tag in filters.get("tags") or ():
        # JSON containment is not on SQLite; a tag list is small, so match the JSON text.
        qs = qs.filter(tags__icontains=f'"{tag}"')
    return qs


def raw_rows(
    queryset: QuerySet, *, stream: bool = False, size: int = CHUNK, connection=None
) -> Iterator[list]:
    """The queryset's rows as the database driver returns them, in lists of up to `size`.

    No model converter runs per value: JSON columns stay text and are decoded only where a row
    needs them (most prompts have no messages and empty metadata). `stream=True` reads through
    a server-side cursor where the database has them, so memory stays flat however many rows.
    `connection` is the queryset's own by default (pass it from another thread).
    """
    connection = connection or connections[queryset.db]
    sql, params = queryset.query.get_compiler(connection=connection).as_sql()
    server_side = stream and not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
    with connection.chunked_cursor() if server_side else connection.cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(size):
            yield rows


def _json(text):
    return json.loads(text) if text is not None else None


def _prompt_dict(pk: int, text: str, messages: str | None, metadata: str | None) -> dict:
    return {
        "id": pk,
        "text": text,
        "messages": _json(messages),
        "metadata": {} if metadata in (None, "{}") else json.loads(metadata),
    }


_PROMPT_COLUMNS = ("id", "text", "messages", "metadata")


def _prompt_chunks(prompts: QuerySet[Prompt]) -> Iterator[list[dict]]:
    last = 0
    base = prompts.order_by("id").values_list(*_PROMPT_COLUMNS)
    while True:
        page = base.filter(id__gt=last)[:CHUNK]
        chunk = [_prompt_dict(*row) for row in chain.from_iterable(raw_rows(page))]
        if not chunk:
            return
        yield chunk
        last = chunk[-1]["id"]


def _prompts_between(prompts: QuerySet[Prompt], lo: int, hi: int, connection=None) -> dict:
    """The prompts in scope with ids from lo to hi, by id."""
    page = prompts.filter(id__gte=lo, id__lte=hi).order_by().values_list(*_PROMPT_COLUMNS)
    rows = chain.from_iterable(raw_rows(page, connection=connection))
    return {row[0]: _prompt_dict(*row) for row in rows}


def _judgment_batches(
    judgments: QuerySet[Annotation], columns: tuple[str, ...], connection=None
) -> Iterator[list]:
    """The judgments in scope ordered by prompt then id, in batches of about CHUNK rows that
    hold every judgment of their prompts.

    One query for the whole snapshot, not one per chunk of prompts: joined to a chunk's tasks,
    annotations are read by PostgreSQL with a scan of every annotation in the database each
    time (quadratic in the project's size)."""
    ordered = judgments.order_by("task__prompt_id", "id").values_list(*columns)
    prompt_of = itemgetter(columns.index("task__prompt_id"))
    pending: list = []
    for rows in raw_rows(ordered, stream=True, connection=connection):
        pending += rows
        if len(pending) >= CHUNK:
            # Cut before the first row of the last prompt, whose judgments may go on.
            cut = bisect_left(pending, prompt_of(pending[-1]), key=prompt_of)
            if cut:
                yield pending[:cut]
                pending = pending[cut:]
    if pending:
        yield pending


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


# A prompt given as a list of messages (not an empty one).
CONVERSATIONAL = Q(messages__isnull=False) & ~Q(messages=[])


def any_conversational(prompts: QuerySet[Prompt]) -> bool:
    return prompts.filter(CONVERSATIONAL).exists()


class BuildStats:
    """Counters the caller reads for the manifest."""

    def __init__(self) -> None:
        self.ties_dropped = 0
        self.below_agreement = 0
        self.judgments = 0
        self.min_id: int | None = None
        self.max_id: int | None = None
        self.guideline_versions: set[int] = set()
        # Set by `aggregate=bradley_terry`: the consensus version the pairs were ordered by.
        self.consensus: dict | None = None
        # What a kind's builder adds to the manifest (the signals it counted).
        self.notes: dict[str, object] = {}

    def saw_all(self, judgments: list[tuple]) -> None:
        """Judgments as rows of (id, prompt id, kind, payload, guideline version, ...)."""
        if not judgments:
            return
        ids = [row[0] for row in judgments]
        low, high = min(ids), max(ids)
        self.judgments += len(ids)
        self.min_id = low if self.min_id is None else min(self.min_id, low)
        self.max_id = high if self.max_id is None else max(self.max_id, high)
        self.guideline_versions.update(row[4] for row in judgments if row[4] is not None)

    def saw(self, annotation_id: int, guideline_version: int | None) -> None:
        self.judgments += 1
        self.min_id = annotation_id if self.min_id is None else min(self.min_id, annotation_id)
        self.max_id = annotation_id if self.max_id is None else max(self.max_id, annotation_id)
        if guideline_version is not None:
            self.guideline_versions.add(guideline_version)


# --- pretrain / prompts ----------------------------------------------------------------------


def pretrain_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, list]]:
    """Imported documents as they are, then each demonstration as prompt + reply."""
    demos = demonstration_rows(project, filters, stats)
    prompts = prompts_in_scope(project, filters)
    for chunk in _prompt_chunks(prompts):
        for prompt in chunk:
            if _is_document(prompt):
                yield prompt["id"], [{"text": _flat(prompt)}]
    for prompt, completion in demos:
        yield prompt["id"], [{"text": _flat(prompt) + "\n\n" + completion}]


def prompt_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, list]]:
    prompts = prompts_in_scope(project, filters)
    as_messages = _as_messages(filters, prompts)
    for chunk in _prompt_chunks(prompts):
        for prompt in chunk:
            if _is_document(prompt):
                continue
            value = conversation(prompt) if as_messages else prompt["text"]
            yield prompt["id"], [{"prompt": value}]


# --- demonstrations: sft / instruction -------------------------------------------------------


def demonstration_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[dict, str]]:
    """(prompt, completion) for every demonstration judgment in scope, by prompt then id; with
    `min_rating` or `exclude_flagged`, those whose ratings pass (`DemonstrationRatings`)."""
    prompts = prompts_in_scope(project, filters)
    rated = DemonstrationRatings(project, filters, stats)
    for batch in _judgment_batches(
        _judgments(project, filters).filter(kind=TaskKind.DEMONSTRATION),
        ("id", "task__prompt_id", "payload", "guideline_version"),
    ):
        by_id = _prompts_between(prompts, batch[0][1], batch[-1][1])
        kept = rated.kept(batch, by_id) if rated.active else None
        for annotation_id, prompt_id, payload, guideline_version in batch:
            if prompt_id not in by_id:  # filtered out (tags, language)
                continue
            if kept is not None and annotation_id not in kept:
                continue
            stats.saw(annotation_id, guideline_version)
            yield by_id[prompt_id], json.loads(payload)["text"]


def tool_calling_row(prompt: dict, completion: str) -> dict | None:
    """An imported TRL tool calling conversation as it came (`metadata.trl`: the turns before
    the reply, a tool calling reply, the `tools` column), ending with `completion`; None for
    any other prompt. The reply is the imported one while the completion is its text."""
    trl = (prompt.get("metadata") or {}).get("trl")
    if not isinstance(trl, dict) or not isinstance(trl.get("messages"), list):
        return None
    reply = trl.get("reply")
    if not (isinstance(reply, dict) and tool_turn_text(reply) == completion):
        reply = {"role": "assistant", "content": completion}
    row = {"messages": [*trl["messages"], reply]}
    if trl.get("tools") is not None:
        row["tools"] = trl["tools"]
    return row


def sft_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, list]]:
    prompts = prompts_in_scope(project, filters)
    as_messages = _as_messages(filters, prompts)
    for prompt, completion in demonstration_rows(project, filters, stats):
        if as_messages:
            row = tool_calling_row(prompt, completion)
            if row is None:
                messages = conversation(prompt) + [{"role": "assistant", "content": completion}]
                row = {"messages": messages}
            yield prompt["id"], [row]
        else:
            yield prompt["id"], [{"prompt": prompt["text"], "completion": completion}]


def instruction_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, list]]:
    for prompt, completion in demonstration_rows(project, filters, stats):
        if (row := tool_calling_row(prompt, completion)) is not None:
            yield prompt["id"], [row]
            continue
        system = (prompt.get("metadata") or {}).get("system")
        messages = conversation(prompt)
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}] + messages
        messages.append({"role": "assistant", "content": completion})
        yield prompt["id"], [{"messages": messages}]


# --- preferences -----------------------------------------------------------------------------


PAIR_COLUMNS = ["agreement", "chosen", "margin", "prompt", "rejected"]
ARROW_ORDER = ("prompt", "chosen", "rejected", "margin", "agreement")  # Parquet's, as it was


class EncodedRows:
    """The preference rows of one prompt as their canonical JSON lines in UTF-8, each ending in
    a newline: what is hashed and written, and what Parquet files are read from."""

    __slots__ = ("lines", "count")

    columns = PAIR_COLUMNS

    def __init__(self, lines: bytes, count: int):
        self.lines = lines
        self.count = count

    def __len__(self) -> int:
        return self.count


class _Shape:
    """What one prompt's votes give, over its response ids relabelled 0..n-1 in id order: the
    pairs (chosen, rejected, margin, agreement) in row order, the ties and the pairs below the
    minimum agreement that were dropped, and a template of the canonical lines with `pick`,
    which takes the values for its slots from [quoted texts of the ids..., quoted prompt]."""

    __slots__ = ("pairs", "ties", "below", "template", "pick")

    def __init__(self, votes: tuple, per_annotation: bool, min_agreement: float):
        self.ties = self.below = 0
        self.pairs = []
        prompt = 1 + max((max(b, w) for b, w, _ in votes), default=-1)  # the slot after the ids
        for chosen, rejected, total, agreeing, count in self._consensus(
            votes, per_annotation, min_agreement
        ):
            margin = round(float(total / count), 6)
            agreement = round(float(agreeing / count), 6)
            self.pairs.append((chosen, rejected, margin, agreement))
        self.template, self.pick = _line_template(self.pairs, prompt)

    def _consensus(self, votes, per_annotation: bool, min_agreement: float):
        """(chosen, rejected, sum of strengths towards chosen, votes for it, votes) per row."""
        if per_annotation:
            for better, worse, strength in votes:
                if strength == 0:
                    self.ties += 1
                else:
                    yield better, worse, strength, 1, 1
            return
        # (low id, high id) -> [sum of signed strengths from low's side, votes, for low, for high]
        tallies: dict[tuple[int, int], list[int]] = {}
        for better, worse, strength in votes:
            if better <= worse:
                key, sign = (better, worse), strength
            else:
                key, sign = (worse, better), -strength
            tally = tallies.setdefault(key, [0, 0, 0, 0])
            tally[0] += sign
            tally[1] += 1
            tally[2] += sign > 0
            tally[3] += sign < 0
        for key in sorted(tallies):
            total, count, for_low, for_high = tallies[key]
            if total == 0:
                self.ties += 1
                continue
            if total > 0:
                (chosen, rejected), agreeing = key, for_low
            else:
                (rejected, chosen), agreeing, total = key, for_high, -total
            if agreeing / count < min_agreement:
                self.below += 1
                continue
            yield chosen, rejected, total, agreeing, count


def _line_template(pairs: list, prompt: int) -> tuple[bytes, itemgetter | None]:
    """The canonical lines of `pairs` as a template, and `pick`, which takes the values of its
    slots from [quoted texts of the ids..., quoted prompt] (`prompt` is that last slot)."""
    slots: list[int] = []
    lines: list[str] = []
    for chosen, rejected, margin, agreement in pairs:
        # Sorted keys, compact separators: byte-identical to `canonical(row)`; json writes
        # finite floats as float.__repr__.
        lines.append(
            f'{{"agreement":{agreement!r},"chosen":%s,"margin":{margin!r},'
            f'"prompt":%s,"rejected":%s}}\n'
        )
        slots += (chosen, prompt, rejected)
    # Bytes: formatting bytes is twice as fast as str, and they are what is hashed.
    return "".join(lines).encode(), itemgetter(*slots) if slots else None


_COMPARE = TaskKind.COMPARE.value
# Kinds whose tie names no responses: the pair shown is the one tied.
_PAIRED = {_COMPARE, TaskKind.ARENA.value}
_RANK = TaskKind.RANK.value
SHAPE_CACHE_VOTES = 200_000


def _relabelled_votes(group: list, extra: list | None = None) -> tuple[tuple, list[int]]:
    """A prompt's judgments (rows of id, prompt id, kind, payload, version, shown order) as
    (their votes with the response ids relabelled 0..n-1 in id order, those ids); `extra`:
    votes of the prompt's from elsewhere (see `PreferenceSignals.extra_votes`), after the judgments'."""
    votes = []
    for row in group:
        kind = row[2]
        shown = _json(row[5]) if kind in _PAIRED else None
        votes += rules.votes_of(kind, _loads(row[3]), shown)
    if extra:
        votes += extra
    ids = sorted({vote[0] for vote in votes} | {vote[1] for vote in votes})
    local = {pk: i for i, pk in enumerate(ids)}
    return tuple([(local[better], local[worse], s) for better, worse, s in votes]), ids


_INT = {int}


def _shape_key(group: list) -> tuple[tuple, list[int]]:
    """(a key of the prompt's shape, the response ids it relabels), as `_relabelled_votes`
    gives, with a shortcut for the commonest case, one ranking without ties (a third of the
    cost): it is keyed by the ranking's ids relabelled, a tuple of numbers (never one of the
    vote triples `_relabelled_votes` keys by), which decides its votes."""
    if len(group) == 1 and group[0][2] == _RANK:
        payload = _loads(group[0][3])
        ranking = payload.get("ranking")
        if type(ranking) is list and not payload.get("all_unacceptable"):
            order = [g[0] if type(g) is list and len(g) == 1 else g for g in ranking]
            if {*map(type, order)} <= _INT and len(set(order)) == len(order) > 1:
                ids = sorted(order)
                return tuple(map(ids.index, order)), ids
    return _relabelled_votes(group)


def preference_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, list]]:
    """Rows by prompt: `EncodedRows` for text prompts, lists of row dicts for conversations."""
    prompts = prompts_in_scope(project, filters)
    as_messages = _as_messages(filters, prompts)
    per_annotation = filters.get("pairs") == "per_annotation"
    min_agreement = float(filters.get("min_agreement") or 0)
    judgments = _judgments(project, filters).filter(kind__in=rules.VOTING_KINDS)
    connection = connections[judgments.db]
    # PostgreSQL quotes the texts as JSON strings itself (in C, in its own process) when only the
    # lines are needed: `to_json(text)` escapes exactly as `_quoted` does (a test compares
    # them over every code point).
    quoted = connection.vendor == "postgresql" and not as_messages
    signals = PreferenceSignals(project, filters, stats)
    reads = prefetched(
        signals.reads(
            _preference_reads(project, prompts, judgments, as_messages, quoted, connection),
            connection,
        ),
        connection,
    )
    # Votes relabelled by id order -> their shape. Prompts share a handful of shapes (one
    # ranking of K responses without ties has K! of them), so the consensus, the numbers and
    # the line template are worked out once per shape and each prompt is one formatting.
    shapes: dict[tuple, _Shape] = {}
    cached_votes = 0  # bounds the cache's memory: prompts with many judgments rarely share one
    with closing(reads):
        for batch, by_id, texts, found in reads:
            counted = []
            for prompt_id, group in groupby(batch, itemgetter(1)):
                prompt = by_id.get(prompt_id)
                if prompt is None:  # filtered out (tags, language)
                    continue
                group = list(group)
                counted += group
                extra = signals.extra_votes(found, prompt_id, group)
                key, ids = _relabelled_votes(group, extra) if extra else _shape_key(group)
                shape = shapes.get(key)
                if shape is None:
                    if cached_votes > SHAPE_CACHE_VOTES:
                        shapes.clear()
                        cached_votes = 0
                    votes = _relabelled_votes(group, extra)[0]
                    shape = shapes[key] = _Shape(votes, per_annotation, min_agreement)
                    cached_votes += len(votes)
                if shape.ties or shape.below:
                    stats.ties_dropped += shape.ties
                    stats.below_agreement += shape.below
                if found.excluded:
                    shape = signals.never_chosen(shape, ids, found.excluded)
                values = [texts[i] for i in ids]
                shape = without_equal_texts(shape, values, stats)
                if not shape.pairs:
                    continue
                if as_messages:
                    yield prompt_id, _conversational_pairs(prompt, texts, ids, shape.pairs)
                    continue
                values.append(prompt)
                if not quoted:
                    values = list(map(_quoted, values))
                lines = shape.template % shape.pick(values)
                yield prompt_id, EncodedRows(lines, len(shape.pairs))
            stats.saw_all(counted)


def equal_texts_drop(pairs: list, text_of, stats: BuildStats) -> list:
    """`pairs` (chosen, rejected, ...) without those whose two texts are the same: such a pair
    teaches a reward model nothing and DPO a contradiction, whatever the judgments said (two
    samples of a model are often identical). Counted in the manifest's `equal_texts_dropped`."""
    kept = [pair for pair in pairs if text_of(pair[0]) != text_of(pair[1])]
    if len(kept) != len(pairs):
        stats.notes["equal_texts_dropped"] = (
            stats.notes.get("equal_texts_dropped", 0) + len(pairs) - len(kept)
        )
    return kept


def without_equal_texts(shape: _Shape, values: list, stats: BuildStats) -> _Shape:
    """`shape` without its pairs of equal texts (`equal_texts_drop`); `values`: the texts of its
    ids in id order. Texts compare equal as JSON strings exactly when they do as strings, so
    the quoted texts serve as well. A side of several messages is a list: compared whole."""
    keys = {v if isinstance(v, (str, bytes)) else json.dumps(v, sort_keys=True) for v in values}
    if len(keys) == len(values):  # the common case: nothing to drop, no copy
        return shape
    pairs = equal_texts_drop(shape.pairs, values.__getitem__, stats)
    if len(pairs) == len(shape.pairs):
        return shape
    kept = copy(shape)
    kept.pairs = pairs
    kept.template, kept.pick = _line_template(pairs, len(values))
    return kept


def _preference_reads(project, prompts, judgments, as_messages: bool, quoted: bool, connection):
    """(judgments, prompts by id, response texts by id) for each batch of prompts; the texts
    as JSON strings in UTF-8 when `quoted`."""
    for batch in _judgment_batches(
        judgments,
        ("id", "task__prompt_id", "kind", "payload", "guideline_version", "shown_order"),
        connection,
    ):
        lo, hi = batch[0][1], batch[-1][1]
        texts = texts_by_id(
            Response.objects.filter(
                # The range is stated on both tables so that PostgreSQL reads both by index (a
                # join on the project alone scans every prompt of the database per batch).
                prompt_id__gte=lo,
                prompt_id__lte=hi,
                prompt__in=Prompt.objects.filter(project=project, id__gte=lo, id__lte=hi),
            ),
            connection,
            quoted=quoted,
        )
        if as_messages:
            by_id = _prompts_between(prompts, lo, hi, connection)
            texts.update(_sides_between(lo, hi, project, connection))
        else:
            by_id = texts_by_id(prompts.filter(id__gte=lo, id__lte=hi), connection, quoted=quoted)
        yield batch, by_id, texts


def _sides_between(lo: int, hi: int, project, connection=None) -> dict[int, list[dict]]:
    """The responses to the prompts from lo to hi that are several messages (an imported TRL
    side after `extract_prompt`'s prompt: `metadata.messages`), by id."""
    responses = Response.objects.filter(
        prompt_id__gte=lo,
        prompt_id__lte=hi,
        prompt__in=Prompt.objects.filter(project=project, id__gte=lo, id__lte=hi),
        metadata__has_key="messages",
    ).values_list("id", "metadata")
    return {
        pk: (json.loads(metadata) if isinstance(metadata, str) else metadata)["messages"]
        for pk, metadata in chain.from_iterable(raw_rows(responses, connection=connection))
    }


def _side(value) -> list[dict]:
    """A response as the messages of a conversational row: its text as the assistant's one
    message, or the several messages it was imported as."""
    return value if isinstance(value, list) else [{"role": "assistant", "content": value}]


def llamafactory_pair(row: dict) -> dict | None:
    """A conversational preference row as LLaMA-Factory's sharegpt converter takes a pair
    (src/llamafactory/data/converter.py, SharegptDatasetConverter: `chosen` and `rejected`
    each one message object, the prompt's messages under `messages`); None for a side of
    several messages, which it cannot take."""
    if len(row["chosen"]) != 1 or len(row["rejected"]) != 1:
        return None
    return {"messages": row["prompt"], "chosen": row["chosen"][0], "rejected": row["rejected"][0]}


def _conversational_pairs(prompt: dict, texts: dict, ids: list[int], pairs: list) -> list[dict]:
    messages = conversation(prompt)
    return [
        {
            "prompt": messages,
            "chosen": _side(texts[ids[chosen]]),
            "rejected": _side(texts[ids[rejected]]),
            "margin": margin,
            "agreement": agreement,
        }
        for chosen, rejected, margin, agreement in pairs
    ]


def texts_by_id(queryset: QuerySet, connection=None, quoted: bool = False) -> dict:
    """id -> `text` for the rows of `queryset`; with `quoted` (PostgreSQL only), id -> the
    text as a JSON string in UTF-8, quoted by the database."""
    if not quoted:
        texts = queryset.order_by().values_list("id", "text")
        return dict(chain.from_iterable(raw_rows(texts, connection=connection)))
    texts = queryset.order_by().annotate(
        quoted=Func("text", template="to_json(%(expressions)s)::text", output_field=TextField())
    )
    rows = chain.from_iterable(raw_rows(texts.values_list("id", "quoted"), connection=connection))
    return {pk: text.encode() for pk, text in rows}


# --- ratings, flags and "all unacceptable" -----------------------------------------------------
# A rate judgment judges the one response of its task. Several ratings of one response are
# read together (`Rating`): its score is their median, and it is flagged when any of them set a
# flag that the project says excludes a response from datasets (annotation.labels). A
# demonstration is rated by the ratings of the response it wrote (`Response.metadata.annotation`
# names its judgment); a correction wrote no response, so nobody rated its text and it is
# unrated.


class Rating:
    """What the ratings of one response say together."""

    __slots__ = ("scores", "flags")

    def __init__(self) -> None:
        self.scores: list[int] = []
        self.flags: set[str] = set()

    def add(self, payload: dict) -> None:
        if isinstance(payload.get("score"), int):
            self.scores.append(payload["score"])
        self.flags.update(payload.get("flags") or ())

    @property
    def score(self) -> float | None:
        return median(self.scores) if self.scores else None

    def good(self, labels) -> bool:
        """KTO's label: the median reaches the project's threshold and no excluding flag."""
        score = self.score
        return score is not None and score >= labels.threshold and not labels.excludes(self.flags)


def signal_ratings(project, filters: dict) -> QuerySet[Annotation]:
    """The ratings that weigh other work (demonstrations in SFT rows, the chosen side of
    pairs): counted rate judgments, approved ones only under `review=approved`. The other
    filters (source, guideline version) choose the judgments exported, not these."""
    return _judgments(
        project, {"review": filters.get("review"), "round": filters.get("round")}
    ).filter(kind=TaskKind.RATE)


def ratings_between(ratings: QuerySet, lo: int, hi: int, connection=None) -> dict[int, Rating]:
    """Response id -> its `Rating`, for the rated responses to the prompts with ids lo..hi."""
    rows = (
        ratings.filter(task__prompt_id__gte=lo, task__prompt_id__lte=hi)
        .order_by()
        .values_list("task__candidates", "payload")
    )
    by_response: dict[int, Rating] = {}
    for response_id, payload in chain.from_iterable(raw_rows(rows, connection=connection)):
        if response_id is not None:
            by_response.setdefault(response_id, Rating()).add(_loads(payload))
    return by_response


def written_between(project, lo: int, hi: int, connection=None) -> dict[int, int]:
    """Demonstration judgment id -> the id of the response it wrote, for prompts lo..hi."""
    responses = (
        Response.objects.filter(
            prompt_id__gte=lo,
            prompt_id__lte=hi,
            prompt__in=Prompt.objects.filter(project=project, id__gte=lo, id__lte=hi),
            metadata__has_key="annotation",
        )
        .order_by()
        .values_list("id", "metadata")
    )
    written = {}
    for pk, metadata in chain.from_iterable(raw_rows(responses, connection=connection)):
        annotation = _loads(metadata).get("annotation")
        if type(annotation) is int:
            written[annotation] = pk
    return written


class DemonstrationRatings:
    """The rating filters of demonstration rows (sft, instruction, pretrain): `min_rating`
    (the median of the ratings of the response it wrote is at least this; an unrated one is
    left out) and `exclude_flagged` (no rating set an excluding flag; unrated ones stay)."""

    def __init__(self, project, filters: dict, stats: BuildStats):
        self.project = project
        self.labels = project.labels
        self.min_rating = filters.get("min_rating")
        self.exclude_flagged = bool(filters.get("exclude_flagged"))
        self.active = self.min_rating is not None or self.exclude_flagged
        self.ratings = signal_ratings(project, filters)
        if self.active:
            self.counts = stats.notes["rating_filter"] = {
                "kept": 0,
                "flagged": 0,
                "unrated": 0,
                "below_min_rating": 0,
            }

    def kept(self, batch: list, in_scope: dict) -> set[int]:
        """The ids of the demonstrations of `batch` (rows of id, prompt id, ...) that pass."""
        lo, hi = batch[0][1], batch[-1][1]
        written = written_between(self.project, lo, hi)
        ratings = ratings_between(self.ratings, lo, hi)
        kept = set()
        for row in batch:
            if row[1] not in in_scope:
                continue
            response = written.get(row[0])
            rating = ratings.get(response) if response is not None else None
            if self.exclude_flagged and rating is not None and self.labels.excludes(rating.flags):
                self.counts["flagged"] += 1
            elif self.min_rating is not None and (rating is None or rating.score is None):
                self.counts["unrated"] += 1
            elif self.min_rating is not None and rating.score < self.min_rating:
                self.counts["below_min_rating"] += 1
            else:
                self.counts["kept"] += 1
                kept.add(row[0])
        return kept


class _Found:
    """What one batch of prompts holds beside its votes: the ids of the responses an excluding
    flag keeps out of `chosen`, and each prompt's written demonstrations (response ids), read
    only when the batch has an "all unacceptable" ranking."""

    __slots__ = ("excluded", "demonstrations", "unacceptable")

    def __init__(
        self, excluded: set[int], demonstrations: dict[int, list[int]], unacceptable: bool
    ):
        self.excluded = excluded
        self.demonstrations = demonstrations
        self.unacceptable = unacceptable  # whether any ranking of the batch is one


_MAY_BE_UNACCEPTABLE = {_RANK, _COMPARE}


def _maybe_unacceptable(row) -> bool:
    # A cheap look at the payload's text first: only these rows are parsed.
    return (
        row[2] in _MAY_BE_UNACCEPTABLE
        and "true" in row[3]
        and _loads(row[3]).get("all_unacceptable") is True
    )


def _rejected_of(row) -> list[int]:
    """The responses an "all unacceptable" judgment rejected: a ranking's, or the pair a
    comparison was shown."""
    payload = _loads(row[3])
    if row[2] == _COMPARE:
        return list(_json(row[5]) or [])
    return [
        r for group in payload["ranking"] for r in (group if isinstance(group, list) else [group])
    ]


class FlaggedResponses:
    """The responses that a rating with one of the project's excluding flags keeps from being
    `chosen`: the one rule of every preference aggregation (summed votes, the consensus)."""

    def __init__(self, project, filters: dict):
        self.labels = project.labels
        self.ratings = signal_ratings(project, filters)
        # Read once: without ratings (most projects) no batch looks for flags.
        self.matter = bool(self.labels.excluding) and self.ratings.exists()

    def between(self, lo: int, hi: int, connection=None) -> set[int]:
        """The flagged responses to the prompts with ids lo..hi."""
        if not self.matter:
            return set()
        ratings = ratings_between(self.ratings, lo, hi, connection)
        return {pk for pk, rating in ratings.items() if self.labels.excludes(rating.flags)}


class PreferenceSignals:
    """Ratings and "all unacceptable" rankings in preference pairs.

    A response with an excluding flag is never `chosen`: its pairs are dropped (counted in the
    manifest's `flagged_not_chosen`); as `rejected` it stays. An "all unacceptable" ranking (or
    comparison: neither acceptable) orders nothing among its responses; with `unacceptable="vs_demonstration"` each of them
    loses a vote (strength 1) to every written demonstration of the same prompt, aggregated with
    the prompt's other votes. The manifest's `unacceptable` counts such rankings, those exported
    against a demonstration and those whose prompt has none."""

    def __init__(self, project, filters: dict, stats: BuildStats):
        self.project = project
        self.against = filters.get("unacceptable") == "vs_demonstration"
        self.flagged = FlaggedResponses(project, filters)
        # A round's snapshot pairs its rankings against the demonstrations of the same round
        # (a better answer is written into the round of the task it answers).
        self.demonstration_judgments = _judgments(
            project, {"review": filters.get("review"), "round": filters.get("round")}
        ).filter(kind=TaskKind.DEMONSTRATION)
        stats.notes["flagged_not_chosen"] = 0
        self.unacceptable = stats.notes["unacceptable"] = {
            "rankings": 0,
            "comparisons": 0,
            "against_demonstration": 0,
            "without_demonstration": 0,
        }
        self.stats = stats

    def reads(self, reads, connection):
        """`_preference_reads` with a `_Found` added to each batch (on the reading thread)."""
        for batch, by_id, texts in reads:
            lo, hi = batch[0][1], batch[-1][1]
            excluded = self.flagged.between(lo, hi, connection)
            demonstrations: dict[int, list[int]] = {}
            unacceptable = any(_maybe_unacceptable(row) for row in batch)
            if unacceptable:
                demonstrations = self._demonstrations_between(lo, hi, connection)
            yield batch, by_id, texts, _Found(excluded, demonstrations, unacceptable)

    def _demonstrations_between(self, lo: int, hi: int, connection) -> dict[int, list[int]]:
        judgments = (
            self.demonstration_judgments.filter(task__prompt_id__gte=lo, task__prompt_id__lte=hi)
            .order_by()
            .values_list("id", "task__prompt_id")
        )
        written = written_between(self.project, lo, hi, connection)
        by_prompt: dict[int, list[int]] = {}
        for pk, prompt_id in chain.from_iterable(raw_rows(judgments, connection=connection)):
            if pk in written:
                by_prompt.setdefault(prompt_id, []).append(written[pk])
        return {prompt_id: sorted(ids) for prompt_id, ids in by_prompt.items()}

    def extra_votes(self, found: _Found, prompt_id: int, group: list) -> list | None:
        """The votes of the prompt's "all unacceptable" rankings and comparisons against its
        demonstrations."""
        if not found.unacceptable:  # the common case: one look per prompt
            return None
        rows = [row for row in group if _maybe_unacceptable(row)]
        if not rows:
            return None
        unacceptable = [_rejected_of(row) for row in rows]
        counts = self.unacceptable
        compared = sum(1 for row in rows if row[2] == _COMPARE)
        counts["rankings"] += len(rows) - compared
        counts["comparisons"] += compared
        demonstrations = found.demonstrations.get(prompt_id)
        if not demonstrations:
            counts["without_demonstration"] += len(unacceptable)
            return None
        if not self.against:
            return None
        counts["against_demonstration"] += len(unacceptable)
        votes = []
        for rejected in unacceptable:
            for response in rejected:
                if response not in demonstrations:
                    votes += [(written, response, 1) for written in demonstrations]
        return votes

    def never_chosen(self, shape: _Shape, ids: list[int], excluded: set[int]) -> _Shape:
        """`shape` without the pairs whose chosen response is in `excluded`."""
        banned = {i for i, pk in enumerate(ids) if pk in excluded}
        if not banned:
            return shape
        pairs = [pair for pair in shape.pairs if pair[0] not in banned]
        if len(pairs) == len(shape.pairs):
            return shape
        self.stats.notes["flagged_not_chosen"] += len(shape.pairs) - len(pairs)
        kept = copy(shape)
        kept.pairs = pairs
        # The prompt's slot follows the ids' (as `_Shape` numbers them).
        kept.template, kept.pick = _line_template(pairs, len(ids))
        return kept


# --- kto --------------------------------------------------------------------------------------


def kto_rows(project, filters: dict, stats: BuildStats) -> Iterator[tuple[int, list]]:
    """Each rated response as TRL's unpaired preference row, `{"prompt", "completion",
    "label"}`, by prompt then response id: `label` is true when the median of its ratings
    reaches the project's threshold and none of them set an excluding flag (`Rating.good`).
    Conversational prompts give a list of messages and the completion as the assistant's turn."""
    labels = project.labels
    prompts = prompts_in_scope(project, filters)
    as_messages = _as_messages(filters, prompts)
    ratings = _judgments(project, filters).filter(kind=TaskKind.RATE)
    for batch in _judgment_batches(
        ratings, ("id", "task__prompt_id", "payload", "guideline_version", "task__candidates")
    ):
        lo, hi = batch[0][1], batch[-1][1]
        by_id = _prompts_between(prompts, lo, hi)
        texts = texts_by_id(
            Response.objects.filter(
                prompt_id__gte=lo,
                prompt_id__lte=hi,
                prompt__in=Prompt.objects.filter(project=project, id__gte=lo, id__lte=hi),
            )
        )
        for prompt_id, group in groupby(batch, itemgetter(1)):
            prompt = by_id.get(prompt_id)
            if prompt is None:  # filtered out (tags, language)
                continue
            rated: dict[int, Rating] = {}
            for annotation_id, _, payload, guideline_version, response_id in group:
                if response_id is None:
                    continue
                stats.saw(annotation_id, guideline_version)
                rated.setdefault(response_id, Rating()).add(_loads(payload))
            rows = []
            for response_id in sorted(rated):
                label = rated[response_id].good(labels)
                if as_messages:
                    completion = [{"role": "assistant", "content": texts[response_id]}]
                    rows.append(
                        {"prompt": conversation(prompt), "completion": completion, "label": label}
                    )
                else:
                    rows.append(
                        {"prompt": prompt["text"], "completion": texts[response_id], "label": label}
                    )
            if rows:
                yield prompt_id, rows
