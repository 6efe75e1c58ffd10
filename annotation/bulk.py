"""Tasks created at scale: one kind of task for every prompt of a selection, as a job.

A curator asks for, say, "two demonstrations for each prompt of this import batch" or "rank the
responses of every prompt tagged `math`" (the curate page, the API, `manage.py tasks_create`).
The request is a `TaskBatch` row, built by a worker in chunks (`task_batch_run`); each chunk
commits on its own, so the page shows progress and a lost worker loses nothing done.

The selection (`selection_clean`), all criteria given must hold:
- `batch`: the prompts an import batch wrote or found (its records' prompts);
- `tags`: prompts carrying every one of these tags (the snapshot filter's rule);
- `snapshot`: the prompts of a ready `prompts` snapshot, read from its files and matched by
  content hash (so the selection is what the snapshot holds, not what its filters match now);
- `without_demonstrations`: N, prompts with fewer than N counted demonstrations yet.
Imported documents (pretraining text) are never selected.

The candidates of a task come from the prompt's pool: its `Project.k_responses` latest
responses (by id), shown in id order. A rank task ranks the whole pool and needs K responses; a
compare task is made for every pair of the pool; a rate task for every response of it; a
demonstration task takes none. A prompt with too few responses for the kind is skipped and
counted (`counts["skipped_too_few_responses"]`, with the first ids in `skipped_prompt_ids`).

Idempotent: a task (not gold) of the same prompt, kind, round and candidate set that exists is
not created again, and counted as `already_there`. Chunks are written with the project row
locked, so two batches that overlap never both create the same task.
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation import rules, services
from annotation.exports import rows as R
from annotation.models import (
    Annotation,
    ImportRecord,
    Project,
    Prompt,
    Response,
    Snapshot,
    SnapshotKind,
    Task,
    TaskBatch,
    TaskKind,
    content_hash,
)
from core.jobs import JobNotQueued, job_claim, job_fingerprint, job_get_or_create, job_heartbeat
from core.queue import enqueue_on_commit

BULK_KINDS = (TaskKind.DEMONSTRATION, TaskKind.RANK, TaskKind.COMPARE, TaskKind.RATE)
SELECTIONS = ("batch", "tags", "snapshot", "without_demonstrations")
CHUNK = 500  # prompts per transaction (and per progress update)
MAX_REQUIRED = 50  # as Project.overlap
SKIPPED_EXAMPLES = 20

# --- The request -----------------------------------------------------------------------------


def _whole(value, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise ValidationError({field: f"expected a whole number from {low} to {high}."})
    if not low <= value <= high:
        raise ValidationError({field: f"expected a whole number from {low} to {high}."})
    return value


def selection_clean(project: Project, selection) -> dict:
    """The selection as stored (known criteria only, each checked); ValidationError naming
    `selection.<criterion>`."""
    if not isinstance(selection, dict):
        raise ValidationError({"selection": "expected an object."})
    errors: dict[str, str] = {}
    for name in sorted(set(selection) - set(SELECTIONS)):
        errors[f"selection.{name}"] = f"unknown criterion; known: {', '.join(SELECTIONS)}."
    clean: dict = {}
    given = {k: v for k, v in selection.items() if k in SELECTIONS and v not in (None, "", [])}
    if not given and not errors:
        errors["selection"] = f"name at least one of {', '.join(SELECTIONS)}."
    for name, value in given.items():
        field = f"selection.{name}"
        try:
            if name == "batch":
                pk = _whole(value, field, 1, 2**31 - 1)
                if not project.import_batches.filter(pk=pk).exists():
                    raise ValidationError({field: f"no import batch #{pk} in this project."})
                if not ImportRecord.objects.filter(batch_id=pk, prompt__isnull=False).exists():
                    raise ValidationError(
                        {
                            field: f"import batch #{pk} records no prompts (empty, or imported "
                            "before imports recorded them); select its prompts by tag instead."
                        }  # fmt: skip
                    )
                clean[name] = pk
            elif name == "tags":
                if isinstance(value, str):
                    value = [t for t in value.split(",")]
                clean[name] = sorted(set(rules.clean_tags(value, field)))
                if not clean[name]:
                    del clean[name]
            elif name == "snapshot":
                pk = _whole(value, field, 1, 2**31 - 1)
                snapshot = project.snapshots.filter(pk=pk).first()
                if snapshot is None:
                    raise ValidationError({field: f"no snapshot #{pk} in this project."})
                if snapshot.kind != SnapshotKind.PROMPTS:
                    raise ValidationError(
                        {
                            field: f"snapshot #{pk} is a {snapshot.kind} snapshot; select a prompts one."
                        }
                    )
                if snapshot.status != Snapshot.Status.READY:
                    raise ValidationError(
                        {field: f"snapshot #{pk} is {snapshot.status}, not ready."}
                    )
                clean[name] = pk
            elif name == "without_demonstrations":
                clean[name] = _whole(value, field, 1, MAX_REQUIRED)
        except ValidationError as error:
            errors.update({k: " ".join(v) for k, v in error.message_dict.items()})
    if errors:
        raise ValidationError(errors)
    if not clean:
        raise ValidationError({"selection": f"name at least one of {', '.join(SELECTIONS)}."})
    return clean


@transaction.atomic
def task_batch_request(
    *,
    project: Project,
    kind: str,
    selection: dict,
    required: int | None = None,
    priority: int = 0,
    round: int = 1,
    instructions: str = "",
    user=None,
    enqueue: bool = True,
) -> TaskBatch:
    """Record a batch of tasks to create and (by default) queue it on commit. The same request
    made while such a batch is still queued or running gets that batch (`reused`); made again
    after it finished, it creates only what is missing (nothing, when nothing changed).
    ValidationError names every bad field."""
    errors: dict[str, str] = {}

    def check(field, fn):
        try:
            return fn()
        except ValidationError as error:
            errors.update({k: " ".join(v) for k, v in error.message_dict.items()})
            return None

    if kind not in BULK_KINDS:
        errors["kind"] = f"{kind!r} is not one of {', '.join(BULK_KINDS)}."
    elif not project.enabled(kind):
        errors["kind"] = f"{kind} tasks are not enabled in this project."
    clean = check("selection", lambda: selection_clean(project, selection))
    required = project.overlap if required in (None, "") else required
    required = check("required", lambda: _whole(required, "required", 1, MAX_REQUIRED))
    priority = check("priority", lambda: _whole(priority, "priority", -32768, 32767))
    round = check("round", lambda: _whole(round, "round", 1, 32767))
    instructions = check(
        "instructions", lambda: rules.clean_text(instructions or "", "instructions", required=False)
    )
    if errors:
        raise ValidationError(errors)
    settings = {"kind": kind, "selection": clean, "required": required, "priority": priority,
                "round": round, "instructions": instructions}  # fmt: skip
    batch, created = job_get_or_create(
        TaskBatch,
        fingerprint=job_fingerprint(project=project.pk, **settings),
        defaults={"project": project, "created_by": user, **settings},
    )
    if created and enqueue:
        enqueue_on_commit("annotation.tasks.task_batch_run", batch.pk)
    return batch


# --- The selection ---------------------------------------------------------------------------


def _snapshot_hashes(snapshot: Snapshot) -> set[str]:
    """The content hashes of the prompts a prompts snapshot holds, read from its split files."""
    where = Path(snapshot.path)
    hashes: set[str] = set()
    try:
        for split in snapshot.manifest["splits"].values():
            path = where / split["path"]
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                values = pq.read_table(path, columns=["prompt"]).column("prompt").to_pylist()
            else:
                with path.open(encoding="utf-8") as fh:
                    values = [json.loads(line)["prompt"] for line in fh if line.strip()]
            for value in values:
                hashes.add(content_hash(value))
                # A text prompt in a conversational snapshot is one user turn.
                if isinstance(value, list) and len(value) == 1 and value[0]["role"] == "user":
                    hashes.add(content_hash(value[0]["content"]))
    except (OSError, KeyError, ValueError) as error:
        raise ValidationError(
            {
                "selection.snapshot": f"the files of snapshot #{snapshot.pk} cannot be read "
                f"({error}); build it again."
            }  # fmt: skip
        ) from None
    return hashes


def prompt_ids_selected(project: Project, selection: dict) -> list[int]:
    """The ids of the prompts `selection` (cleaned) names, in id order."""
    prompts = R.prompts_in_scope(project, {"tags": selection.get("tags") or []})
    # `has_key` first: a missing key compares as NULL, and NOT (NULL) would drop every prompt.
    prompts = prompts.exclude(Q(metadata__has_key="document") & Q(metadata__document=True))
    if "batch" in selection:
        records = ImportRecord.objects.filter(batch_id=selection["batch"])
        prompts = prompts.filter(id__in=records.values("prompt_id"))
    if "without_demonstrations" in selection:
        demonstrations = (
            rules.counted(Annotation.objects.filter(kind=TaskKind.DEMONSTRATION))
            .filter(task__prompt_id=OuterRef("pk"))
            .order_by()
            .values("task__prompt_id")
            .annotate(n=Count("id"))
            .values("n")
        )
        written = Coalesce(Subquery(demonstrations), Value(0), output_field=IntegerField())
        prompts = prompts.alias(written=written).filter(
            written__lt=selection["without_demonstrations"]
        )
    if "snapshot" in selection:
        hashes = _snapshot_hashes(Snapshot.objects.get(pk=selection["snapshot"]))
        rows = prompts.order_by("id").values_list("id", "content_hash")
        return [pk for pk, digest in rows if digest in hashes]
    return list(prompts.order_by("id").values_list("id", flat=True))


def candidate_sets(kind: str, pool: list[Response], k: int) -> list[tuple[Response, ...]] | None:
    """The candidates of each task a prompt with this pool gets; None: too few responses."""
    if kind == TaskKind.DEMONSTRATION:
        return [()]
    if kind == TaskKind.RANK:
        return [tuple(pool)] if len(pool) >= k else None
    if kind == TaskKind.COMPARE:
        return list(combinations(pool, 2)) or None
    if kind == TaskKind.RATE:
        return [(response,) for response in pool] or None
    raise ValueError(kind)


def _pools(prompt_ids: list[int], k: int) -> dict[int, list[Response]]:
    """Each prompt's latest `k` responses, in id order."""
    latest: dict[int, list[Response]] = defaultdict(list)
    responses = Response.objects.filter(prompt_id__in=prompt_ids).only("id", "prompt_id")
    for response in responses.order_by("prompt_id", "-id"):
        if len(latest[response.prompt_id]) < k:
            latest[response.prompt_id].append(response)
    return {pk: sorted(pool, key=lambda r: r.pk) for pk, pool in latest.items()}


