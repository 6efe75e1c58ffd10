"""Writes of the annotation app: projects, prompts, tasks and judgments (leases are
`annotation.leasing`'s).

Views, API views, management commands and Celery tasks call these; none of them writes rows
itself. Every function is keyword-only and atomic.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from contextlib import contextmanager, nullcontext

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from annotation import sql
from annotation.errors import IdempotencyConflict, LeaseError
from annotation.gold import gold_answer_check, gold_judged
from annotation.leasing import late_submit_eligible, slot_still_free
from annotation.models import (
    Annotation,
    Assignment,
    Guideline,
    Membership,
    Project,
    Prompt,
    Response,
    ReviewStatus,
    Role,
    Source,
    Task,
    TaskKind,
    content_hash,
)
from annotation.roles import user_role_sync
from annotation.rules import (
    KINDS,
    clean_tags,
    clean_text,
    model_text,
    validate_messages,
    validate_payload,
)

# --- Projects ------------------------------------------------------------------------------


@transaction.atomic
def project_create(
    *,
    name: str,
    slug: str,
    owner=None,
    task_kinds: Sequence[str] = (),
    k_responses: int = 4,
    overlap: int = 1,
    lease_seconds: int = 900,
    guidelines: str = "",
    description: str = "",
    gold_rate: float = 0.0,
    gold_window: int = 10,
    gold_min_accuracy: float = 0.0,
    repeats_allowed: bool = False,
    arena_margin: float = 0.0,
    label_config: dict | None = None,
    playground_labelers: bool = False,
) -> Project:
    """A new project; `label_config` (annotation.labels) left out gives today's labels."""
    project = Project(
        name=name,
        slug=slug,
        description=description,
        task_kinds=list(task_kinds),
        k_responses=k_responses,
        overlap=overlap,
        lease_seconds=lease_seconds,
        gold_rate=gold_rate,
        gold_window=gold_window,
        gold_min_accuracy=gold_min_accuracy,
        repeats_allowed=repeats_allowed,
        arena_margin=arena_margin,
        label_config=label_config or {},
        playground_labelers=playground_labelers,
    )
    project.full_clean()
    project.save()
    if owner is not None:
        membership_set(project=project, user=owner, role=Role.ADMIN)
    if guidelines:
        guideline_publish(project=project, body=guidelines, author=owner)
    return project


@transaction.atomic
def project_update(
    *,
    project: Project,
    name: str | None = None,
    slug: str | None = None,
    description: str | None = None,
    task_kinds: Sequence[str] | None = None,
    k_responses: int | None = None,
    overlap: int | None = None,
    lease_seconds: int | None = None,
    gold_rate: float | None = None,
    gold_window: int | None = None,
    gold_min_accuracy: float | None = None,
    repeats_allowed: bool | None = None,
    arena_margin: float | None = None,
    label_config: dict | None = None,
    playground_labelers: bool | None = None,
) -> Project:
    """Change a project's settings; an argument left out (None) keeps its value.

    `label_config` (annotation.labels) is checked whole and stored as cleaned; judgments already
    made are kept as they were (a flag removed later is still in their payloads)."""
    changes = {
        "name": name,
        "slug": slug,
        "description": description,
        "task_kinds": list(task_kinds) if task_kinds is not None else None,
        "k_responses": k_responses,
        "overlap": overlap,
        "lease_seconds": lease_seconds,
        "gold_rate": gold_rate,
        "gold_window": gold_window,
        "gold_min_accuracy": gold_min_accuracy,
        "repeats_allowed": repeats_allowed,
        "arena_margin": arena_margin,
        "label_config": label_config,
        "playground_labelers": playground_labelers,
    }
    changed = [field for field, value in changes.items() if value is not None]
    for field in changed:
        setattr(project, field, changes[field])
    project.full_clean()
    if changed:
        project.save(update_fields=changed)
    return project


