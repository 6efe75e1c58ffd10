"""Eligibility: a labeler never judges responses to their own prompt nor their own
demonstration, and judges a prompt at most once per round across task kinds unless the project
allows repeats; under concurrency too."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone

from annotation import leasing, services
from annotation.errors import LeaseError
from annotation.models import Annotation, Assignment, Role, Source, TaskKind


def _prompt(project, text, *, author=None, response_author=None, kinds=(TaskKind.RANK,), round=1):
    (prompt,), _ = services.prompts_create(project=project, items=[{"text": text}], author=author)
    responses = [
        services.response_create(prompt=prompt, text=f"{text} {i}", origin=Source.SEED)
        for i in range(3)
    ]
    if response_author is not None:
        responses[0].created_by = response_author
        responses[0].save(update_fields=["created_by"])
    for kind in kinds:
        candidates = {TaskKind.RANK: responses, TaskKind.COMPARE: responses[:2],
                      TaskKind.RATE: responses[:1]}[kind]  # fmt: skip
        services.task_create(project=project, kind=kind, prompt=prompt, candidates=candidates,
                             round=round, required=5)  # fmt: skip
    return prompt


def _payload(lease):
    ids = [r.pk for r in lease.task.candidate_list()]
    return {
        TaskKind.RANK: {"ranking": [[i] for i in ids]},
        TaskKind.COMPARE: {"winner": ids[0]},
        TaskKind.RATE: {"score": 5},
    }[lease.task.kind]


def _drain(project, labeler) -> list:
    tasks = []
    while (lease := leasing.next_task_for(project=project, labeler=labeler)) is not None:
        tasks.append(lease.task)
        services.annotation_submit(task=lease.task, labeler=labeler, payload=_payload(lease))
    return tasks


@pytest.fixture
def team(make_user):
    project = services.project_create(name="Elig", slug="elig")
    people = [make_user(n) for n in ("ann", "bob")]
    for user in people:
        services.membership_set(project=project, user=user, role=Role.LABELER)
    return project, people


def test_it_never_offers_responses_to_the_labelers_own_prompt(team):
    """Before: ann ranked the answers to the prompt she wrote."""
    project, (ann, bob) = team
    _prompt(project, "ann wrote this", author=ann)
    assert _drain(project, ann) == []
    assert len(_drain(project, bob)) == 1


def test_it_never_offers_the_labelers_own_demonstration(team):
    project, (ann, bob) = team
    _prompt(project, "bob's prompt", response_author=ann)
    assert _drain(project, ann) == []
    assert len(_drain(project, bob)) == 1


def test_it_lets_a_labeler_judge_a_prompt_once_per_round_across_kinds(team):
    """A rank, a compare and a rate task of one prompt: ann judges one of them in round 1, and
    one again in round 2. Before: all three, in every round."""
    project, (ann, _) = team
    prompt = _prompt(project, "one prompt", kinds=(TaskKind.RANK, TaskKind.COMPARE, TaskKind.RATE))
    _prompt(project, "one prompt round 2", kinds=(TaskKind.RANK,), round=2)
    judged = _drain(project, ann)
    assert Counter((t.prompt_id == prompt.pk, t.round) for t in judged) == {
        (True, 1): 1,
        (False, 2): 1,
    }


def test_a_project_may_allow_repeats(team):
    project, (ann, _) = team
    services.project_update(project=project, repeats_allowed=True)
    _prompt(project, "again", kinds=(TaskKind.RANK, TaskKind.COMPARE, TaskKind.RATE))
    assert len(_drain(project, ann)) == 3


def test_a_skipped_task_does_not_use_up_the_prompt(team):
    project, (ann, _) = team
    _prompt(project, "skip me", kinds=(TaskKind.RANK, TaskKind.COMPARE))
    lease = leasing.next_task_for(project=project, labeler=ann)
    leasing.assignment_skip(assignment=lease, reason="unsure")
    assert len(_drain(project, ann)) == 1


@pytest.mark.django_db(transaction=True)
def test_eligibility_holds_under_concurrent_labelers(make_user):
    """Eight labelers, each on two threads (two tabs) at once, over prompts that each have a
    rank and a compare task: no labeler ever holds or submits two tasks of one prompt, and
    nobody judges a prompt they wrote. On PostgreSQL the claims run in parallel (the membership
    lock serializes one labeler's own requests); on SQLite the writers are serialized."""
    project = services.project_create(name="Crowd", slug="crowd")
    users = [make_user(f"c{i}") for i in range(8)]
    for user in users:
        services.membership_set(project=project, user=user, role=Role.LABELER)
    for i in range(6):
        _prompt(project, f"crowd {i}", author=users[i % 8], kinds=(TaskKind.RANK, TaskKind.COMPARE))
    errors = []
    barrier = threading.Barrier(len(users) * 2)

    def work(user):
        try:
            barrier.wait()
            while (lease := leasing.next_task_for(project=project, labeler=user)) is not None:
                services.annotation_submit(task=lease.task, labeler=user, payload=_payload(lease))
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(u,)) for u in users for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # SKIP LOCKED answers "nothing for you right now" while the rest is locked by others; what
    # is left is taken afterwards, one labeler at a time.
    for user in users:
        _drain(project, user)
    leases = Counter(
        Assignment.objects.filter(task__project=project).values_list(
            "labeler_id", "task__prompt_id"
        )
    )
    assert leases and max(leases.values()) == 1, leases
    judged = Annotation.objects.filter(task__project=project)
    assert judged.count() == 6 * 7  # every labeler but the author judged each prompt once
    assert not judged.filter(task__prompt__created_by=F("labeler")).exists()


