"""The importer behind `manage.py import_data` and the API: validate a file, then write it.

By default it is all or nothing: the whole file is validated first (streaming) and nothing is
written when any row is bad; then every record is written in one transaction. With
`skip_invalid` the good rows are written and the bad ones go to a reject file. Re-importing a
file skips the records already imported (keyed by the sha256 of their content), so it never
duplicates anything. Imported judgments are marked `source=imported` with their provenance and
are pending review, so they enter snapshots unless a curator rejects them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from itertools import chain
from math import comb
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import connection, transaction

from annotation import services, sql
from annotation.imports import formats as F
from annotation.imports.errors import Notice, RowError, place_dict, place_of
from annotation.imports.readers import read_records, sniff
from annotation.models import ImportBatch, ImportRecord, Project, Prompt, Response, Source, TaskKind

MAX_ERRORS_KEPT = 200
# Records written set-wise at a time (a few statements per chunk, not a dozen per row); 1: one
# by one through the per-row services, as the tests compare.
CHUNK_ROWS = 1000
# Examples kept of each notice reason (the count is always whole).
NOTICE_EXAMPLES_KEPT = 3


@dataclass
class ImportReport:
    """What an import did. `counts`: what was written, by kind. `notices`: well-formed records
    (or parts of one) that gave nothing to learn from or were imported as something less (a
    tie, a lone rated response, a skipped cancelled annotation), by reason: {reason: count}.
    `notice_examples`: the first few of each reason, {"line"|"index", "field", "message",
    "reason"}, in file order. Errors are bad records: {"line"|"index", "field", "message"}."""

    file: str
    format: str
    counts: dict = field(default_factory=dict)
    notices: dict[str, int] = field(default_factory=dict)
    notice_examples: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    error_count: int = 0
    written: bool = False
    batch_id: int | None = None
    reject_file: str = ""

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def error_lines(self) -> list[str]:
        return [str(RowError(place_of(e), e["field"], e["message"])) for e in self.errors]


class _DryRun(Exception):
    pass


def _records(path: Path, format: str) -> Iterator[tuple[int, object]]:
    container = {"prompts-csv": "csv", "prompts-parquet": "parquet"}.get(format) or sniff(path)
    return read_records(path, container)


def _resolve_format(path: Path, format: str) -> tuple[str, Iterator]:
    """The concrete format and a fresh record iterator (auto looks at the first record)."""
    if format not in F.FORMATS:
        raise RowError(
            0, "format", f"unknown format {format!r}; expected one of {', '.join(F.FORMATS)}"
        )
    if format != "auto":
        return format, _records(path, format)
    container = sniff(path)
    records = read_records(path, container)
    first = next(records, None)
    if first is None:
        raise RowError(1, "", "the file is empty")
    line, record = first
    if isinstance(record, RowError):
        raise record
    detected = F.detect(record)
    if container in ("csv", "parquet") and detected in (None, "trl") and isinstance(record, dict):
        if "chosen" not in record and "completion" not in record and "messages" not in record:
            detected = f"prompts-{container}"
    if detected is None:
        raise RowError(
            line,
            "",
            f"cannot tell the format from columns {sorted(record) if isinstance(record, dict) else type(record).__name__}; pass --format",
        )
    return detected, chain([first], records)


def import_file(
    *,
    project: Project,
    path: str | Path,
    format: str = "auto",
    skip_invalid: bool = False,
    dry_run: bool = False,
    reject_path: str | Path | None = None,
    user=None,
    file_name: str = "",
    progress: Callable[[str, int], None] | None = None,
    job=None,
) -> ImportReport:
    """Import the file at `path` into `project` (see the module's docstring). `progress(stage,
    records)` is told how many records were read, checking ("checking") then writing
    ("writing"), each stage announced before its first record; `job`: the ImportJob whose
    batch this is."""
    path = Path(path)
    file_name = file_name or path.name
    report = ImportReport(file=file_name, format=format)
    try:
        report.format, records = _resolve_format(path, format)
    except RowError as error:
        _add_error(report, error)
        return report
    if not skip_invalid:
        # Pass 1: validate everything, keep nothing; nothing is written when a row is bad.
        seen_any = False
        records = _counted(records, "checking", progress)
        try:
            for item in F.items(report.format, records):
                seen_any = True
                if isinstance(item, RowError):
                    _add_error(report, item)
        except RowError as error:
            # A reader that cannot go on (a truncated or too deeply nested JSON array).
            _add_error(report, error)
        if not seen_any and not report.errors:
            _add_error(report, RowError(1, "", "the file has no records"))
        if report.error_count:
            return report
        _, records = _resolve_format(path, format)
    records = _counted(records, "writing", progress)  # announced before the transaction opens
    try:
        with transaction.atomic():
            # A dry run writes nothing, the reject file included: the counts say what it would do.
            rejects = None if dry_run else reject_path
            _write_all(project, report, records, skip_invalid, rejects, user, file_name, job)
            if dry_run:
                raise _DryRun
    except _DryRun:
        report.written = False
        report.batch_id = None
    except RowError as error:
        # A row that only fails when written (all or nothing): the transaction rolled back.
        _add_error(report, error)
        report.written = False
        report.batch_id = None
        report.counts = {}
        report.notices, report.notice_examples = {}, []
    return report


def _add_notice(report: ImportReport, notice: Notice) -> None:
    seen = report.notices.get(notice.reason, 0)
    report.notices[notice.reason] = seen + 1
    if seen < NOTICE_EXAMPLES_KEPT:
        report.notice_examples.append({**notice.as_dict(), "reason": notice.reason})


def _counted(records: Iterator, stage: str, progress) -> Iterator:
    if progress is None:
        return records
    progress(stage, 0)

    def counting() -> Iterator:
        for n, record in enumerate(records, 1):
            progress(stage, n)
            yield record

    return counting()


def _add_error(report: ImportReport, error: RowError) -> None:
    report.error_count += 1
    if len(report.errors) < MAX_ERRORS_KEPT:
        report.errors.append(error.as_dict())


def _write_all(project, report, records, skip_invalid, reject_path, user, file_name, job) -> None:
    counts = dict.fromkeys(
        ["records", "prompts", "responses", "judgments", "pairs", "documents", "demonstrations",
         "gold_tasks", "already_imported", "rejected"],
        0,
    )  # fmt: skip
    batch = ImportBatch.objects.create(
        project=project, file_name=file_name[:500], format=report.format, created_by=user, job=job
    )
    reject = None
    if skip_invalid and reject_path:
        reject = Path(reject_path).open("w", encoding="utf-8", newline="\n")
        report.reject_file = str(reject_path)
    writer = _Writer(project, batch, file_name, report.format, counts)

    def refuse(error: RowError) -> None:
        _add_error(report, error)
        counts["rejected"] += 1
        if reject is not None:
            reject.write(json.dumps(error.as_dict(), ensure_ascii=False) + "\n")

    def account(entries: list) -> None:
        """The notices and read errors of written entries, in file order."""
        for entry in entries:
            if isinstance(entry, Notice):
                _add_notice(report, entry)
            elif isinstance(entry, RowError):
                refuse(entry)
            else:
                for notice in entry.notices:
                    _add_notice(report, notice)

    def one_by_one(entries: list) -> None:
        for entry in entries:
            if not isinstance(entry, F.Item):
                account([entry])
                continue
            counted = dict(counts)
            try:
                with transaction.atomic():
                    writer.write(entry)
            except RowError as error:
                if not skip_invalid:
                    raise
                counts.update(counted)  # the row's writes were rolled back, and so are its counts
                refuse(error)
                continue
            account([entry])

    def together(entries: list) -> None:
        """A run of items written set-wise; when one of them is refused, the run is rolled back
        and written again row by row, which names (or, skip_invalid, rejects) that row alone."""
        counted = dict(counts)
        try:
            with transaction.atomic():
                writer.write_many([e for e in entries if isinstance(e, F.Item)])
        except (RowError, ValidationError):
            counts.clear()
            counts.update(counted)
            one_by_one(entries)
            return
        account(entries)

    def flush(chunk: list) -> None:
        run: list = []
        for entry in chunk:
            if isinstance(entry, F.Item) and not _Writer.batchable(entry):
                if run:
                    together(run)
                    run = []
                one_by_one([entry])
            else:
                run.append(entry)
        if run:
            together(run)

    try:
        any_item = False
        chunk: list = []
        for item in F.items(report.format, records):
            any_item = True
            chunk.append(item)
            if len(chunk) >= max(1, CHUNK_ROWS):
                (flush if CHUNK_ROWS > 1 else one_by_one)(chunk)
                chunk = []
                # With DEBUG, Django keeps the last 9,000 statements with their parameters: a
                # chunk's are megabytes of the file's text. Dropped per chunk, as Django drops
                # them per request, so that memory stays flat whatever the file's size.
                if connection.queries_logged:
                    connection.queries_log.clear()
        if chunk:
            (flush if CHUNK_ROWS > 1 else one_by_one)(chunk)
        if not any_item:
            _add_error(report, RowError(1, "", "the file has no records"))
    finally:
        if reject is not None:
            reject.close()
    batch.counts = counts
    batch.errors = report.errors
    batch.notices = {"counts": report.notices, "examples": report.notice_examples}
    batch.status = ImportBatch.Status.DONE
    batch.save(update_fields=["counts", "errors", "notices", "status"])
    report.counts = counts
    report.written = True
    report.batch_id = batch.pk


_UNKEYED = {"line", "notices"}


class _Writer:
    """Writes import items through the annotation services, which check them as every write
    of a prompt, response, task and judgment is checked: `write_many` a chunk set-wise through
    their batch forms, `write` one item (the fallback, and gold rows and demonstrations); a
    refusal becomes the row's error."""

    def __init__(self, project: Project, batch: ImportBatch, file_name: str, format: str, counts):
        self.project = project
        self.batch = batch
        self.file_name = file_name
        self.format = format
        self.counts = counts

    def key(self, item: F.Item) -> str:
        # Shallow (asdict copies every nested value; json.dumps writes the same either way).
        data = {f.name: getattr(item, f.name) for f in fields(item) if f.name not in _UNKEYED}
        if data["gold_answer"] is None:
            data.pop("gold_answer")  # the keys of the rows imported before gold could be
        blob = json.dumps([self.format, data], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def write(self, item: F.Item) -> None:
        self.counts["records"] += 1
        key = self.key(item)
        if ImportRecord.objects.filter(project=self.project, key=key).exists():
            self.counts["already_imported"] += 1
            return
        prompt = self.prompt(item)
        ImportRecord.objects.create(
            project=self.project, key=key, batch=self.batch, line=item.line, prompt=prompt
        )
        provenance = self.provenance(item)
        if item.gold_answer is not None:
            self.gold(item, prompt)
        elif item.kind == "document":
            self.counts["documents"] += 1
        elif item.kind == "demonstration":
            self.demonstration(item, prompt, provenance)
        elif item.kind == "preference":
            self.preference(item, prompt, provenance)
        elif item.kind == "responses":
            self._responses(item, prompt)

    def prompt_fields(self, item: F.Item) -> dict:
        """The prompt of `item` as prompts_get_or_create takes it."""
        metadata = dict(item.metadata)
        if item.kind == "document":
            metadata["document"] = True
        metadata["import"] = {"file": self.file_name, "format": self.format}
        metadata["import"].update(place_dict(item.line))
        if item.original_id:
            metadata["import"]["original_id"] = item.original_id
        content = "messages" if isinstance(item.prompt, list) else "text"
        return {content: item.prompt, "tags": item.tags, "language": item.language,
                "metadata": metadata}  # fmt: skip

    def provenance(self, item: F.Item) -> dict:
        return {
            "file": self.file_name,
            "format": self.format,
            **place_dict(item.line),  # {"line": n}, or {"index": n} in a JSON array
            "original_id": item.original_id,
            "batch": self.batch.pk,
        }

    def prompt(self, item: F.Item) -> Prompt:
        with _refusal(item.line, lambda key: "prompt"):
            ((prompt, created),) = services.prompts_get_or_create(
                project=self.project, items=[self.prompt_fields(item)], source=Source.IMPORTED
            )
        self.counts["prompts"] += created
        return prompt

    @staticmethod
    def batchable(item: F.Item) -> bool:
        """Written set-wise by write_many: all but gold tasks and demonstrations (whose
        response, written as a judgment's side effect, a later row may answer with)."""
        return item.gold_answer is None and item.kind != "demonstration"

    def write_many(self, items: list[F.Item]) -> None:
        """write() for many batchable items, set-wise through the services' batch forms: one
        query for the records imported already, one for the prompts of the same content, one
        for their responses, one insert per table. Raises (RowError or ValidationError) when
        any item is refused; the caller rolls back and writes them one by one."""
        self.counts["records"] += len(items)
        keys = [self.key(item) for item in items]
        stored: set[str] = set()
        for start in range(0, len(keys), 500):
            stored.update(
                record.key
                for record in sql.project_rows_by_key(
                    ImportRecord, project_id=self.project.pk, field="key",
                    keys=keys[start : start + 500],
                )
            )  # fmt: skip
        new = []
        for item, key in zip(items, keys, strict=True):
            if key in stored:
                self.counts["already_imported"] += 1
                continue
            stored.add(key)
            new.append((item, key))
        if not new:
            return
        prompts = services.prompts_get_or_create(
            project=self.project,
            items=[self.prompt_fields(item) for item, _ in new],
            source=Source.IMPORTED,
        )
        self.counts["prompts"] += sum(created for _, created in prompts)
        sql.insert_rows(  # tuples: the instances would cost more than the insert
            ImportRecord,
            ("project_id", "key", "batch_id", "line", "prompt_id"),
            [
                (self.project.pk, key, self.batch.pk, int(item.line), prompt.pk)
                for (item, key), (prompt, _) in zip(new, prompts, strict=True)
            ],
        )
        answered = [
            (item, prompt)
            for (item, _), (prompt, _) in zip(new, prompts, strict=True)
            if item.kind in ("preference", "responses")
        ]
        self.counts["documents"] += sum(item.kind == "document" for item, _ in new)
        found = services.responses_get_or_create_many(
            requests=[
                (prompt, self.replies(item), item.response_origin) for item, prompt in answered
            ],
            new_prompts={prompt.pk for prompt, created in prompts if created},
        )
        tasks = []
        for (item, prompt), pairs in zip(answered, found, strict=True):
            self.counts["responses"] += sum(created for _, created in pairs)
            if item.kind != "preference":
                continue
            responses = [response for response, _ in pairs]
            kind, judgments = self.judgments(item, responses)
            tasks.append({"kind": kind, "prompt": prompt, "candidates": responses,
                          "judgments": judgments})  # fmt: skip
        services.tasks_import_many(project=self.project, items=tasks)
        self.counts["judgments"] += sum(len(task["judgments"]) for task in tasks)

    def demonstration(self, item: F.Item, prompt: Prompt, provenance: dict) -> None:
        judgment = {"payload": {"text": item.responses[0]}, "provenance": provenance}
        with _refusal(item.line, lambda key: "responses[0]"):
            services.task_import(
                project=self.project,
                kind=TaskKind.DEMONSTRATION,
                prompt=prompt,
                judgments=[judgment],
            )
        self.counts["responses"] += 1
        self.counts["demonstrations"] += 1
        self.counts["judgments"] += 1

    def replies(self, item: F.Item) -> list[dict]:
        metadata = item.response_metadata
        return [
            {"text": text, "metadata": metadata[i] if i < len(metadata) else {}}
            for i, text in enumerate(item.responses)
        ]

    def _responses(self, item: F.Item, prompt: Prompt) -> list[Response]:
        """The row's responses to `prompt`, in the row's order (found or written, counted)."""
        with _refusal(item.line, lambda key: key.replace("items", "responses", 1)):
            pairs = services.responses_get_or_create(
                prompt=prompt, items=self.replies(item), origin=item.response_origin
            )
        self.counts["responses"] += sum(created for _, created in pairs)
        return [response for response, _ in pairs]

    def judgments(self, item: F.Item, responses: list[Response]) -> tuple[str, list[dict]]:
        """The task kind and the judgments of a preference row (its pairs counted)."""
        ids = [r.pk for r in responses]
        if len(set(ids)) != len(ids):
            raise RowError(
                item.line, "responses", "two responses are identical; nothing to compare"
            )
        kind = TaskKind.COMPARE if len(responses) == 2 else TaskKind.RANK
        provenance = self.provenance(item)
        judgments = []
        for judgment in item.judgments:
            groups = [[ids[i] for i in group] for group in judgment["ranking"]]
            if kind == TaskKind.RANK:
                payload = {"ranking": groups}
            elif len(groups) == 2:
                payload = {"winner": groups[0][0], "strength": int(judgment.get("strength") or 1)}
            else:
                payload = {"winner": None}  # both in one group: a tie
            extra = {k: v for k, v in judgment.items() if k not in {"ranking", "strength"}}
            judgments.append({"payload": payload, "provenance": {**provenance, **extra}})
            sizes = [len(g) for g in groups]
            self.counts["pairs"] += comb(sum(sizes), 2) - sum(comb(s, 2) for s in sizes)
        return kind, judgments

    def preference(self, item: F.Item, prompt: Prompt, provenance: dict) -> None:
        responses = self._responses(item, prompt)
        kind, judgments = self.judgments(item, responses)
        with _refusal(item.line, lambda key: "responses" if key == "candidates" else key):
            services.task_import(
                project=self.project,
                kind=kind,
                prompt=prompt,
                candidates=responses,
                judgments=judgments,
            )
        self.counts["judgments"] += len(judgments)

    def gold(self, item: F.Item, prompt: Prompt) -> None:
        """An open gold task of the row's responses with the row's answer, whose response
        indexes become their ids; served to every labeler, it takes no judgment from the file."""
        responses = self._responses(item, prompt)
        ids = [r.pk for r in responses]
        answer = dict(item.gold_answer)
        if isinstance(answer.get("winner"), int):
            answer["winner"] = ids[answer["winner"]]
        if F.gold_kind(item) == TaskKind.RANK:
            answer["ranking"] = [
                [ids[i] for i in (group if isinstance(group, list) else [group])]
                for group in answer["ranking"]
            ]
        with _refusal(item.line, lambda key: "responses" if key == "candidates" else key):
            services.task_create(
                project=self.project,
                kind=F.gold_kind(item),
                prompt=prompt,
                candidates=responses,
                is_gold=True,
                gold_answer=answer,
            )
        self.counts["gold_tasks"] += 1


@contextmanager
def _refusal(line: int, field: Callable[[str], str]) -> Iterator[None]:
    """A service's refusal of a row's write as the row's error: `field` names, from the key of
    the service's first message, the row's field at fault."""
    try:
        yield
    except ValidationError as error:
        key, messages = next(iter(error.message_dict.items()))
        raise RowError(line, field(key.split(".")[0]), " ".join(messages).rstrip(".")) from None