def _existing(batch: TaskBatch, prompt_ids: list[int]) -> set[tuple[int, frozenset]]:
    """(prompt id, candidate ids) of the tasks of this kind and round there already are."""
    tasks = dict(
        Task.objects.filter(
            project=batch.project_id,
            kind=batch.kind,
            round=batch.round,
            is_gold=False,
            prompt_id__in=prompt_ids,
        ).values_list("id", "prompt_id")
    )
    candidates: dict[int, set[int]] = defaultdict(set)
    links = Task.candidates.through.objects.filter(task_id__in=list(tasks))
    for task_id, response_id in links.values_list("task_id", "response_id"):
        candidates[task_id].add(response_id)
    return {(prompt_id, frozenset(candidates[pk])) for pk, prompt_id in tasks.items()}


# --- The work --------------------------------------------------------------------------------


def task_batch_run(*, batch: TaskBatch, worker: str = "local") -> TaskBatch:
    """Claim a queued batch and create its tasks chunk by chunk, recording progress and counts
    on the row. Raises JobNotQueued, creating nothing, when the batch is not queued (a twin
    message or a retry claimed it, or it finished); a failure is recorded on the row
    (`error`), the chunks done before it kept."""
    if not job_claim(TaskBatch, batch.pk, worker=worker):
        batch.refresh_from_db()
        raise JobNotQueued(
            f"task batch #{batch.pk} is {batch.get_status_display().lower()}, not queued: "
            "another worker has it (or had it); wait for it or request the batch again."
        )
    with job_heartbeat(TaskBatch, batch.pk, worker=worker):
        try:
            _create(batch)
        except Exception as error:
            if isinstance(error, ValidationError):
                message = "; ".join(f"{k}: {' '.join(v)}" for k, v in error.message_dict.items())
            else:
                message = f"{type(error).__name__}: {error}. Fix the cause and request it again."
            _save(batch, status=TaskBatch.Status.FAILED, error=message, finished_at=timezone.now())
            raise
    _save(batch, status=TaskBatch.Status.DONE, finished_at=timezone.now())
    return batch


