"""The playground: a person chats with a model of the project in the browser.

The web process never loads a model. A message queues the session (`playground_send`); a
training worker claims it when one of the TRAINING_PLAYGROUND_MAX_SESSIONS slots is free,
generates the reply token by token (`training.engine.streaming`) and writes the text so far
into the row every few tokens; the page polls the row. Cancel sets a flag the loop reads.
A conversation is saved into the project through annotation's services: as a prompt, or as a
demonstration once its last reply has been corrected.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from annotation import services as annotation_services
from annotation.access import may_use_playground, role_require
from annotation.models import Project, Prompt, Response, Role, Source
from annotation.rules import clean_text, model_text
from annotation.selectors import projects_for
from core.queue import enqueue_on_commit
from training.execution import torch_threads_apply
from training.models import ModelArtifact, PlaygroundSession

logger = logging.getLogger(__name__)

Status = PlaygroundSession.Status
TASK = "training.tasks.playground_generate"
MAX_TURNS = 50
WRITE_EVERY_TOKENS = 4


# --- Who may use it ----------------------------------------------------------------------------


def playground_require(user, project: Project) -> None:
    if not may_use_playground(user, project):
        raise PermissionDenied(
            "Only an engineer or admin of this project can use its playground (its labelers "
            "too where the project allows it)."
        )


def playground_projects(user) -> QuerySet[Project]:
    """The projects whose pages of the playground the user may reach (a member, any role);
    playground_require decides within."""
    return projects_for(user)


def sessions_for(user) -> QuerySet[PlaygroundSession]:
    """A person's own sessions, in projects where they may still use the playground;
    superusers see every session."""
    if not user.is_authenticated:
        return PlaygroundSession.objects.none()
    if user.is_superuser:
        return PlaygroundSession.objects.all()
    rows = PlaygroundSession.objects.filter(user=user, project__in=projects_for(user))
    allowed = [p.pk for p in projects_for(user) if may_use_playground(user, p)]
    return rows.filter(project__in=allowed)


def artifacts_of(project: Project) -> QuerySet[ModelArtifact]:
    """The models one can chat with: the project's own (reward models score, they do not
    write)."""
    return ModelArtifact.objects.filter(project=project).exclude(stage="reward")


# --- Conversation ------------------------------------------------------------------------------


def _settings_clean(temperature, top_p, max_new_tokens, seed) -> dict:
    errors = {}
    if temperature is None or not 0 <= temperature <= 5:
        errors["temperature"] = "must be between 0 (greedy) and 5."
    if top_p is None or not 0 < top_p <= 1:
        errors["top_p"] = "must be in (0, 1]."
    if max_new_tokens is None or not 1 <= max_new_tokens <= 2048:
        errors["max_new_tokens"] = "must be between 1 and 2048."
    if seed is None:
        errors["seed"] = "is required."
    if errors:
        raise ValidationError(errors)
    return {"temperature": float(temperature), "top_p": float(top_p),
            "max_new_tokens": int(max_new_tokens), "seed": int(seed)}  # fmt: skip


@transaction.atomic
def playground_session_create(
    *, project: Project, artifact: ModelArtifact, user
) -> PlaygroundSession:
    playground_require(user, project)
    if artifact.project_id != project.pk or artifact.stage == "reward":
        raise ValidationError({"artifact": "choose a model of this project (not a reward model)."})
    return PlaygroundSession.objects.create(project=project, artifact=artifact, user=user)


@transaction.atomic
def playground_send(
    *,
    session: PlaygroundSession,
    user,
    text: str,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
) -> PlaygroundSession:
    """Add the user's turn and queue the model's reply (sent to a worker on commit)."""
    playground_require(user, session.project)
    session = PlaygroundSession.objects.select_for_update().get(pk=session.pk)
    if session.active:
        raise ValidationError("The model is still answering: wait for it or cancel it.")
    decoding = _settings_clean(temperature, top_p, max_new_tokens, seed)
    text = clean_text(text, "text")
    if len(session.messages) >= 2 * MAX_TURNS:
        raise ValidationError(f"A conversation holds at most {MAX_TURNS} turns: start a new one.")
    for field, value in decoding.items():
        setattr(session, field, value)
    session.messages = [*session.messages, {"role": "user", "content": text}]
    session.status, session.reply, session.error, session.notice = Status.QUEUED, "", "", ""
    session.cancel_requested = False
    session.turn += 1
    session.queued_at = timezone.now()
    session.save()
    enqueue_on_commit(TASK, session.pk, session.turn)
    return session


@transaction.atomic
def playground_cancel(*, session: PlaygroundSession, user) -> PlaygroundSession:
    """Stop the reply: a queued one never starts (its user turn is taken back); one being
    generated stops at the next token and keeps what it had written."""
    playground_require(user, session.project)
    session = PlaygroundSession.objects.select_for_update().get(pk=session.pk)
    if session.status == Status.QUEUED:
        session.messages = session.messages[:-1]
        session.status, session.notice = Status.IDLE, "Cancelled before it started."
        session.turn += 1  # the message already sent finds its turn gone
        session.save()
    elif session.status == Status.GENERATING:
        session.cancel_requested = True
        session.save(update_fields=["cancel_requested", "updated_at"])
    return session


def queue_position(session: PlaygroundSession) -> int:
    """1 for the next queued session to get a slot, 2 for the one after..., 0 when not queued."""
    if session.status != Status.QUEUED:
        return 0
    when = session.queued_at
    ahead = PlaygroundSession.objects.filter(status=Status.QUEUED).filter(
        Q(queued_at__lt=when) | Q(queued_at=when, pk__lt=session.pk)
    )
    return ahead.count() + 1


def _live_generating() -> QuerySet[PlaygroundSession]:
    cutoff = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS)
    return PlaygroundSession.objects.filter(status=Status.GENERATING, heartbeat_at__gte=cutoff)


def slots_busy() -> int:
    return _live_generating().count()


# --- Saving into the project -------------------------------------------------------------------


def _conversation_to_prompt(session: PlaygroundSession) -> list[dict]:
    """The conversation up to its last user turn: what a prompt holds."""
    messages = list(session.messages)
    while messages and messages[-1]["role"] != "user":
        messages.pop()
    if not messages:
        raise ValidationError("The conversation has no user turn to save yet.")
    return messages


@transaction.atomic
def playground_save_prompt(*, session: PlaygroundSession, user) -> Prompt:
    """The conversation (to its last user turn) as a new prompt of the project; one already
    there is refused, naming it (annotation's prompt_save)."""
    playground_require(user, session.project)
    role_require(user, session.project, Role.CURATOR)
    prompt = Prompt(project=session.project, source=Source.LABELER, created_by=user)
    item = {"messages": _conversation_to_prompt(session),
            "metadata": {"playground_session": session.pk, "model": session.artifact_id}}  # fmt: skip
    return annotation_services.prompt_save(prompt=prompt, item=item)


@transaction.atomic
def playground_save_demonstration(*, session: PlaygroundSession, user, text: str) -> Response:
    """The last reply, as corrected by the user, as a demonstration (a response written by a
    person) of the conversation's prompt, which is created when the project lacks it."""
    playground_require(user, session.project)
    role_require(user, session.project, Role.CURATOR)
    if session.active or not session.messages or session.messages[-1]["role"] != "assistant":
        raise ValidationError("There is no finished reply to correct yet.")
    model_said = session.messages[-1]["content"]
    text = clean_text(text, "text")
    if text.strip() == model_said.strip():
        raise ValidationError({"text": "edit the reply first: a demonstration is a corrected one."})
    item = {"messages": _conversation_to_prompt(session),
            "metadata": {"playground_session": session.pk}}  # fmt: skip
    [(prompt, _created)] = annotation_services.prompts_get_or_create(
        project=session.project, items=[item], source=Source.LABELER, author=user
    )
    return annotation_services.response_create(
        prompt=prompt, text=text, origin=Source.LABELER, author=user,
        metadata={"playground_session": session.pk, "model": session.artifact_id,
                  "model_reply": model_said},
    )  # fmt: skip


# --- The worker's side -------------------------------------------------------------------------


class NoSlot(Exception):
    """Every slot is taken: the worker tries again shortly."""


def _claim(session_id: int, turn: int) -> bool:
    """QUEUED → GENERATING for this turn when a slot is free. The active rows are locked first,
    so two workers claiming at once count one after the other (PostgreSQL; SQLite writes one at
    a time anyway). NoSlot when every slot is taken; False when the turn is gone."""
    with transaction.atomic():
        active = PlaygroundSession.objects.select_for_update().filter(
            status__in=(Status.QUEUED, Status.GENERATING)
        )
        list(active.order_by("pk").values_list("pk", flat=True))
        session = PlaygroundSession.objects.filter(pk=session_id).first()
        if session is None or session.turn != turn or session.status != Status.QUEUED:
            return False
        # Sessions whose worker died stop holding a slot.
        cutoff = timezone.now() - timedelta(seconds=settings.TRAINING_STALE_AFTER_SECONDS)
        PlaygroundSession.objects.filter(status=Status.GENERATING, heartbeat_at__lt=cutoff).update(
            status=Status.FAILED, error="Its worker stopped answering: send it again."
        )
        if slots_busy() >= settings.TRAINING_PLAYGROUND_MAX_SESSIONS:
            raise NoSlot
        # First come, first served: an older queued session takes a free slot before this one.
        ahead = queue_position(session) - 1
        if ahead >= settings.TRAINING_PLAYGROUND_MAX_SESSIONS - slots_busy():
            raise NoSlot
        now = timezone.now()
        PlaygroundSession.objects.filter(pk=session_id).update(
            status=Status.GENERATING, heartbeat_at=now, reply="", updated_at=now
        )
        return True


_models: dict[str, tuple] = {}


def _model(path: str):
    """The worker keeps the last model it loaded: the next turn of a chat needs it again."""
    from training.engine.generation import load_policy

    if path not in _models:
        _models.clear()
        _models[path] = load_policy(path)
    return _models[path]


def playground_generate(*, session_id: int, turn: int) -> str:
    """Generate the reply of `turn`; raises NoSlot while every slot is taken."""
    from training.engine.streaming import reply_stream

    if not _claim(session_id, turn):
        return "skipped"
    torch_threads_apply()
    session = PlaygroundSession.objects.select_related("artifact").get(pk=session_id)
    mine = PlaygroundSession.objects.filter(pk=session_id, turn=turn, status=Status.GENERATING)

    # The flag is read where the text is written (every few tokens), not at every token.
    stopping = [False]

    text = ""
    try:
        model, tokenizer = _model(session.artifact.path)
        for text, _finished in reply_stream(
            model, tokenizer, session.messages, temperature=session.temperature,
            top_p=session.top_p, max_new_tokens=session.max_new_tokens, seed=session.seed,
            every=WRITE_EVERY_TOKENS, stop=lambda: stopping[0],
        ):  # fmt: skip
            text = model_text(text)  # a byte-level model can emit NUL
            mine.update(reply=text, heartbeat_at=timezone.now(), updated_at=timezone.now())
            stopping[0] = not mine.filter(cancel_requested=False).exists()
    except Exception as exc:  # noqa: BLE001 - recorded on the session
        logger.exception("playground session %s failed", session_id)
        mine.update(status=Status.FAILED, error=f"{type(exc).__name__}: {exc}", reply=text)
        return "failed"
    with transaction.atomic():
        row = mine.select_for_update().first()
        if row is None:
            return "dropped"
        stopped = row.cancel_requested
        row.messages = [*row.messages, {"role": "assistant", "content": text}]
        row.status, row.reply, row.cancel_requested = Status.IDLE, "", False
        row.notice = "Cancelled: the reply stops where it was." if stopped else ""
        row.save()
    return "cancelled" if stopped else "done"