@transaction.atomic
def membership_set(*, project: Project, user, role: str) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": f"{role!r} is not one of {', '.join(Role.values)}."})
    membership, _ = Membership.objects.update_or_create(
        project=project, user=user, defaults={"role": role}
    )
    user_role_sync(user)
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    """End a membership; the user keeps only the groups of the roles they still hold."""
    user = membership.user
    membership.delete()
    user_role_sync(user)


@transaction.atomic
def guideline_publish(*, project: Project, body: str, author=None) -> Guideline:
    Project.objects.select_for_update().get(pk=project.pk)  # serialize version numbers
    latest = project.guidelines.order_by("-version").values_list("version", flat=True).first()
    return Guideline.objects.create(
        project=project, version=(latest or 0) + 1, body=body, created_by=author
    )


# --- Prompts and responses -------------------------------------------------------------------


def _prompt_set(prompt: Prompt, item: dict) -> None:
    """Set the content of `item` (`text` or `messages`, plus tags, language, metadata) on
    `prompt`, checked as every write of a prompt is, with its dedup hash. ValidationError names
    the field."""
    if item.get("messages") is not None:
        validate_messages(item["messages"])
        prompt.messages, prompt.text = item["messages"], ""
    else:
        prompt.messages, prompt.text = None, clean_text(item.get("text"), "text")
    prompt.tags = clean_tags(item.get("tags"))
    prompt.language = str(item.get("language") or "")[:16]
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValidationError({"metadata": "expected an object."})
    prompt.metadata = metadata
    prompt.content_hash = _hash_of(prompt)


def _hash_of(prompt: Prompt) -> str:
    return content_hash(prompt.messages or prompt.text)


def _insert_all(model, rows: list) -> None:
    """Insert new rows with their ids set: a few statements of many rows where the database
    returns the ids of a bulk insert (PostgreSQL, SQLite 3.35+; `sql.insert_many`), else one
    per row (bulk_create would leave them unset)."""
    if connection.features.can_return_rows_from_bulk_insert:
        sql.insert_many(rows)
        return
    with transaction.atomic():
        for row in rows:
            row.save(force_insert=True)


@contextmanager
def _errors_at(where: str):
    """A ValidationError raised inside, its fields prefixed with `where` (an item's index)."""
    try:
        yield
    except ValidationError as error:
        raise ValidationError({f"{where}.{k}": v for k, v in error.message_dict.items()}) from None


def _stored_or_inserted(model, built: list, known: dict, *, key) -> list[tuple]:
    """(row, created) for each built row: the stored row of the same key in `known`, or the
    built one, inserted with the other new ones in one go (a key built twice is stored once)."""
    result, new = [], []
    for row in built:
        found = known.get(key(row))
        if found is None:
            known[key(row)] = row
            new.append(row)
        result.append((found or row, found is None))
    _insert_all(model, new)
    return result


def _prompts_by_hash(project: Project, hashes: set[str]) -> dict[str, Prompt]:
    """The project's prompts with these content hashes (looked up in chunks: a bulk request
    must not outgrow the database's limit on parameters)."""
    found: dict[str, Prompt] = {}
    ordered = sorted(hashes)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        rows = sql.project_rows_by_key(
            Prompt, project_id=project.pk, field="content_hash", keys=chunk
        )
        found.update((p.content_hash, p) for p in rows)
    return found


# Not wrapped in a transaction of its own: every item is checked before the one write, a
# bulk insert (atomic itself), so the savepoint would buy nothing on the importer's per-row path.
def prompts_get_or_create(
    *,
    project: Project,
    items: Iterable[dict],
    source: str = Source.SEED,
    author=None,
) -> list[tuple[Prompt, bool]]:
    """One (prompt, created) per item, a dict with `text` or `messages` (plus tags, language,
    metadata): the project's prompt of the same normalized content when there is one (stored
    before, or an earlier item's), else a new prompt. Never a prompt stored twice.

    Every item is checked before anything is written; a bad item raises ValidationError naming
    its index and field, and nothing is written. One query looks up the existing prompts.
    """
    prompts: list[Prompt] = []
    for index, item in enumerate(items):
        where = f"items[{index}]"
        if not isinstance(item, dict):
            raise ValidationError({where: "expected an object."})
        prompt = Prompt(project=project, source=source, created_by=author)
        with _errors_at(where):
            _prompt_set(prompt, item)
        prompts.append(prompt)
    known = _prompts_by_hash(project, {p.content_hash for p in prompts})
    return _stored_or_inserted(Prompt, prompts, known, key=lambda p: p.content_hash)