def _save(batch: TaskBatch, **fields) -> None:
    TaskBatch.objects.filter(pk=batch.pk).update(**fields)
    for name, value in fields.items():
        setattr(batch, name, value)


def _create(batch: TaskBatch) -> None:
    project = batch.project
    prompt_ids = prompt_ids_selected(project, batch.selection)
    counts = {"selected": len(prompt_ids), "created": 0, "already_there": 0,
              "skipped_too_few_responses": 0, "skipped_prompt_ids": []}  # fmt: skip
    skipped: list[int] = counts["skipped_prompt_ids"]
    _save(batch, prompts_total=len(prompt_ids), prompts_done=0, counts=counts)
    for start in range(0, len(prompt_ids), CHUNK):
        chunk = prompt_ids[start : start + CHUNK]
        with transaction.atomic():
            # One writer of bulk tasks per project at a time: the check of what exists and the
            # insert are one step for any two batches that overlap.
            project = Project.objects.select_for_update().get(pk=project.pk)
            k = project.k_responses
            prompts = Prompt.objects.filter(id__in=chunk).only("id", "project_id").in_bulk()
            pools = _pools(chunk, k) if batch.kind != TaskKind.DEMONSTRATION else {}
            existing = _existing(batch, chunk)
            items = []
            for pk in chunk:
                sets = candidate_sets(batch.kind, pools.get(pk, []), k)
                if sets is None:
                    counts["skipped_too_few_responses"] += 1
                    if len(skipped) < SKIPPED_EXAMPLES:
                        skipped.append(pk)
                    continue
                for candidates in sets:
                    if (pk, frozenset(r.pk for r in candidates)) in existing:
                        counts["already_there"] += 1
                    else:
                        items.append((prompts[pk], candidates))
            services.tasks_bulk_create(
                project=project,
                kind=batch.kind,
                items=items,
                required=batch.required,
                priority=batch.priority,
                round=batch.round,
                instructions=batch.instructions,
            )
            counts["created"] += len(items)
            _save(batch, prompts_done=start + len(chunk), counts=dict(counts))
