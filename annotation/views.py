"""Labeler pages (server-rendered, htmx). Views parse input, call one service, render.

The workspace is one page: "Start labeling", submit and skip swap the next task into `#main`
(htmx) and push its URL, so a labeler moves from task to task without a full reload. Every
view also works as a plain form post (full page), so a page without JavaScript still works.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import push_url
from django_htmx.middleware import HtmxDetails

from annotation import access, leasing, selectors, services
from annotation.errors import IdempotencyConflict, LabelerPaused, LeaseError
from annotation.models import Assignment, Project, Role, TaskKind

# InstructGPT's use-case categories, offered as ready-made tags for written prompts.
PROMPT_CATEGORIES = [
    "generation",
    "open QA",
    "brainstorming",
    "chat",
    "rewrite",
    "summarization",
    "classification",
    "closed QA",
    "extract",
    "other",
]
SKIP_REASONS = {
    "unclear": "The task is unclear",
    "expertise": "Needs expertise I do not have",
    "offensive": "Content I do not want to judge",
    "broken": "Something is broken (missing or garbled text)",
    "other": "Another reason",
}
TURN_ROLES = ("user", "assistant", "system")
# Kinds that show two responses side by side, as A and B.
PAIRED_KINDS = (TaskKind.COMPARE, TaskKind.ARENA)


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _partial(request: HtmxHttpRequest) -> bool:
    # A history restore (back button after the cache is gone) needs the whole page.
    return bool(request.htmx) and not request.htmx.history_restore_request


@login_required
@require_GET
def home(request: HtmxHttpRequest) -> HttpResponse:
    paused = dict(
        request.user.memberships.filter(paused=True).values_list("project_id", "paused_reason")
    )
    projects = []
    for p in selectors.projects_for(request.user).order_by("name"):
        role = selectors.role_in(request.user, p)
        projects.append(
            {
                "project": p,
                "role": role,
                "can": access.role_can(role),
                "links": _role_links(p, role),
                # The curate page (quality, bulk tasks) is reached from here, not by its URL.
                "curates": access.role_at_least(role, Role.CURATOR),
                "playground": access.may_use_playground(request.user, p),
                "paused": paused.get(p.pk),
                **selectors.project_progress(p, request.user),
            }
        )
    return render(
        request,
        "annotation/home.html",
        {"projects": projects, "is_superuser": request.user.is_superuser},
    )


def _role_links(project: Project, role: str | None) -> list[dict]:
    """The pages a role opens in a project, each a link: label, curate, snapshots, train, runs."""
    links = [{"id": "label", "text": "Label", "href": "#next-" + project.slug}]
    if access.role_at_least(role, Role.CURATOR):
        links += [
            {"id": "curate", "text": f"Curate {project.name}",
             "href": reverse("annotation:curate", args=[project.slug])},
            {"id": "snapshots", "text": "Snapshots",
             "href": reverse("annotation:curate_snapshots", args=[project.slug])},
        ]  # fmt: skip
    if access.role_at_least(role, Role.ENGINEER):
        # The training pages live in the admin (by URL name: annotation imports no training).
        links += [
            {"id": "train", "text": "Train",
             "href": reverse("admin:training_trainingrun_launch")},
            {"id": "runs", "text": "Runs", "href": reverse("admin:training_trainingrun_changelist")},
        ]  # fmt: skip
    if access.role_at_least(role, Role.ADMIN):
        links.append(
            {"id": "members", "text": "Members",
             "href": reverse("admin:annotation_membership_changelist") + f"?project={project.pk}"}
        )  # fmt: skip
    return links


@login_required
@require_POST
def project_next(request: HtmxHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_get(request.user, slug=slug)
    return _next_task(request, project)


@login_required
@require_GET
def task_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    assignment = selectors.assignment_for(request.user, task_pk=pk)
    if not assignment.is_live():
        try:
            assignment = leasing.lease_renew(assignment=assignment)
        except LeaseError as error:
            return _next_task(request, assignment.task.project, notice=str(error), level="error")
    return _render_task(request, assignment)


@login_required
@require_POST
def task_submit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    assignment = selectors.assignment_for(request.user, task_pk=pk)
    task = assignment.task
    values = _posted_values(request.POST, assignment)
    try:
        payload = _payload_from(values, assignment)
        services.annotation_submit(
            task=task,
            labeler=request.user,
            payload=payload,
            rationale=values["rationale"],
            time_spent_ms=_time_spent_ms(assignment),
            idempotency_key=values["idempotency_key"],
            guideline_version=_int_or_none(request.POST.get("guideline_version")),
        )
    except ValidationError as error:
        errors = _messages_of(_in_form_words(error, assignment))
        return _render_task(request, assignment, values=values, errors=errors)
    except (LeaseError, IdempotencyConflict) as error:
        # Never lose typed work: the draft travels with the message to the next page.
        return _next_task(
            request, task.project, notice=str(error), level="error", draft=_draft_of(values)
        )
    return _next_task(request, task.project, notice="Saved.")


@login_required
@require_POST
def task_skip(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    assignment = selectors.assignment_for(request.user, task_pk=pk)
    code = request.POST.get("reason", "")
    detail = request.POST.get("reason_detail", "").strip()
    if code not in SKIP_REASONS:
        values = _posted_values(request.POST, assignment)
        return _render_task(
            request, assignment, values=values, errors=["Choose why you skip this task."]
        )
    reason = f"{code}: {detail}" if detail else code
    try:
        leasing.assignment_skip(assignment=assignment, reason=reason)
    except LeaseError as error:
        return _next_task(request, assignment.task.project, notice=str(error), level="error")
    except ValidationError as error:
        values = _posted_values(request.POST, assignment)
        return _render_task(request, assignment, values=values, errors=error.messages)
    return _next_task(request, assignment.task.project, notice="Skipped.")


@login_required
@require_POST
def task_heartbeat(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Renew the lease while the task page is open; answers the lease countdown fragment."""
    assignment = selectors.assignment_for(request.user, task_pk=pk)
    try:
        assignment = leasing.lease_renew(assignment=assignment)
    except LeaseError as error:
        return render(
            request, "annotation/_lease.html", {"assignment": assignment, "lease_error": str(error)}
        )
    return render(request, "annotation/_lease.html", _lease_context(assignment))