def prompts_create(
    *,
    project: Project,
    items: Iterable[dict],
    source: str = Source.SEED,
    author=None,
) -> tuple[list[Prompt], int]:
    """Create prompts from dicts with `text` or `messages` (plus tags, language, metadata).

    Returns (created prompts, number of duplicates skipped). Duplicates of existing prompts or of
    earlier items (same normalized content) are skipped, never stored twice. A bad item raises
    ValidationError naming its index and field, and nothing is written (prompts_get_or_create).
    """
    pairs = prompts_get_or_create(project=project, items=items, source=source, author=author)
    created = [prompt for prompt, new in pairs if new]
    return created, len(pairs) - len(created)


def prompt_check(*, prompt: Prompt, item: dict) -> Prompt:
    """Set `item` on `prompt` (of its project) as prompt_save would, without writing: checked,
    hashed, and refused when another prompt of the project has the same content. For a form to
    name the fault before it saves."""
    _prompt_set(prompt, item)
    duplicate = (
        Prompt.objects.filter(project_id=prompt.project_id, content_hash=prompt.content_hash)
        .exclude(pk=prompt.pk)
        .first()
    )
    if duplicate is not None:
        field = "messages" if prompt.messages else "text"
        raise ValidationError(
            {field: f"has the same content as prompt #{duplicate.pk} of this project."}
        )
    return prompt


@transaction.atomic
def prompt_save(*, prompt: Prompt, item: dict) -> Prompt:
    """Write one prompt, new (its project, source and author set) or changed, with the content
    of `item` checked by prompt_check: a duplicate is refused, not skipped (prompts_create
    skips them in bulk)."""
    prompt_check(prompt=prompt, item=item)
    prompt.save()
    return prompt


def _response_build(
    *,
    prompt: Prompt,
    text: str,
    origin: str,
    author=None,
    model_artifact=None,
    generation: dict | None = None,
    metadata: dict | None = None,
) -> Response:
    """An unsaved response, checked as every write of one is."""
    if origin == Source.MODEL and isinstance(text, str):
        text = model_text(text)  # a byte-level model can emit NUL (see annotation.rules)
    return Response(
        prompt=prompt,
        text=clean_text(text, "text", required=origin != Source.MODEL),
        origin=origin,
        created_by=author,
        model_artifact=model_artifact,
        generation=generation or {},
        metadata=metadata or {},
    )


def response_check(*, prompt: Prompt, text: str, origin: str, **fields) -> Response:
    """The response response_create would write, checked and unsaved: for a form to name the
    fault before it saves."""
    return _response_build(prompt=prompt, text=text, origin=origin, **fields)


@transaction.atomic
def response_create(*, prompt: Prompt, text: str, origin: str, **fields) -> Response:
    """Write one response; `fields` are `_response_build`'s (author, model_artifact,
    generation, metadata)."""
    response = _response_build(prompt=prompt, text=text, origin=origin, **fields)
    response.save()
    return response


def _responses_built(prompt: Prompt, items: Sequence[dict], origin: str) -> list[Response]:
    """The unsaved responses of `items` to `prompt`, each checked as response_create checks it
    (ValidationError naming its index)."""
    built: list[Response] = []
    for index, item in enumerate(items):
        with _errors_at(f"items[{index}]"):
            built.append(
                _response_build(
                    prompt=prompt,
                    text=item.get("text"),
                    origin=origin,
                    metadata=item.get("metadata"),
                )
            )
    return built