def _late_leases(project, ann):
    """ann leases the rank task of a prompt with a rank and a compare task, lets the lease
    expire, then leases and submits the compare task; returns (the expired lease, a moment
    after it expired)."""
    _prompt(project, "late", kinds=(TaskKind.RANK, TaskKind.COMPARE))
    start = timezone.now()
    first = leasing.next_task_for(project=project, labeler=ann, now=start)
    later = start + timedelta(seconds=project.lease_seconds + 60)
    second = leasing.next_task_for(project=project, labeler=ann, now=later)
    assert second is not None and second.task_id != first.task_id  # the expired lease let go
    services.annotation_submit(task=second.task, labeler=ann, payload=_payload(second), now=later)
    return first, later


def test_a_late_submit_is_refused_once_the_prompt_was_judged_in_another_task(team):
    """A late submit on an expired lease (honoured while a slot is free) keeps the eligibility
    rules: ann's lease on the rank task expired, she judged the compare task of the same prompt
    and round, and her late ranking is refused with the reason, her lease marked expired.
    Before: it was accepted, two judgments of one prompt in one round."""
    project, (ann, _) = team
    first, later = _late_leases(project, ann)
    with pytest.raises(LeaseError, match="since judged this prompt"):
        services.annotation_submit(task=first.task, labeler=ann, payload=_payload(first), now=later)
    assert Annotation.objects.filter(labeler=ann).count() == 1
    first.refresh_from_db()
    assert first.state == Assignment.State.EXPIRED


def test_a_late_submit_is_refused_while_another_task_of_the_prompt_is_held(team):
    """The same while ann only holds the compare task (a live lease): she would judge the
    prompt twice once she submits it."""
    project, (ann, _) = team
    _prompt(project, "held", kinds=(TaskKind.RANK, TaskKind.COMPARE))
    start = timezone.now()
    first = leasing.next_task_for(project=project, labeler=ann, now=start)
    later = start + timedelta(seconds=project.lease_seconds + 60)
    assert leasing.next_task_for(project=project, labeler=ann, now=later) is not None
    with pytest.raises(LeaseError, match="since judged this prompt"):
        services.annotation_submit(task=first.task, labeler=ann, payload=_payload(first), now=later)
    assert not Annotation.objects.filter(labeler=ann).exists()


def test_a_late_submit_is_kept_when_the_project_allows_repeats(team):
    project, (ann, _) = team
    services.project_update(project=project, repeats_allowed=True)
    first, later = _late_leases(project, ann)
    _, created = services.annotation_submit(
        task=first.task, labeler=ann, payload=_payload(first), now=later
    )
    assert created and Annotation.objects.filter(labeler=ann).count() == 2


def test_a_late_submit_with_nothing_else_judged_is_kept(team):
    """The rule refuses only what breaks it: a late submit with a slot free and no other task
    of the prompt judged is accepted as before."""
    project, (ann, _) = team
    _prompt(project, "alone", kinds=(TaskKind.RANK,))
    start = timezone.now()
    lease = leasing.next_task_for(project=project, labeler=ann, now=start)
    later = start + timedelta(seconds=project.lease_seconds + 60)
    _, created = services.annotation_submit(
        task=lease.task, labeler=ann, payload=_payload(lease), now=later
    )
    assert created


@pytest.mark.django_db(transaction=True)
def test_a_late_submit_and_the_labelers_own_next_lease_cannot_both_pass(make_user, monkeypatch):
    """A late submit checks eligibility with the labeler's membership locked, as a claim does.
    Forced: right after ann's late ranking has passed its check, her other tab asks for the next
    task (another connection); it waits for the submit to commit and then finds the compare
    task of the same prompt no longer hers to take. Kills mutation: the check without the lock
    (the other tab leases the compare task while the late ranking commits too)."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serializes writers: the two transactions cannot overlap there")
    project = services.project_create(name="Late race", slug="late-race")
    ann = make_user("ann")
    services.membership_set(project=project, user=ann, role=Role.LABELER)
    _prompt(project, "race", kinds=(TaskKind.RANK, TaskKind.COMPARE))
    start = timezone.now()
    first = leasing.next_task_for(project=project, labeler=ann, now=start)
    later = start + timedelta(seconds=project.lease_seconds + 60)
    other_tab = []

    def lease_in_another_tab():
        try:
            other_tab.append(leasing.next_task_for(project=project, labeler=ann, now=later))
        finally:
            connection.close()

    check = leasing.late_submit_eligible

    def check_then_the_other_tab_asks(**kwargs):
        allowed = check(**kwargs)
        thread = threading.Thread(target=lease_in_another_tab)
        thread.start()
        thread.join(timeout=2)  # with the lock it waits for this transaction
        threads.append(thread)
        return allowed

    threads = []
    monkeypatch.setattr(services, "late_submit_eligible", check_then_the_other_tab_asks)
    _, created = services.annotation_submit(
        task=first.task, labeler=ann, payload=_payload(first), now=later
    )
    threads[0].join(timeout=30)
    assert created
    assert other_tab == [None]  # the compare task of the judged prompt is not hers
    assert Assignment.objects.filter(labeler=ann).count() == 1
