"""Gold: tasks whose answer a curator knows, injected into every labeler's stream at the
project's `gold_rate`, scored against that answer, and a pause for a labeler who keeps missing.

A gold task is created with its answer, by a curator or imported (`gold_answer` on an import
row, `annotation.imports.formats.with_gold`), and `gold_answer_check` holds it to the rules of
its kind; or it is made gold from one approved judgment a curator picks
(`quality.task_mark_gold`). It goes to every labeler whatever its `required` overlap and never
closes (`annotation.sql`); its judgments score the labeler (`gold_hit`) and never enter a snapshot (`annotation.exports.rows`).

A labeler whose accuracy over their last `gold_window` gold judgments (since their last resume)
is below `gold_min_accuracy` is paused (`gold_judged`, called by the submit): `next_task_for`
refuses them (`LabelerPaused`) until a curator resumes them (`labeler_resume`).
"""

from __future__ import annotations

import hashlib
import random

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotation import rules
from annotation.labels import Labels
from annotation.models import Annotation, Membership, Project, TaskKind, not_superseded

# Kinds whose judgment can be compared with a known answer.
GOLD_KINDS = (TaskKind.RANK, TaskKind.COMPARE, TaskKind.RATE)


def gold_hit(kind: str, payload: dict, answer: dict | None) -> bool | None:
    """Whether a judgment matches the gold answer: the same winner of a pair, the same first
    place of a ranking, a score within one point. None for a kind gold does not score."""
    answer = answer or {}
    if kind == TaskKind.COMPARE:
        return payload.get("winner") == answer.get("winner")
    if kind == TaskKind.RANK:
        mine, known = payload.get("ranking") or [], answer.get("ranking") or []
        return bool(mine) and bool(known) and mine[0] == known[0]
    if kind == TaskKind.RATE:
        score, known = payload.get("score"), answer.get("score")
        if not isinstance(score, int) or not isinstance(known, int):
            return False
        return abs(score - known) <= 1
    return None


def gold_answer_check(*, kind: str, answer, candidate_ids: list[int], labels: Labels) -> dict:
    """The answer of a gold task, held to the rules of its kind as a judgment would be (rate and
    compare answers against the project's `labels`: its scale, flags and strengths);
    ValidationError on `gold_answer` naming what is wrong."""
    if kind not in GOLD_KINDS:
        raise ValidationError(
            {"gold_answer": f"a {kind} task cannot be gold: only {', '.join(GOLD_KINDS)} can."}
        )
    if answer is None or answer == {}:
        raise ValidationError({"gold_answer": "a gold task needs its answer."})
    if not isinstance(answer, dict):
        raise ValidationError({"gold_answer": "expected an object, as a judgment's payload."})
    try:
        return rules.KINDS[kind].validate(answer, sorted(candidate_ids), labels)
    except ValidationError as error:
        messages = "; ".join(
            f"{field}: {' '.join(str(m) for m in msgs)}"
            for field, msgs in getattr(error, "message_dict", {"payload": error.messages}).items()
        )
        raise ValidationError({"gold_answer": f"not a valid {kind} answer ({messages})."}) from None


def gold_drawn(*, project: Project, labeler, leases_so_far: int) -> bool:
    """Whether the labeler's next lease is a gold task: a draw at `gold_rate`, deterministic in
    (project, labeler, how many leases they took) and keyed by the secret key, so a labeler cannot
    tell which of their tasks are gold from their position in the stream."""
    if project.gold_rate <= 0:
        return False
    seed = f"{settings.SECRET_KEY}:gold:{project.pk}:{labeler.pk}:{leases_so_far}"
    digest = hashlib.sha256(seed.encode()).digest()
    return random.Random(digest).random() < project.gold_rate


def recent_gold(*, project: Project, labeler) -> list[bool]:
    """The labeler's hits on their last `gold_window` gold judgments in `project` since their
    last resume, newest first."""
    since = (
        Membership.objects.filter(project=project, user=labeler)
        .values_list("gold_window_from", flat=True)
        .first()
    )
    judgments = (
        Annotation.objects.filter(
            task__project=project, task__is_gold=True, labeler=labeler, kind__in=GOLD_KINDS
        )
        .filter(not_superseded())
        .order_by("-created_at", "-id")
    )
    if since is not None:
        judgments = judgments.filter(created_at__gte=since)
    rows = judgments.values_list("kind", "payload", "task__gold_answer")[: project.gold_window]
    return [bool(gold_hit(kind, payload, answer)) for kind, payload, answer in rows]


def gold_judged(*, project_id: int, labeler) -> Membership | None:
    """After a gold judgment: pause the labeler when their last `gold_window` gold judgments
    fall below the project's `gold_min_accuracy`. Returns the membership when it paused it."""
    project = Project.objects.get(pk=project_id)
    if project.gold_min_accuracy <= 0:
        return None
    hits = recent_gold(project=project, labeler=labeler)
    if len(hits) < project.gold_window:
        return None
    accuracy = sum(hits) / len(hits)
    if accuracy >= project.gold_min_accuracy:
        return None
    reason = (
        f"Gold accuracy {accuracy:.2f} over your last {len(hits)} gold tasks is below the "
        f"project's {project.gold_min_accuracy:.2f}. A curator will review your work and "
        "resume you."
    )
    return labeler_pause(project=project, user=labeler, reason=reason)


@transaction.atomic
def labeler_pause(*, project: Project, user, reason: str) -> Membership | None:
    """Pause a member of `project`: no new lease until resumed. None when not a member."""
    membership = Membership.objects.select_for_update().filter(project=project, user=user).first()
    if membership is None:
        return None
    membership.paused, membership.paused_reason = True, rules.clean_text(reason, "reason")[:2000]
    membership.paused_at = timezone.now()
    membership.save(update_fields=["paused", "paused_reason", "paused_at"])
    return membership


@transaction.atomic
def labeler_resume(*, project: Project, user) -> Membership:
    """Resume a paused member of `project`; their gold accuracy is measured afresh from now
    (the gold tasks they missed would pause them again at once). ValidationError naming `user`
    when they are not a member."""
    membership = Membership.objects.select_for_update().filter(project=project, user=user).first()
    if membership is None:
        raise ValidationError({"user": f"{user} is not a member of {project}."})
    membership.paused, membership.paused_reason, membership.paused_at = False, "", None
    membership.gold_window_from = timezone.now()
    membership.save(update_fields=["paused", "paused_reason", "paused_at", "gold_window_from"])
    return membership


def paused_members(project: Project):
    """The project's paused members, with why, for the curate page."""
    return (
        Membership.objects.filter(project=project, paused=True)
        .select_related("user")
        .order_by("user__username")
    )
