"""The lease invariant: no task leased to the same labeler twice; never more than N labelers
per item, counting live leases; expired leases give the slot back."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotation import services
from annotation.errors import LeaseError
from annotation.models import Annotation, Assignment, Role, TaskKind


def rank_payload(assignment):
    return {"ranking": [[i] for i in assignment.shown_order]}


def test_it_never_leases_a_task_twice_to_one_labeler(make_user, project_factory):
    """Kills mutation: the claim's "never assigned to this labeler" clause removed (`_claimable`
    without its NOT EXISTS): her submitted assignment comes back as a lease, again and again."""
    alice = make_user("alice")
    project = project_factory(prompts=3, overlap=2, members=[(alice, Role.LABELER)])
    seen = []
    for _ in range(3 + 1):  # one call more than there are tasks: a repeat fails, never hangs
        if (assignment := services.next_task_for(project=project, labeler=alice)) is None:
            break
        seen.append(assignment.task_id)
        services.annotation_submit(
            task=assignment.task, labeler=alice, payload=rank_payload(assignment)
        )
    assert assignment is None, f"leased {seen} and then task {assignment.task_id} again"
    assert sorted(seen) == sorted(project.tasks.values_list("id", flat=True))
    assert len(seen) == len(set(seen)) == 3


def test_it_returns_the_live_lease_on_a_second_call(make_user, project_factory):
    alice = make_user("alice")
    project = project_factory(members=[(alice, Role.LABELER)])
    first = services.next_task_for(project=project, labeler=alice)
    again = services.next_task_for(project=project, labeler=alice)
    assert again.pk == first.pk
    assert Assignment.objects.filter(labeler=alice).count() == 1


def test_it_caps_labelers_per_item_at_the_overlap(make_user, project_factory):
    users = [make_user(f"u{i}") for i in range(4)]
    project = project_factory(prompts=1, overlap=2, members=[(u, Role.LABELER) for u in users])
    leases = [services.next_task_for(project=project, labeler=u) for u in users]
    assert [lease is not None for lease in leases] == [True, True, False, False]


def test_it_gives_an_expired_slot_back(make_user, project_factory):
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(
        prompts=1, overlap=1, members=[(alice, Role.LABELER), (bob, Role.LABELER)]
    )
    lease = services.next_task_for(project=project, labeler=alice)
    assert services.next_task_for(project=project, labeler=bob) is None
    later = timezone.now() + timedelta(seconds=project.lease_seconds + 1)
    bobs = services.next_task_for(project=project, labeler=bob, now=later)
    assert bobs is not None and bobs.task_id == lease.task_id
    # Alice's late submission is refused with a clear message: the slot is Bob's now.
    with pytest.raises(LeaseError, match="another labeler took this task"):
        services.annotation_submit(
            task=lease.task, labeler=alice, payload=rank_payload(lease), now=later
        )
    # And she never gets the task again.
    assert services.next_task_for(project=project, labeler=alice, now=later) is None


def test_it_accepts_a_late_submission_when_the_slot_is_still_free(make_user, project_factory):
    alice = make_user("alice")
    project = project_factory(prompts=1, members=[(alice, Role.LABELER)])
    lease = services.next_task_for(project=project, labeler=alice)
    later = timezone.now() + timedelta(seconds=project.lease_seconds + 60)
    annotation, created = services.annotation_submit(
        task=lease.task, labeler=alice, payload=rank_payload(lease), now=later
    )
    assert created and annotation.task_id == lease.task_id


def test_it_finishes_started_items_first(make_user, project_factory):
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(
        prompts=3, overlap=2, members=[(alice, Role.LABELER), (bob, Role.LABELER)]
    )
    first = services.next_task_for(project=project, labeler=alice)
    second = services.next_task_for(project=project, labeler=bob)
    assert second.task_id == first.task_id


def test_it_returns_a_skipped_slot_to_the_queue(make_user, project_factory):
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(prompts=1, members=[(alice, Role.LABELER), (bob, Role.LABELER)])
    lease = services.next_task_for(project=project, labeler=alice)
    services.assignment_skip(assignment=lease, reason="I cannot judge maths.")
    assert services.next_task_for(project=project, labeler=bob).task_id == lease.task_id
    assert services.next_task_for(project=project, labeler=alice) is None


@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_invariant_under_concurrent_labelers(make_user, project_factory):
    """20 threads lease and submit at once on one project with overlap 3."""
    users = [make_user(f"t{i}") for i in range(20)]
    project = project_factory(
        "crowd", prompts=12, overlap=3, members=[(u, Role.LABELER) for u in users]
    )
    errors = []
    barrier = threading.Barrier(len(users))

    def work(user):
        try:
            barrier.wait()
            while (lease := services.next_task_for(project=project, labeler=user)) is not None:
                services.annotation_submit(
                    task=lease.task, labeler=user, payload=rank_payload(lease)
                )
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for task in project.tasks.all():
        labelers = list(Annotation.objects.filter(task=task).values_list("labeler_id", flat=True))
        assert len(labelers) == 3, f"task {task.pk} has {len(labelers)} annotations"
        assert len(set(labelers)) == 3
        task.refresh_from_db()
        assert task.done == 3 and task.status == "complete"


def test_write_prompt_creates_a_prompt_and_a_demonstration_task(make_user, project_factory):
    alice = make_user("alice")
    project = project_factory(prompts=0, members=[(alice, Role.LABELER)])
    services.task_create(project=project, kind=TaskKind.WRITE_PROMPT)
    lease = services.next_task_for(project=project, labeler=alice)
    text = "Explain {{ 7*7 }} <script>alert(1)</script> \u202eRTL 🙂"
    services.annotation_submit(
        task=lease.task, labeler=alice, payload={"text": text, "tags": ["maths"]}
    )
    prompt = project.prompts.get()
    assert prompt.text == text and prompt.tags == ["maths"] and prompt.source == "labeler"
    assert project.tasks.filter(kind=TaskKind.DEMONSTRATION, prompt=prompt).exists()
