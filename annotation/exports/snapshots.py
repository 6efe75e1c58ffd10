"""Build content-addressed dataset snapshots on disk, streaming rows from the database.

A snapshot directory (`DATA_DIR/snapshots/<sha256>/`, `<sha256>-parquet/` or `<sha256>-hf/`)
holds `manifest.json`, one file per split in TRL's exact row formats and a `dataset_info.json`
for LLaMA-Factory. It is written to a temporary directory and renamed into place, so a reader
never sees half a snapshot; when a directory with the same hash already exists it is reused.

The hash covers the canonical rows only (kind, split names and every row as sorted-key compact
JSON): building twice from the same data gives the same hash whatever the filters spelled or
when it ran. The manifest adds what a reader needs to trust it: filters, counts, guideline
versions, the annotation id range and the code version.

Nothing here depends on which kind a snapshot is except through its entry in
`annotation.exports.kinds.SNAPSHOT_KINDS`: a new kind goes there (and its row builder in
`annotation.exports.rows`), not here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Case, Count, F, Max, Q, Value, When
from django.db.models.functions import SHA256, Collate, Concat, Substr
from django.db.models.lookups import LessThan
from django.utils import timezone

from annotation.exports import rows as R
from annotation.exports.consensus_rows import aggregate_refusals
from annotation.exports.kinds import SNAPSHOT_KINDS
from annotation.exports.threads import Background
from annotation.models import Project, Snapshot, SnapshotKind, Source
from core.jobs import JobNotQueued, job_claim, job_fingerprint, job_get_or_create, job_heartbeat
from core.queue import enqueue_on_commit

FORMATS = ("jsonl", "parquet", "hf")


class SnapshotWriteError(OSError):
    """The snapshot's files could not be written (disk full, read-only or missing folder).

    The message names the folder and what to do: a bare `[Errno 28] No space left on device`
    from a buffered write names no file at all."""


BATCH = 10_000  # rows per Parquet row group
BLOCK_BYTES = 1 << 20  # bytes of lines per hash update and write

# Filter name -> (default, validator returning the cleaned value or raising ValueError).
FILTER_DEFAULTS: dict[str, object] = {
    "test_size": 0.1,
    "seed": "0",
    "tags": [],
    "language": "",
    "review": "not_rejected",
    "source": "",
    "pairs": "aggregate",
    "min_agreement": 0.0,
    "conversational": False,
    "guideline_version_min": 0,
    # Preference pairs by summed votes (as always) or by a Bradley-Terry consensus version
    # (0: the newest at build time); see `annotation.exports.consensus_rows`.
    "aggregate": "votes",
    "consensus_version": 0,
    # Ratings and flags (annotation.exports.rows: DemonstrationRatings, PreferenceSignals).
    "min_rating": None,
    "exclude_flagged": False,
    "unacceptable": "drop",
    # Arena battles (training.arena) as preference pairs too.
    "arena": False,
    # Only the judgments of this labeling round (its tasks' `round`; 0: every round).
    "round": 0,
}


def _choice(*options):
    def check(value):
        if value not in options:
            raise ValueError(f"expected one of {', '.join(repr(o) for o in options)}")
        return value

    return check


def _number(low: float, high: float, cast=float):
    def check(value):
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            value = cast(value)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return check


def _bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"1", "true", "yes", "0", "false", "no"}:
        return value.lower() in {"1", "true", "yes"}
    raise ValueError("expected true or false")


def _tags(value):
    if isinstance(value, str):
        value = [t for t in value.split(",") if t]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError("expected a list of tags")
    return sorted(set(value))


FILTER_CHECKS = {
    "test_size": _number(0.0, 0.5),
    "seed": str,
    "tags": _tags,
    "language": str,
    "review": _choice("not_rejected", "approved"),
    "source": _choice("", Source.LABELER, Source.IMPORTED),
    "pairs": _choice("aggregate", "per_annotation"),
    "min_agreement": _number(0.0, 1.0),
    "conversational": _bool,
    "guideline_version_min": _number(0, 10**6, int),
    "aggregate": _choice("votes", "bradley_terry"),
    "consensus_version": _number(0, 10**9, int),
    "min_rating": _number(0, 100),
    "exclude_flagged": _bool,
    "unacceptable": _choice("drop", "vs_demonstration"),
    "arena": _bool,
    "round": _number(0, 32767, int),
}


def filters_clean(filters: dict | None) -> dict:
    """Filters with defaults filled in; a ValidationError names every unknown or bad one."""
    filters = dict(filters or {})
    errors = {}
    for name in sorted(set(filters) - set(FILTER_DEFAULTS)):
        errors[f"filters.{name}"] = f"unknown filter; known: {', '.join(FILTER_DEFAULTS)}."
    clean = {}
    for name, default in FILTER_DEFAULTS.items():
        if name not in filters or filters[name] is None:
            clean[name] = default
            continue
        try:
            clean[name] = FILTER_CHECKS[name](filters[name])
        except ValueError as error:
            errors[f"filters.{name}"] = f"{error}."
    if errors:
        raise ValidationError(errors)
    return clean


def snapshots_root() -> Path:
    return Path(settings.DATA_DIR) / "snapshots"


@lru_cache(maxsize=1)
def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --- Services ------------------------------------------------------------------------------


@transaction.atomic
def snapshot_request(
    *,
    project: Project,
    kind: str,
    format: str = "jsonl",
    filters: dict | None = None,
    user=None,
    enqueue: bool = True,
) -> Snapshot:
    """Record a snapshot to build and (by default) queue its build on commit.

    The same request (project, kind, format and filters, defaults filled in) made while such a
    snapshot is still queued or building gets that snapshot, marked `reused`, and queues
    nothing: a double POST builds once."""
    errors = {}
    if kind not in SnapshotKind.values:
        errors["kind"] = f"{kind!r} is not one of {', '.join(SnapshotKind.values)}."
    if format not in FORMATS:
        errors["format"] = f"{format!r} is not one of {', '.join(FORMATS)}."
    try:
        clean = filters_clean(filters)
    except ValidationError as error:
        errors.update(error.message_dict)
    if not errors:
        errors.update(aggregate_refusals(project, kind, clean))
    if errors:
        raise ValidationError(errors)
    snapshot, created = job_get_or_create(
        Snapshot,
        fingerprint=job_fingerprint(project=project.pk, kind=kind, format=format, filters=clean),
        defaults={
            "project": project,
            "kind": kind,
            "format": format,
            "filters": clean,
            "created_by": user,
        },
    )
    if created and enqueue:
        enqueue_on_commit("annotation.tasks.snapshot_build", snapshot.pk)
    return snapshot


def snapshot_build(*, snapshot: Snapshot, worker: str = "local") -> Snapshot:
    """Claim a queued snapshot, write its files and record the outcome on the row.

    The status moves queued → building → ready|failed; a failed build leaves no directory
    behind. Raises JobNotQueued, building nothing, when the snapshot is not queued (a twin
    message or a retry claimed it first, or it is finished). While it builds, a heartbeat keeps
    it from being reaped; a build whose worker is killed is failed by `jobs_reap_stale`.

    The status updates are not in the build's transaction (its reads have one of their own on
    PostgreSQL), so others see them as they happen.
    """
    if not job_claim(Snapshot, snapshot.pk, worker=worker):
        snapshot.refresh_from_db()
        raise JobNotQueued(
            f"snapshot #{snapshot.pk} is {snapshot.get_status_display().lower()}, not queued: "
            "another build has it (or had it); wait for it or request the snapshot again."
        )
    with job_heartbeat(Snapshot, snapshot.pk, worker=worker):
        return _build(snapshot)


def _build(snapshot: Snapshot) -> Snapshot:
    try:
        result = build_directory(
            project=snapshot.project,
            kind=snapshot.kind,
            format=snapshot.format,
            filters=snapshot.filters,
        )
    except ValidationError as error:
        message = "; ".join(
            f"{k}: {' '.join(v)}" for k, v in getattr(error, "message_dict", {}).items()
        ) or " ".join(error.messages)
        _finish(snapshot, status=Snapshot.Status.FAILED, error=message)
        raise
    except SnapshotWriteError as error:
        _finish(snapshot, status=Snapshot.Status.FAILED, error=error.strerror)
        raise
    except Exception as error:
        _finish(
            snapshot,
            status=Snapshot.Status.FAILED,
            error=f"{type(error).__name__}: {error}. Fix the cause and build the snapshot again.",
        )
        raise
    manifest = result["manifest"]
    _finish(
        snapshot,
        status=Snapshot.Status.READY,
        sha256=manifest["sha256"],
        path=str(result["path"]),
        manifest=manifest,
        row_count=manifest["row_count"],
    )
    return snapshot


def _finish(snapshot: Snapshot, **fields) -> None:
    fields["finished_at"] = timezone.now()
    Snapshot.objects.filter(pk=snapshot.pk).update(**fields)
    for name, value in fields.items():
        setattr(snapshot, name, value)


# --- Building ------------------------------------------------------------------------------


def prompts_with_rows(project: Project, kind: str, filters: dict):
    """Prompts that contribute at least one row of `kind` (the population that is split)."""
    spec = SNAPSHOT_KINDS[kind]
    prompts = R.prompts_in_scope(project, filters)
    # has_key first: for a prompt without the key, `document=True` is NULL and NOT NULL would
    # drop it from an exclude (every prompt of a prompts snapshot was dropped so).
    documents = Q(metadata__has_key="document") & Q(metadata__document=True)
    if not spec.judgment_kinds:
        return prompts.exclude(documents)
    judgments = R._judgments(project, filters).filter(kind__in=spec.judgment_kinds)
    with_judgments = Q(id__in=judgments.values("task__prompt_id"))
    return prompts.filter(with_judgments | documents if spec.documents else with_judgments)


class Population:
    """One pass over the prompts that have rows: which are held out, whether any is a
    conversation, and the diversity counts of the manifest."""

    def __init__(self, project: Project, kind: str, filters: dict):
        populated = prompts_with_rows(project, kind, filters).annotate(
            conversational=Case(When(R.CONVERSATIONAL, then=Value(1)), default=Value(0)),
            # What `held_out_bound` is compared with, worked out by the database (in C on
            # PostgreSQL).
            key=Substr(_Sha256(Concat(Value(f"{filters['seed']}:"), "content_hash")), 1, 16),
        )
        bound = held_out_bound(float(filters["test_size"]))
        key = F("key")
        if connection.vendor == "postgresql":
            key = Collate(key, "C")  # byte order, as `held_out_bound` compares, whatever the locale
        # The database sums the population up: one row per held-out prompt (its id) and one per
        # distinct (tags, language) of the others, not one per prompt. Kept whole by the driver,
        # a row per prompt was ~130 bytes each: the export's peak memory grew with the project
        # (+44 MB from 1M to 3M pairs). One query, on a plain cursor: it may run in parallel.
        summary = (
            populated.order_by()
            .annotate(held_out=Case(When(LessThan(key, Value(bound)), then="id"), default=None))
            .values("held_out", "tags", "language")
            .annotate(prompts=Count("id"), any_conversational=Max("conversational"))
            .values_list("held_out", "tags", "language", "prompts", "any_conversational")
        )
        self.test_ids: set[int] = set()
        self.total = 0
        # (tags as JSON text, language) -> prompts: each distinct tag list is decoded once.
        combinations: Counter[tuple[str, str]] = Counter()
        self.conversational = False
        for rows in R.raw_rows(summary):
            for held_out, tags, language, prompts, conversational in rows:
                self.total += prompts
                if held_out is not None:
                    self.test_ids.add(held_out)
                combinations[tags, language] += prompts
                self.conversational = self.conversational or bool(conversational)
        self.tags: Counter[str] = Counter()
        self.languages: Counter[str] = Counter()
        for (tags, language), count in combinations.items():
            for tag in (json.loads(tags) if tags else None) or ["(untagged)"]:
                self.tags[tag] += count
            self.languages[language or "(unknown)"] += count

    def diversity(self, dominance: float = 0.5) -> dict:
        """Counts by tag and language, and a warning when one tag covers more than `dominance`
        of the prompts (varied data makes better and fairer models)."""
        tags, total = self.tags, self.total
        warnings = []
        if total and len(tags) > 1:
            top, count = tags.most_common(1)[0]
            if count / total > dominance:
                warnings.append(
                    f"tag {top!r} covers {count / total:.0%} of prompts (over {dominance:.0%})"
                )
        return {
            "prompts": total,
            "tags": dict(sorted(tags.items())),
            "languages": dict(sorted(self.languages.items())),
            "warnings": warnings,
        }


class _Sha256(SHA256):
    """Django's SHA256 (hex), on PostgreSQL without the pgcrypto extension it asks for: its
    own `sha256()` (PostgreSQL 11+) of the text in UTF-8."""

    def as_postgresql(self, compiler, connection, **extra_context):
        return self.as_sql(
            compiler,
            connection,
            template="ENCODE(SHA256(CONVERT_TO(%(expressions)s, 'UTF8')), 'hex')",
            **extra_context,
        )


def held_out_bound(share: float) -> str:
    """The bound below which a prompt's key puts it in the test split.

    The key is the first 16 hex digits of sha256("<seed>:<content hash>"), a number from 0 to
    16**16 that is uniform over prompts; a prompt is held out when it is below
    `share * 16**16`. Keys and bound are compared as text: 16 lower-case hex digits each (as
    SQLite's and PostgreSQL's sha256 write them), so text order is number order, and no key is
    below the empty bound of `share == 0`.

    Split by prompt, never by row, so no prompt is on both sides. A prompt's side depends only
    on its own content, the seed and the share, never on the other prompts: when the data grows
    every prompt stays on the side it was on, and new prompts fall in test at the rate `share`.
    So the test split holds about `share` of the prompts, not exactly that: a project of a few
    prompts may hold none out (the snapshot then has no test split), or rarely all of them (the
    build then fails and says so).
    """
    if share <= 0:
        return ""
    return format(min(int(share * 16**16), 16**16 - 1), "016x")


_encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def canonical(row: dict) -> str:
    """Sorted keys, compact, UTF-8 as is: the form rows are hashed (and JSONL written) in."""
    return _encoder.encode(row)


class _SplitWriter:
    def __init__(self, directory: Path, name: str, format: str, background: Background):
        self.name = name
        self.format = format
        self.rows = 0
        self.digest = hashlib.sha256()
        self.filename = f"{name}.parquet" if format == "parquet" else f"{name}.jsonl"
        self.path = directory / self.filename
        self._background = background
        self._fh = None
        self._lines: list[bytes] = []  # canonical lines in UTF-8
        self._pending = 0
        self._encoded_rows = 0  # rows of `self._lines` that came encoded (Parquet reads them)
        self._longest = 0  # bytes of the longest block among the pending encoded lines
        self._batch: list[dict] = []
        self._writer = None
        self._schema = None
        self.columns: list[str] = []
        self.conversational = False

    def write(self, rows: list[dict] | R.EncodedRows) -> None:
        """Rows of one prompt, in order."""
        encoded = isinstance(rows, R.EncodedRows)
        if not self.columns:
            self.columns = rows.columns if encoded else sorted(rows[0])
            self.conversational = not encoded and (
                "messages" in rows[0] or isinstance(rows[0].get("prompt"), list)
            )
        if encoded:
            self.rows += rows.count
            self._lines.append(rows.lines)
            self._pending += len(rows.lines)
            if self.format == "parquet":
                self._encoded_rows += rows.count
                self._longest = max(self._longest, len(rows.lines))
        else:
            self.rows += len(rows)
            for row in rows:
                line = canonical(row).encode()
                self._lines += (line, b"\n")
                self._pending += len(line) + 1
            if self.format == "parquet":
                self._batch.extend(rows)
        if self.format == "parquet":
            if len(self._batch) + self._encoded_rows >= BATCH:
                self._flush()
        elif self._pending >= BLOCK_BYTES:
            self._write_lines()

    def _write_lines(self) -> None:
        # One join, hash update and write per megabyte of lines, on the background thread,
        # where all three let the GIL go (a join of a megabyte or more copies without it): the
        # digest of the concatenation is the digest of the rows one by one. Parquet splits
        # hash the same lines, unwritten.
        if not self._lines:
            return
        if self._fh is None and self.format != "parquet":
            self._fh = self.path.open("wb")
        self._background.submit(partial(self._hash_and_write, self._lines))
        self._lines, self._pending = [], 0

    def _hash_and_write(self, lines: list[bytes]) -> bytes:
        data = b"".join(lines)
        self.digest.update(data)
        if self._fh is not None:
            self._fh.write(data)
        return data

    def _flush(self) -> None:
        import pyarrow as pa

        if self._encoded_rows:
            # Arrow reads the canonical lines themselves, in C++ on the background thread: the
            # same values as the JSONL file by construction, and no Python object per value.
            job = partial(self._hash_and_write_table, self._lines, self._longest)
            self._background.submit(job)
            self._lines, self._pending, self._encoded_rows, self._longest = [], 0, 0, 0
            return
        self._write_lines()
        if not self._batch:
            return
        table = pa.Table.from_pylist(self._batch, schema=self._schema)
        self._batch = []
        if self._schema is None:
            self._schema = table.schema
        self._background.submit(partial(self._write_table, table))

    def _hash_and_write_table(self, lines: list[bytes], longest: int) -> None:
        import pyarrow as pa
        import pyarrow.json as pj

        data = self._hash_and_write(lines)  # hashed only: a Parquet split has no line file
        table = pj.read_json(
            pa.BufferReader(data),
            # A block holds whole lines: at least the longest prompt's lines.
            read_options=pj.ReadOptions(block_size=max(BLOCK_BYTES, longest + 1)),
            parse_options=pj.ParseOptions(explicit_schema=_pair_schema()),
        )
        self._write_table(table.select(list(R.ARROW_ORDER)))

    def _write_table(self, table) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)

    def _close_table(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def close(self) -> None:
        """Queue the last rows and the file's closing (the background's `close` waits)."""
        if self.format == "parquet":
            self._flush()
            self._background.submit(self._close_table)
        else:
            self._write_lines()
            if self._fh is not None:
                self._background.submit(self._fh.close)


@lru_cache(maxsize=1)
def _pair_schema():
    """The Arrow types of preference rows, in `ARROW_ORDER`."""
    import pyarrow as pa

    types = {"margin": pa.float64(), "agreement": pa.float64()}
    return pa.schema([(name, types.get(name, pa.string())) for name in R.ARROW_ORDER])


def _write_splits(directory: Path, format: str, rows, test_ids: set[int]):
    """Write `(prompt_id, rows)` blocks to the train and test files; return the writers (rows,
    digests, columns) and the number of prompts on each side."""
    background = Background()
    try:
        writers = {
            "train": _SplitWriter(directory, "train", format, background),
            "test": _SplitWriter(directory, "test", format, background),
        }
        prompt_ids: dict[str, int] = {"train": 0, "test": 0}
        last_prompt = {"train": None, "test": None}
        for prompt_id, block in rows:
            split = "test" if prompt_id in test_ids else "train"
            writers[split].write(block)
            if last_prompt[split] != prompt_id:
                last_prompt[split] = prompt_id
                prompt_ids[split] += 1
        for writer in writers.values():
            writer.close()
        background.close()
    finally:
        rows.close()  # stops its reading thread before the caller uses the database again
        background.stop()
    return writers, prompt_ids


@contextmanager
def _reading():
    """On PostgreSQL, the build's reads in one transaction (read only, nothing is written).

    Outside a transaction Django declares its server-side cursors WITH HOLD, and PostgreSQL
    then runs the whole query and stores its result before the first row comes back; inside
    one the rows stream as they are made. `SET LOCAL` gives the judgment stream's sort memory
    enough not to spill to disk and turns JIT compilation off (the reads are cheap per row but
    many, so their cost estimate grows with the project: past ~2 million pairs the judgment
    stream crosses `jit_above_cost`, and compiling is time the one pass never wins back; one
    query of a million pairs with a higher estimate spent 1.1 s of 2.6 s compiling), for this
    transaction only: the connections Celery workers keep carry neither into other work."""
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL work_mem = '64MB'")
            cursor.execute("SET LOCAL jit = off")
        yield


def build_directory(*, project: Project, kind: str, format: str, filters: dict) -> dict:
    """Stream the rows into a new directory; return {"path", "manifest"}."""
    filters = filters_clean(filters)
    root = snapshots_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
    except OSError as error:
        raise _write_error(root, error) from error
    try:
        with _reading():
            population = Population(project, kind, filters)
            as_messages = filters["conversational"] or population.conversational
            filters_in = {**filters, "_as_messages": as_messages}
            stats = R.BuildStats()
            rows = SNAPSHOT_KINDS[kind].rows(project, filters_in, stats)
            writers, prompt_ids = _write_splits(tmp, format, rows, population.test_ids)
        if writers["train"].rows == 0 and writers["test"].rows:
            raise ValidationError({"rows": _all_held_out_message(project, kind, filters)})
        if writers["train"].rows == 0:
            raise ValidationError({"rows": _empty_message(project, kind, filters)})
        splits = {
            name: {"path": w.filename, "rows": w.rows, "sha256": w.digest.hexdigest()}
            for name, w in writers.items()
            if w.rows
        }
        sha256 = hashlib.sha256(
            canonical(
                {"kind": kind, "splits": {n: s["sha256"] for n, s in splits.items()}}
            ).encode()
        ).hexdigest()
        columns = writers["train"].columns
        manifest = {
            "kind": kind,
            "format": format,
            "sha256": sha256,
            "project": project.slug,
            "filters": filters,
            # The labeling round the rows come from (None: every round).
            "round": filters.get("round") or None,
            "splits": splits,
            "row_count": sum(s["rows"] for s in splits.values()),
            "columns": columns,
            "conversational": writers["train"].conversational,
            "prompts": {"train": prompt_ids["train"], "test": prompt_ids["test"]},
            "judgments": stats.judgments,
            "annotation_ids": {"min": stats.min_id, "max": stats.max_id},
            "guideline_versions": sorted(stats.guideline_versions),
            "ties_dropped": stats.ties_dropped,
            "below_min_agreement": stats.below_agreement,
            "pairs": filters["pairs"] if SNAPSHOT_KINDS[kind].pairs else None,
            # The Bradley-Terry version the pairs were ordered by (None: by summed votes).
            "consensus": stats.consensus,
            **stats.notes,
            "diversity": population.diversity(),
            "code_version": code_version(),
            "built_at": timezone.now().isoformat(),
        }
        for w in writers.values():
            if not w.rows and w.path.exists():
                w.path.unlink()
        if format == "hf":
            _save_hf(tmp, splits)
        if manifest["conversational"] and SNAPSHOT_KINDS[kind].llamafactory_row is not None:
            manifest["llamafactory"] = _llamafactory_files(tmp, kind, splits)
        (tmp / "dataset_info.json").write_text(
            json.dumps(llamafactory_info(project, kind, splits, manifest), indent=2) + "\n",
            encoding="utf-8",
        )
        (tmp / "manifest.json").write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        final = root / (sha256 if format == "jsonl" else f"{sha256}-{format}")
        if final.is_dir() and (final / "manifest.json").is_file():
            shutil.rmtree(tmp)
        else:
            if final.exists() or final.is_symlink():
                # A leftover without its manifest (written by hand, or by an older build that
                # was not atomic) is never a snapshot: replace it rather than fail forever.
                if final.is_dir() and not final.is_symlink():
                    shutil.rmtree(final)
                else:
                    final.unlink()
            try:
                tmp.rename(final)
            except OSError:
                # Someone built the same snapshot at the same moment; theirs is identical.
                if not (final / "manifest.json").is_file():
                    raise
                shutil.rmtree(tmp)
        return {"path": final, "manifest": manifest}
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, SnapshotWriteError):
            raise
        raise _write_error(root, error) from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_error(root: Path, error: OSError) -> SnapshotWriteError:
    where = f" ({error.filename})" if error.filename else ""
    reason = error.strerror or str(error)
    return SnapshotWriteError(
        error.errno,
        f"could not write the snapshot under {root}{where}: {reason}. Free disk space or make "
        f"{root} a writable folder (it lives in DATA_DIR, set by PLATFORM_DATA_DIR), then build "
        "the snapshot again; nothing was kept of this attempt.",
    )


def _all_held_out_message(project: Project, kind: str, filters: dict) -> str:
    return (
        f"the {kind} snapshot of {project.slug} would have no training rows: every prompt with "
        f"rows fell in the held-out share (test_size={filters['test_size']}, seed "
        f"{filters['seed']!r}). Each prompt is held out by its own hash, so a project of a few "
        "prompts can have all of them held out; build it with test_size=0 or another seed."
    )


def _empty_message(project: Project, kind: str, filters: dict) -> str:
    what = SNAPSHOT_KINDS[kind].built_from
    return (
        f"the {kind} snapshot of {project.slug} would have no training rows: there are no "
        f"{what} that match the filters {filters}. Import or label data, or loosen the filters."
    )


def _save_hf(directory: Path, splits: dict) -> None:
    """Also save a `datasets.DatasetDict` for `load_from_disk` (read from the JSONL splits)."""
    import pyarrow.json as pj
    from datasets import Dataset, DatasetDict

    parts = {}
    for name, split in splits.items():
        table = pj.read_json(directory / split["path"])
        parts[name] = Dataset(table)
    DatasetDict(parts).save_to_disk(str(directory / "hf"))


def _split_rows(path: Path) -> Iterator[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
            yield from batch.to_pylist()
        return
    with path.open("rb") as fh:
        for line in fh:
            yield json.loads(line)


def _llamafactory_files(directory: Path, kind: str, splits: dict) -> dict:
    """`<split>.llamafactory.jsonl` beside each split: its rows in the shape LLaMA-Factory
    reads (`SnapshotKindRules.llamafactory_row`), streamed from the split file; a row it cannot
    take is left out and counted (`left_out`)."""
    reshape = SNAPSHOT_KINDS[kind].llamafactory_row
    files = {}
    for name, split in splits.items():
        path = directory / f"{name}.llamafactory.jsonl"
        rows = left_out = 0
        with path.open("wb") as fh:
            for row in _split_rows(directory / split["path"]):
                shaped = reshape(row)
                if shaped is None:
                    left_out += 1
                    continue
                fh.write(canonical(shaped).encode() + b"\n")
                rows += 1
        files[name] = {"path": path.name, "rows": rows, "left_out": left_out}
    return files


def llamafactory_info(project: Project, kind: str, splits: dict, manifest: dict) -> dict:
    """LLaMA-Factory's `dataset_info.json` entries for the split files beside it (or for the
    files written in the shape it reads, `manifest["llamafactory"]`)."""
    spec = SNAPSHOT_KINDS[kind]
    if manifest["conversational"]:
        fields = spec.llamafactory_conversational
    else:
        fields = spec.llamafactory_text
    files = manifest.get("llamafactory") or {}
    return {
        f"{project.slug}_{kind}_{name}": {
            "file_name": files[name]["path"] if name in files else split["path"],
            **fields,
        }
        for name, split in splits.items()
    }