@login_required
@require_GET
def my_stats(request: HtmxHttpRequest) -> HttpResponse:
    return render(
        request, "annotation/stats.html", {"stats": selectors.labeler_stats(request.user)}
    )


# --- Rendering -----------------------------------------------------------------------------


def _next_task(
    request: HtmxHttpRequest,
    project: Project,
    *,
    notice: str = "",
    level: str = "ok",
    draft: list[dict] | None = None,
) -> HttpResponse:
    paused = ""
    try:
        assignment = leasing.next_task_for(project=project, labeler=request.user)
    except LabelerPaused as error:
        assignment, paused = None, str(error)
    if assignment is None:
        context = {
            "project": project,
            "notice": notice,
            "level": level,
            "draft": draft,
            "paused": paused,
        }
        template = "annotation/_no_task.html" if _partial(request) else "annotation/no_task.html"
        return render(request, template, context)
    return _render_task(request, assignment, notice=notice, level=level, draft=draft)


def _render_task(
    request: HtmxHttpRequest,
    assignment: Assignment,
    *,
    values: dict | None = None,
    errors: list[str] | None = None,
    notice: str = "",
    level: str = "ok",
    draft: list[dict] | None = None,
) -> HttpResponse:
    task = assignment.task
    project = task.project
    values = values or _blank_values(assignment)
    by_id = {r.pk: r for r in task.candidate_list()}
    ranks = values.get("ranks", {})
    candidates = [
        {
            "response": by_id[i],
            "number": n,
            "letter": "AB"[n - 1] if task.kind in PAIRED_KINDS and n <= 2 else "",
            "rank": ranks.get(i, ""),
        }
        for n, i in enumerate((i for i in assignment.shown_order if i in by_id), start=1)
    ]
    guideline = project.current_guideline()
    labels = project.labels
    context = {
        "assignment": assignment,
        "task": task,
        "project": project,
        "candidates": candidates,
        "rank_choices": list(range(1, len(candidates) + 1)),
        "guideline": guideline,
        "values": values,
        "errors": errors or [],
        "notice": notice,
        "level": level,
        "draft": draft,
        "categories": PROMPT_CATEGORIES,
        "turn_roles": TURN_ROLES,
        "skip_reasons": SKIP_REASONS,
        # The project's own labels (annotation.labels), which its judgments are checked against.
        "rating_flags": labels.flags,
        "strengths": labels.strengths,
        "scores": labels.scores,
        **_lease_context(assignment),
    }
    if _partial(request):
        response = render(request, "annotation/_workspace.html", context)
        return push_url(response, reverse("annotation:task", args=[task.pk]))
    return render(request, "annotation/task.html", context)