def _responses_stored(
    built: list[Response], new_prompts: Collection[int] = ()
) -> dict[tuple[int, str], Response]:
    """The stored responses of the same prompt and text as `built`'s: the first by id of each
    (looked up in chunks of prompts: a bulk request must not outgrow the database's limit).
    Prompts of `new_prompts` have none: not looked up."""
    known: dict[tuple[int, str], Response] = {}
    by_prompt: dict[int, set[str]] = {}
    for response in built:
        if response.prompt_id not in new_prompts:
            by_prompt.setdefault(response.prompt_id, set()).add(response.text)
    prompt_ids = sorted(by_prompt)
    for start in range(0, len(prompt_ids), 500):
        chunk = prompt_ids[start : start + 500]
        texts = set().union(*(by_prompt[i] for i in chunk))
        stored = Response.objects.filter(prompt_id__in=chunk, text__in=texts).order_by("-id")
        for response in stored:
            known[(response.prompt_id, response.text)] = (
                response  # the last one set: the first by id
            )
    return known


# No savepoint of its own, for the reason given above prompts_get_or_create.
def responses_get_or_create(
    *, prompt: Prompt, items: Sequence[dict], origin: str
) -> list[tuple[Response, bool]]:
    """One (response, created) per item (`text`, optional `metadata`): the prompt's first
    response with exactly this text, or a new one, checked as response_create checks it. Every
    item is checked before anything is written (ValidationError naming its index); one query
    looks up the existing responses."""
    (pairs,) = responses_get_or_create_many(requests=[(prompt, items, origin)], where=False)
    return pairs


def responses_get_or_create_many(
    *,
    requests: Sequence[tuple[Prompt, Sequence[dict], str]],
    where: bool = True,
    new_prompts: Collection[int] = (),
) -> list[list[tuple[Response, bool]]]:
    """responses_get_or_create for many (prompt, items, origin) requests at once, as if made one
    after the other: a text given twice for one prompt (in one request or two) is stored once.
    Every item of every request is checked before anything is written (ValidationError naming
    `requests[i].items[j]`; `where=False`: `items[j]`, for one request); one query per 500
    prompts looks up the stored responses, one bulk insert writes the new ones. `new_prompts`:
    ids of prompts the caller has just created (prompts_get_or_create), which can have no stored
    response: not looked up (the importer's lookup sent every text of a chunk for nothing)."""
    built: list[list[Response]] = []
    for index, (prompt, items, origin) in enumerate(requests):
        if where:
            with _errors_at(f"requests[{index}]"):
                built.append(_responses_built(prompt, items, origin))
        else:
            built.append(_responses_built(prompt, items, origin))
    flat = [response for responses in built for response in responses]
    known = _responses_stored(flat, new_prompts)
    pairs = iter(_stored_or_inserted(Response, flat, known, key=lambda r: (r.prompt_id, r.text)))
    return [[next(pairs) for _ in responses] for responses in built]


# --- Tasks ---------------------------------------------------------------------------------


def task_check(
    *, project: Project, kind: str, prompt: Prompt | None, candidates: Sequence[Response]
) -> None:
    """What every task is, however it is written (created, imported, added in the admin): a
    known kind, the number of candidates the kind takes, all answering its prompt, the prompt
    of its project."""
    if kind not in TaskKind.values:
        raise ValidationError({"kind": f"{kind!r} is not one of {', '.join(TaskKind.values)}."})
    low, high = KINDS[kind].candidates
    if not low <= len(candidates) <= high:
        raise ValidationError(
            {"candidates": f"a {kind} task takes {low}–{high} responses, got {len(candidates)}."}
        )
    if kind != TaskKind.WRITE_PROMPT and prompt is None:
        raise ValidationError({"prompt": f"a {kind} task needs a prompt."})
    for response in candidates:
        if response.prompt_id != prompt.pk:
            raise ValidationError({"candidates": f"response {response.pk} answers another prompt."})
    if prompt is not None and prompt.project_id != project.pk:
        raise ValidationError({"prompt": "belongs to another project."})


