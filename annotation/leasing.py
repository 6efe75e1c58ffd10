"""Leases: which task a labeler gets next, and for how long it is theirs.

A task is done by `required` distinct labelers. A slot of it is taken by a submitted judgment or
a live lease (`sql._holding_a_slot`); an expired lease gives its slot back. No labeler is ever
assigned the same task twice. The statements are in `annotation.sql`; this module is the flow
around them. Views, API views, the demo's labelers and Celery tasks call these functions.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation import sql
from annotation.errors import LabelerPaused, LeaseError
from annotation.gold import gold_drawn
from annotation.models import Assignment, Project, Response, Task
from annotation.rules import clean_text


def _shown_order(task: Task, labeler, ids: list[int] | None = None) -> list[int]:
    """Candidates in an order shuffled per (labeler, task) and stored, to measure position bias."""
    ids = sorted(ids) if ids is not None else task.candidate_ids()
    random.Random(f"{task.pk}:{labeler.pk}").shuffle(ids)
    return ids


def next_task_for(*, project: Project, labeler, now: datetime | None = None) -> Assignment | None:
    """Lease the next task of `project` to `labeler`, or return None when none is left.

    A live lease the labeler already holds is returned as is (a reload or a second tab gets the
    same task). Otherwise the task is claimed with a row lock (`sql.claim`), so concurrent
    labelers never claim the same slot. Items already started come first, so items are finished
    before new ones are opened.

    The returned assignment carries its task with the project, the prompt and the candidates
    loaded (`Task.candidate_list`), so rendering it costs no further query. A lease costs two
    statements (three when it opens a fresh item), a live one handed back again one; see
    `annotation.sql` for why they are written by hand.

    Before the claim, the labeler's membership row is locked and read (`sql.labeler_lock`, one
    more statement): a paused labeler is refused (LabelerPaused, saying why), and one labeler's
    concurrent requests are serialized, so the eligibility rules of the claim hold. In a project
    with gold, the same statement counts the labeler's leases for the gold draw.
    """
    now = now or timezone.now()
    expires_at = now + timedelta(seconds=project.lease_seconds)
    for _attempt in range(20):
        try:
            with transaction.atomic():
                paused, reason, leases = sql.labeler_locked(
                    sql.fetch(
                        sql.labeler_lock(
                            project=project, labeler=labeler, count_leases=project.gold_rate > 0
                        )
                    )
                )
                if paused:
                    raise LabelerPaused(f"You are paused in {project.name}: {reason}")
                gold = gold_drawn(project=project, labeler=labeler, leases_so_far=leases)
                claimed = _task_claim(project, labeler, now, gold)
                if claimed is None:
                    return None
                task, candidates, live = claimed
                task.project = project
                task.loaded_candidates = candidates
                if live is not None:
                    live.task = task
                    return live
                assignment = Assignment(
                    task=task,
                    labeler=labeler,
                    leased_at=now,
                    expires_at=expires_at,
                    shown_order=_shown_order(task, labeler, [r.pk for r in candidates]),
                )
                # The lock is ours now; the insert counts the taken slots again in its own
                # statement (see `sql.slot_free`). A gold task takes no slot.
                guard = None if task.is_gold else sql.slot_free(task=task, now=now)
                if not sql.insert(assignment, where=guard):
                    continue
                if not task.started:
                    sql.execute(sql.task_started(task=task))
                    task.started = True
                return assignment
        except IntegrityError:
            # The same labeler leased from another tab at the same moment; that transaction
            # (and its `started` flag) rolled back as a whole, so no savepoint is needed.
            return _live_lease_of(project, labeler, now)
    return None


def _task_claim(
    project: Project, labeler, now: datetime, gold: bool = False
) -> tuple[Task, list[Response], Assignment | None] | None:
    """The labeler's live lease in `project` if they hold one, else the next task for them,
    locked; either read with its prompt and candidates, in one statement. Returns (task,
    candidates, the live lease or None), or None when no task is left for them."""
    return sql.claimed(sql.fetch(sql.claim(project=project, labeler=labeler, now=now, gold=gold)))


def _live_lease_of(project: Project, labeler, now: datetime) -> Assignment | None:
    rows = sql.fetch(sql.live_lease_of(project=project, labeler=labeler, now=now))
    if not rows:
        return None
    return Assignment.objects.select_related("task__prompt").get(pk=rows[0][0])


@transaction.atomic
def lease_renew(*, assignment: Assignment, now: datetime | None = None) -> Assignment:
    """Heartbeat from an open task page: extend a lease that is still ours."""
    now = now or timezone.now()
    assignment = (
        Assignment.objects.select_for_update().select_related("task__project").get(pk=assignment.pk)
    )
    if assignment.state != Assignment.State.ACTIVE:
        raise LeaseError(f"This task is already {assignment.get_state_display().lower()}.")
    if assignment.expires_at <= now and not slot_still_free(assignment=assignment, now=now):
        raise LeaseError("Your lease expired and another labeler took this task.")
    assignment.expires_at = now + timedelta(seconds=assignment.task.project.lease_seconds)
    assignment.save(update_fields=["expires_at"])
    return assignment


def slot_still_free(*, assignment: Assignment, now: datetime) -> bool:
    """Whether a late lease could still be honoured: the other holders leave a slot free. Asked
    by the heartbeat and by a late submit. A gold task takes no slot: always free."""
    if assignment.task.is_gold:
        return True
    rows = sql.fetch(sql.slots_taken_by_others(assignment=assignment, now=now))
    return rows[0][0] < assignment.task.required


def late_submit_eligible(*, task: Task, labeler, now: datetime) -> bool:
    """Whether the eligibility rules still let the labeler judge `task` on a lease that expired.

    While the lease was live it kept the labeler from every other task of the same prompt and
    round; once it expired, the claim could give them one of those, which they may have judged
    since. The labeler's membership is locked first, as a claim locks it, so their own next
    lease cannot slip in between this check and the submit's commit."""
    project = Project.objects.only("id", "repeats_allowed").get(pk=task.project_id)
    sql.fetch(sql.labeler_lock(project=project, labeler=labeler, count_leases=False))
    rows = sql.fetch(sql.still_eligible(task_id=task.pk, project=project, labeler=labeler, now=now))
    return bool(rows)


@transaction.atomic
def assignment_skip(*, assignment: Assignment, reason: str = "") -> Assignment:
    """Give a lease back with the labeler's reason (ValidationError on a reason that cannot be
    stored; LeaseError when the lease is no longer active)."""
    reason = clean_text(reason, "reason", required=False)
    assignment = Assignment.objects.select_for_update().get(pk=assignment.pk)
    if assignment.state != Assignment.State.ACTIVE:
        raise LeaseError(f"This task is already {assignment.get_state_display().lower()}.")
    assignment.state = Assignment.State.SKIPPED
    assignment.skip_reason = reason[:2000]
    assignment.finished_at = timezone.now()
    assignment.save(update_fields=["state", "skip_reason", "finished_at"])
    return assignment


def leases_expire(*, now: datetime | None = None) -> int:
    """Mark leases past their expiry as expired (they already stopped counting; this tidies)."""
    now = now or timezone.now()
    return Assignment.objects.filter(state=Assignment.State.ACTIVE, expires_at__lte=now).update(
        state=Assignment.State.EXPIRED, finished_at=now
    )