def _lease_context(assignment: Assignment) -> dict:
    lease_seconds = assignment.task.project.lease_seconds
    left = max(0, int((assignment.expires_at - timezone.now()).total_seconds()))
    return {
        "assignment": assignment,
        "lease_left": f"{left // 60}:{left % 60:02d}",
        "lease_error": "",
        # Renew well before expiry, but not so often that an open tab loads the server.
        "heartbeat_seconds": max(5, min(60, lease_seconds // 3)),
    }


# --- Parsing the posted form ---------------------------------------------------------------


def _blank_values(assignment: Assignment) -> dict:
    return {
        "idempotency_key": uuid.uuid4().hex,
        "mode": "single",
        "text": "",
        "turns": [{"role": "user", "content": ""}],
        "tags": [],
        "extra_tags": "",
        "rationale": "",
        "choice": "",
        "strength": "",
        "score": "",
        "flags": [],
        "ranks": {},
        "all_unacceptable": False,
        "better": "",
    }


def _posted_values(post, assignment: Assignment) -> dict:
    """Everything the labeler entered, as typed, so a re-rendered form keeps it."""
    roles = post.getlist("turn_role")
    contents = post.getlist("turn_content")
    turns = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=False)]
    return {
        # A retry of the same rendered form posts the same key; a page without one gets a
        # fresh key so it can never collide with another task's.
        "idempotency_key": (post.get("idempotency_key") or uuid.uuid4().hex)[:128],
        "mode": "multi" if post.get("mode") == "multi" else "single",
        "text": post.get("text", ""),
        "turns": turns or [{"role": "user", "content": ""}],
        "tags": post.getlist("tags"),
        "extra_tags": post.get("extra_tags", ""),
        "rationale": post.get("rationale", ""),
        "choice": post.get("choice", ""),
        "strength": post.get("strength", ""),
        "score": post.get("score", ""),
        "flags": post.getlist("flags"),
        "ranks": {
            i: post.get(f"rank_{i}", "") for i in assignment.shown_order if post.get(f"rank_{i}")
        },
        "all_unacceptable": post.get("all_unacceptable") == "on",
        "better": post.get("better", ""),
    }