@transaction.atomic
def task_create(
    *,
    project: Project,
    kind: str,
    prompt: Prompt | None = None,
    candidates: Sequence[Response] = (),
    required: int | None = None,
    priority: int = 0,
    round: int = 1,
    is_gold: bool = False,
    gold_answer=None,
    instructions: str = "",
) -> Task:
    task_check(project=project, kind=kind, prompt=prompt, candidates=candidates)
    if is_gold:
        gold_answer = gold_answer_check(
            kind=kind,
            answer=gold_answer,
            candidate_ids=[r.pk for r in candidates],
            labels=project.labels,
        )
    task = Task.objects.create(
        project=project,
        kind=kind,
        prompt=prompt,
        required=required or project.overlap,
        priority=priority,
        round=round,
        is_gold=is_gold,
        gold_answer=gold_answer,
        instructions=instructions,
    )
    if candidates:
        task.candidates.set(candidates)
    return task


def tasks_bulk_create(
    *,
    project: Project,
    kind: str,
    items: Sequence[tuple[Prompt, Sequence[Response]]],
    required: int | None = None,
    priority: int = 0,
    round: int = 1,
    instructions: str = "",
) -> list[Task]:
    """task_create for many (prompt, candidates) items of one kind and settings: every item
    checked by task_check before anything is written (a bad item raises ValidationError naming
    its index, and nothing is written), then the tasks and their candidates inserted in one
    statement each. The caller chunks a large selection and decides what already exists."""
    for index, (prompt, candidates) in enumerate(items):
        with _errors_at(f"items[{index}]"):
            task_check(project=project, kind=kind, prompt=prompt, candidates=candidates)
    tasks = [
        Task(
            project=project,
            kind=kind,
            prompt=prompt,
            required=required or project.overlap,
            priority=priority,
            round=round,
            instructions=instructions,
        )
        for prompt, _ in items
    ]
    with transaction.atomic():
        _insert_all(Task, tasks)
        links = Task.candidates.through
        Task.candidates.through.objects.bulk_create(
            links(task_id=task.pk, response_id=response.pk)
            for task, (_, candidates) in zip(tasks, items, strict=True)
            for response in candidates
        )
    return tasks


def task_settings_check(*, task: Task, required: int, status: str) -> int:
    """What task_update checks; returns the task's judgments counted so far. For a form to name
    the fault before it saves."""
    if status not in Task.Status.values:
        raise ValidationError({"status": f"expected one of {', '.join(Task.Status.values)}."})
    done = Task.objects.filter(pk=task.pk).values_list("done", flat=True).get()
    if required < max(1, done):
        raise ValidationError(
            {"required": f"{done} judgment(s) are in already; it cannot be lower than that."}
        )
    return done


@transaction.atomic
def task_update(
    *,
    task: Task,
    required: int,
    status: str,
    priority: int,
    round: int,
    is_gold: bool,
    gold_answer,
    instructions: str,
) -> Task:
    """Change a task's settings, all of them given. What it is (kind, prompt, candidates) stays:
    its judgments refer to them. `done` is counted by the submissions alone."""
    Task.objects.select_for_update().filter(pk=task.pk).exists()  # no submission counts meanwhile
    task.done = task_settings_check(task=task, required=required, status=status)
    if is_gold:
        gold_answer = gold_answer_check(
            kind=task.kind,
            answer=gold_answer,
            candidate_ids=task.candidate_ids(),
            labels=task.project.labels,
        )
    settings = {"required": required, "status": status, "priority": priority, "round": round,
                "is_gold": is_gold, "gold_answer": gold_answer, "instructions": instructions}  # fmt: skip
    for field, value in settings.items():
        setattr(task, field, value)
    task.save(update_fields=list(settings))
    return task


def task_import(
    *,
    project: Project,
    kind: str,
    prompt: Prompt,
    candidates: Sequence[Response] = (),
    judgments: Sequence[dict],
) -> tuple[Task, list[Annotation]]:
    """Record work done outside the platform (an import): a complete task, never served to
    labelers, with its judgments (dicts of `payload` and `provenance`). Each payload is checked
    and stored as a labeler's submission is, marked imported and pending review; an imported
    demonstration becomes a response as a labeler's does."""
    item = {"kind": kind, "prompt": prompt, "candidates": candidates, "judgments": judgments}
    ((task, annotations),) = tasks_import_many(project=project, items=[item], where=False)
    return task, annotations


@transaction.atomic
def tasks_import_many(
    *, project: Project, items: Sequence[dict], where: bool = True
) -> list[tuple[Task, list[Annotation]]]:
    """task_import for many items (dicts of its `kind`, `prompt`, `candidates`, `judgments`):
    every task and judgment checked before anything is written (ValidationError naming
    `items[i].` and the field; `where=False`: the field alone, for one item), then the tasks,
    their candidates and their judgments inserted in one statement each."""
    tasks, checked = [], []
    for index, item in enumerate(items):
        context = _errors_at(f"items[{index}]") if where else nullcontext()
        with context:
            kind, prompt = item["kind"], item["prompt"]
            candidates, judgments = item.get("candidates") or (), item["judgments"]
            task_check(project=project, kind=kind, prompt=prompt, candidates=candidates)
            count = max(1, len(judgments))
            task = Task(
                project=project,
                kind=kind,
                prompt=prompt,
                required=count,
                done=count,
                status=Task.Status.COMPLETE,
            )
            ids = sorted(response.pk for response in candidates)
            payloads = []
            for number, judgment in enumerate(judgments):
                with _errors_at(f"judgments[{number}]"):
                    payloads.append(validate_payload(task, judgment["payload"], candidate_ids=ids))
        tasks.append(task)
        checked.append((candidates, ids, judgments, payloads))
    _insert_all(Task, tasks)
    sql.insert_rows(
        Task.candidates.through,
        ("task_id", "response_id"),
        [
            (task.pk, response_id)
            for task, (candidates, *_) in zip(tasks, checked, strict=True)
            for response_id in dict.fromkeys(response.pk for response in candidates)  # as add()
        ],
    )
    result = []
    for task, (_, ids, judgments, payloads) in zip(tasks, checked, strict=True):
        annotations = [
            Annotation(
                task=task,
                kind=task.kind,
                payload=payload,
                shown_order=ids,
                source=Source.IMPORTED,
                provenance=judgment.get("provenance") or {},
            )
            for judgment, payload in zip(judgments, payloads, strict=True)
        ]
        result.append((task, annotations))
    _insert_all(Annotation, [a for _, annotations in result for a in annotations])
    for task, annotations in result:
        for annotation in annotations:
            _apply_side_effects(task, annotation, None)
    return result


# --- Judgments -----------------------------------------------------------------------------


def annotation_submit(
    *,
    task: Task,
    labeler,
    payload: dict,
    rationale: str = "",
    time_spent_ms: int = 0,
    idempotency_key: str = "",
    guideline_version: int | None = None,
    now=None,
) -> tuple[Annotation, bool]:
    """Record a labeler's judgment on a task they lease. Returns (annotation, created).

    Safe to retry: the same idempotency key, or a second submit of the same lease (a
    double-click), returns the first annotation instead of writing a second one; a key already
    used for another task is refused (IdempotencyConflict). `guideline_version` is the version
    the labeler's page showed; the current one when absent (or when it names no version of this
    project).

    Five statements in one transaction (see `annotation.sql` for why they are written by hand):
    the task lock, which also reads the candidates and the current guideline version; the
    caller's assignment; the insert; the assignment's and the task's updates. A retry is found
    through the assignment, so the key is only looked up when something goes wrong.
    """
    now = now or timezone.now()
    idempotency_key = (idempotency_key or "")[:128]
    rationale = clean_text(rationale or "", "rationale", required=False)
    try:
        with transaction.atomic():
            return _submit_locked(
                task,
                labeler,
                payload,
                rationale,
                time_spent_ms,
                idempotency_key,
                now,
                guideline_version,
            )
    except LeaseError as refused:
        # A lease lost to another labeler is over: say so on its row, outside the transaction
        # that the refusal rolled back.
        lost = getattr(refused, "expired_assignment", None)
        if lost is not None:
            Assignment.objects.filter(pk=lost, state=Assignment.State.ACTIVE).update(
                state=Assignment.State.EXPIRED, finished_at=now
            )
        raise
    except IntegrityError:
        # The key is unique per labeler: a concurrent retry with the same key won the race (its
        # row is returned), or the key was used for another task (refused).
        existing = _annotation_with_key(labeler, idempotency_key, task)
        if existing is not None:
            return existing, False
        raise