def _payload_from(values: dict, assignment: Assignment) -> dict:
    """The judgment the form states, as the API would send it; `annotation.rules` checks it.
    Only what the form alone can get wrong is refused here: no choice made at all."""
    kind = assignment.task.kind
    order = assignment.shown_order
    if kind == TaskKind.WRITE_PROMPT:
        tags = list(values["tags"]) + [t.strip() for t in values["extra_tags"].split(",")]
        tags = list(dict.fromkeys(t for t in tags if t.strip()))
        if values["mode"] == "multi":
            messages = [
                {"role": t["role"], "content": t["content"]}
                for t in values["turns"]
                if t["content"].strip()
            ]
            return {"messages": messages, "tags": tags}
        return {"text": values["text"], "tags": tags}
    if kind == TaskKind.DEMONSTRATION:
        return {"text": values["text"]}
    if kind == TaskKind.RANK:
        # A response without a valid rank is left out; the rules name it ("place every one").
        ranks = {}
        for response_id in order:
            rank = _int_or_none(values["ranks"].get(response_id))
            if rank is not None and 1 <= rank <= len(order):
                ranks[response_id] = rank
        groups = [
            [i for i in order if ranks.get(i) == rank] for rank in sorted(set(ranks.values()))
        ]
        payload = {"ranking": groups, "all_unacceptable": values["all_unacceptable"]}
        if values["better"].strip():
            payload["better"] = values["better"]
        return payload
    if kind == TaskKind.COMPARE:
        choice = values["choice"]
        # A better answer typed without "both are bad" is refused by the rules, in form words.
        better = {"better": values["better"]} if values["better"].strip() else {}
        if choice == "both_bad":
            return {"winner": None, "all_unacceptable": True, **better}
        if choice == "tie":
            return {"winner": None, **better}
        if choice not in ("a", "b"):
            raise ValidationError({"choice": "Choose A, B, a tie or both bad."})
        winner = order[0] if choice == "a" else order[1]
        return {"winner": winner, "strength": _int_or_none(values["strength"]), **better}
    if kind == TaskKind.RATE:
        return {"score": _int_or_none(values["score"]), "flags": values["flags"]}
    if kind == TaskKind.ARENA:
        choice = values["choice"]
        if choice in ("tie", "both_bad"):
            return {"winner": None, "both_bad": choice == "both_bad"}
        if choice not in ("a", "b"):
            raise ValidationError({"choice": "Choose A, B, a tie or both bad."})
        return {"winner": order[0] if choice == "a" else order[1]}
    return {}


def _in_form_words(error: ValidationError, assignment: Assignment) -> ValidationError:
    """The rules' refusals of what a labeler can leave out of the form, said in the form's
    words (responses by their number on the page, not by their ids)."""
    if not hasattr(error, "error_dict"):
        return error
    labels = assignment.task.project.labels
    low, high = labels.low, labels.high
    order = assignment.shown_order
    said: dict = {}
    for field, errors in error.error_dict.items():
        first = errors[0]
        unplaced = first.params["missing"] if first.code == "unplaced" else []
        if numbers := [order.index(i) + 1 for i in unplaced if i in order]:
            said["ranking"] = f"Response {min(numbers)} has no rank yet: place every response."
        elif field == "payload.messages" and first.code == "empty":
            said["turns"] = "Write at least one turn."
        elif field == "payload.better" and first.code == "without_unacceptable":
            said["better"] = (
                "Choose “Both are bad” to write a better one."
                if assignment.task.kind == TaskKind.COMPARE
                else "Tick “All responses are unacceptable” to write a better one."
            )
        elif field == "payload.strength":
            said["strength"] = "Say how much better the chosen response is."
        elif field == "payload.score":
            said["score"] = f"Give an overall quality from {low} to {high}."
        else:
            said[field] = errors
    return ValidationError(said)


def _draft_of(values: dict) -> list[dict]:
    """The free text a labeler typed, to show back when it could not be saved."""
    parts = [("Your text", values["text"])]
    parts += [(f"Turn {n} ({t['role']})", t["content"]) for n, t in enumerate(values["turns"], 1)]
    parts += [("Your better answer", values.get("better", ""))]
    parts += [("Your rationale", values["rationale"])]
    return [{"label": label, "text": text} for label, text in parts if text.strip()]


def _messages_of(error: ValidationError) -> list[str]:
    """Messages that name their field ("Text: must not be empty.")."""
    if not hasattr(error, "error_dict"):
        return list(error.messages)
    return [
        f"{field.split('.')[-1].replace('_', ' ').capitalize()}: {message}"
        for field, messages in error.message_dict.items()
        for message in messages
    ]


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _time_spent_ms(assignment: Assignment) -> int:
    return int((timezone.now() - assignment.leased_at).total_seconds() * 1000)