def _annotation_with_key(labeler, idempotency_key: str, task: Task) -> Annotation | None:
    """The labeler's annotation of `task` written with this key; IdempotencyConflict when the key
    was used for another task."""
    if not idempotency_key:
        return None
    existing = Annotation.objects.filter(labeler=labeler, idempotency_key=idempotency_key).first()
    if existing is not None and existing.task_id != task.pk:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used for another task; send a new key."
        )
    return existing


def _refused(message: str, labeler, idempotency_key: str, task: Task) -> LeaseError:
    # A key reused for another task is the caller's mistake to report first, as it always was.
    _annotation_with_key(labeler, idempotency_key, task)
    return LeaseError(message)


def _submit_locked(
    task, labeler, payload, rationale, time_spent_ms, idempotency_key, now, guideline_version=None
):
    rows = sql.fetch(sql.task_lock(task_id=task.pk))
    task, current_version, candidate_ids = sql.task_locked(rows)
    # A separate statement after the lock, so a concurrent submission of the same lease that
    # committed while we waited is seen (READ COMMITTED takes a fresh snapshot per statement).
    rows = sql.fetch(sql.assignment_of(task_id=task.pk, labeler=labeler))
    if not rows:
        raise _refused(
            "You do not hold this task. Take the next task and try again.",
            labeler,
            idempotency_key,
            task,
        )
    assignment = sql.instance(Assignment, rows[0])
    assignment.task = task
    if assignment.state == Assignment.State.SUBMITTED:
        first = Annotation.objects.get(assignment=assignment)
        if idempotency_key and idempotency_key != first.idempotency_key:
            _annotation_with_key(labeler, idempotency_key, task)
        return first, False
    if assignment.state != Assignment.State.ACTIVE:
        raise _refused(
            f"This task was {assignment.get_state_display().lower()}; your answer was not saved. "
            "Copy your text if you need it and take the next task.",
            labeler,
            idempotency_key,
            task,
        )
    payload = validate_payload(task, payload, candidate_ids=candidate_ids)
    if assignment.expires_at <= now and not slot_still_free(assignment=assignment, now=now):
        refused = _refused(
            "Your lease expired and another labeler took this task; your answer was not saved. "
            "Copy your text if you need it and take the next task.",
            labeler,
            idempotency_key,
            task,
        )
        refused.expired_assignment = assignment.pk  # marked by the caller, after the rollback
        raise refused
    if assignment.expires_at <= now and not late_submit_eligible(
        task=task, labeler=labeler, now=now
    ):
        refused = _refused(
            "Your lease expired and you have since judged this prompt in another task of this "
            "round (or hold one); your answer was not saved. Take the next task.",
            labeler,
            idempotency_key,
            task,
        )
        refused.expired_assignment = assignment.pk
        raise refused
    version = current_version
    if guideline_version is not None and guideline_version != version:
        # The page showed an older version: keep it if it is one of this project's.
        shown = Guideline.objects.filter(project_id=task.project_id, version=guideline_version)
        if shown.exists():
            version = guideline_version
    annotation = Annotation(
        task=task,
        labeler=labeler,
        assignment=assignment,
        kind=task.kind,
        payload=payload,
        rationale=rationale,
        shown_order=assignment.shown_order,
        time_spent_ms=max(0, min(int(time_spent_ms or 0), 24 * 3600 * 1000)),
        guideline_version=version,
        idempotency_key=idempotency_key,
        source=Source.LABELER,
        created_at=now,
    )
    sql.insert(annotation)
    sql.execute(sql.assignment_submitted(assignment=assignment, now=now))
    assignment.state, assignment.finished_at = Assignment.State.SUBMITTED, now
    sql.execute(sql.task_counted(task=task))
    task.done = min(task.done + 1, task.required)  # exact: the row is locked by us
    if task.done >= task.required and not task.is_gold:
        task.status = Task.Status.COMPLETE
    _apply_side_effects(task, annotation, labeler)
    if task.is_gold:
        gold_judged(project_id=task.project_id, labeler=labeler)
    return annotation, True


def _apply_side_effects(task: Task, annotation: Annotation, labeler) -> None:
    """Written prompts and demonstrations become data: a new prompt, a human response."""
    if task.kind == TaskKind.WRITE_PROMPT:
        project = task.project
        item = dict(annotation.payload)
        created, _ = prompts_create(
            project=project, items=[item], source=annotation.source, author=labeler
        )
        if created and project.enabled(TaskKind.DEMONSTRATION):
            task_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=created[0])
    elif task.kind == TaskKind.DEMONSTRATION:
        response_create(
            prompt=task.prompt,
            text=annotation.payload["text"],
            origin=annotation.source,
            author=labeler,
            metadata={"annotation": annotation.pk},
        )
    elif annotation.payload.get("better"):
        better_answer_record(task=task, annotation=annotation, labeler=labeler)


def better_answer_record(*, task: Task, annotation: Annotation, labeler) -> Annotation:
    """ "Write a better one": the answer a labeler wrote because every response of `task` was
    unacceptable becomes a demonstration of the prompt, judged already (a finished
    demonstration task whose one judgment is theirs, `provenance.better_than` naming the task
    and judgment), and so a human response. A preference snapshot with
    `unacceptable: vs_demonstration` pairs it, chosen, against each rejected response."""
    demonstration_task = Task.objects.create(
        project_id=task.project_id, kind=TaskKind.DEMONSTRATION, prompt=task.prompt,
        required=1, done=1, status=Task.Status.COMPLETE, round=task.round,
        instructions=f"Written as a better answer than the responses of task #{task.pk}.",
    )  # fmt: skip
    demonstration = Annotation.objects.create(
        task=demonstration_task,
        labeler=labeler,
        kind=TaskKind.DEMONSTRATION,
        payload={"text": annotation.payload["better"]},
        guideline_version=annotation.guideline_version,
        source=annotation.source,
        provenance={"better_than": {"task": task.pk, "annotation": annotation.pk}},
    )
    _apply_side_effects(demonstration_task, demonstration, labeler)
    return demonstration


@transaction.atomic
def annotation_correct(
    *, original: Annotation, labeler, payload: dict, rationale: str = ""
) -> Annotation:
    """A correction is a new annotation that supersedes the old one; the old one stays."""
    if original.labeler_id != labeler.pk:
        raise LeaseError("Only the author of an annotation can correct it.")
    if hasattr(original, "superseded_by"):
        raise ValidationError({"original": "has already been superseded; correct the newest one."})
    clean_payload = validate_payload(original.task, payload)
    guideline = original.task.project.current_guideline()
    return Annotation.objects.create(
        task=original.task,
        labeler=labeler,
        kind=original.kind,
        payload=clean_payload,
        rationale=clean_text(rationale or "", "rationale", required=False),
        shown_order=original.shown_order,
        guideline_version=guideline.version if guideline else None,
        supersedes=original,
        source=original.source,
    )


@transaction.atomic
def annotation_review(
    *, annotation: Annotation, reviewer, decision: str, note: str = ""
) -> Annotation:
    if decision not in ReviewStatus.values:
        raise ValidationError({"decision": f"expected one of {', '.join(ReviewStatus.values)}."})
    annotation.review_status = decision
    annotation.reviewed_by = reviewer
    annotation.reviewed_at = timezone.now()
    annotation.review_note = note
    annotation.save(update_fields=["review_status", "reviewed_by", "reviewed_at", "review_note"])
    return annotation
