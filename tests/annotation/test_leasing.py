"""The lease invariant: no task leased to the same labeler twice; never more than N labelers
per item, counting live leases; expired leases give the slot back."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotation import leasing, services, sql
from annotation.errors import LeaseError
from annotation.models import Annotation, Assignment, Role, Task, TaskKind


def rank_payload(assignment):
    return {"ranking": [[i] for i in assignment.shown_order]}


def test_it_never_leases_a_task_twice_to_one_labeler(make_user, project_factory):
    """Kills mutation: the claim's "never assigned to this labeler" clause removed
    (`sql._claimable` without its NOT EXISTS): her submitted assignment comes back as a lease,
    again and again."""
    alice = make_user("alice")
    project = project_factory(prompts=3, overlap=2, members=[(alice, Role.LABELER)])
    seen = []
    for _ in range(3 + 1):  # one call more than there are tasks: a repeat fails, never hangs
        if (assignment := leasing.next_task_for(project=project, labeler=alice)) is None:
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
    first = leasing.next_task_for(project=project, labeler=alice)
    again = leasing.next_task_for(project=project, labeler=alice)
    assert again.pk == first.pk
    assert Assignment.objects.filter(labeler=alice).count() == 1


def test_it_caps_labelers_per_item_at_the_overlap(make_user, project_factory):
    users = [make_user(f"u{i}") for i in range(4)]
    project = project_factory(prompts=1, overlap=2, members=[(u, Role.LABELER) for u in users])
    leases = [leasing.next_task_for(project=project, labeler=u) for u in users]
    assert [lease is not None for lease in leases] == [True, True, False, False]


def test_it_gives_an_expired_slot_back(make_user, project_factory):
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(
        prompts=1, overlap=1, members=[(alice, Role.LABELER), (bob, Role.LABELER)]
    )
    lease = leasing.next_task_for(project=project, labeler=alice)
    assert leasing.next_task_for(project=project, labeler=bob) is None
    later = timezone.now() + timedelta(seconds=project.lease_seconds + 1)
    bobs = leasing.next_task_for(project=project, labeler=bob, now=later)
    assert bobs is not None and bobs.task_id == lease.task_id
    # Alice's late submission is refused with a clear message: the slot is Bob's now.
    with pytest.raises(LeaseError, match="another labeler took this task"):
        services.annotation_submit(
            task=lease.task, labeler=alice, payload=rank_payload(lease), now=later
        )
    # Her lease is over, on its row too (the refusal once rolled the mark back with it).
    lease.refresh_from_db()
    assert (lease.state, lease.finished_at) == (Assignment.State.EXPIRED, later)
    # And she never gets the task again.
    assert leasing.next_task_for(project=project, labeler=alice, now=later) is None


def test_it_accepts_a_late_submission_when_the_slot_is_still_free(make_user, project_factory):
    alice = make_user("alice")
    project = project_factory(prompts=1, members=[(alice, Role.LABELER)])
    lease = leasing.next_task_for(project=project, labeler=alice)
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
    first = leasing.next_task_for(project=project, labeler=alice)
    second = leasing.next_task_for(project=project, labeler=bob)
    assert second.task_id == first.task_id


def test_it_returns_a_skipped_slot_to_the_queue(make_user, project_factory):
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(prompts=1, members=[(alice, Role.LABELER), (bob, Role.LABELER)])
    lease = leasing.next_task_for(project=project, labeler=alice)
    leasing.assignment_skip(assignment=lease, reason="I cannot judge maths.")
    assert leasing.next_task_for(project=project, labeler=bob).task_id == lease.task_id
    assert leasing.next_task_for(project=project, labeler=alice) is None


def test_a_full_item_does_not_hide_the_next_one(make_user, project_factory):
    """Kills mutations: the claim takes a started item while `{taken} <= c.required` (one slot
    too many: the insert refuses it twenty times and the labeler gets nothing); next_task_for
    never marks a leased item started (a full item looks fresh, with the same outcome)."""
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(
        prompts=2, overlap=1, members=[(alice, Role.LABELER), (bob, Role.LABELER)]
    )
    first, second = project.tasks.order_by("id")
    assert leasing.next_task_for(project=project, labeler=alice).task_id == first.pk
    assert leasing.next_task_for(project=project, labeler=bob).task_id == second.pk


def test_a_submitted_judgment_keeps_its_slot(make_user, project_factory):
    """Kills mutation: a taken slot counts only live leases, not submitted judgments
    (`sql._holding_a_slot` without its `state = submitted` arm)."""
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    project = project_factory(
        prompts=1, overlap=2, members=[(u, Role.LABELER) for u in (alice, bob, carol)]
    )
    lease = leasing.next_task_for(project=project, labeler=alice)
    services.annotation_submit(task=lease.task, labeler=alice, payload=rank_payload(lease))
    assert leasing.next_task_for(project=project, labeler=bob).task_id == lease.task_id
    assert leasing.next_task_for(project=project, labeler=carol) is None


def test_the_item_with_most_slots_taken_comes_first(make_user, project_factory):
    """Started items are finished before others: the one nearest completion first.

    Kills mutations: started items ordered by `{taken}` ascending, or not by it at all."""
    users = [make_user(f"u{i}") for i in range(3)]
    project = project_factory(prompts=3, overlap=3, members=[(u, Role.LABELER) for u in users])
    first, second, _ = project.tasks.order_by("id")
    u0, u1, u2 = users
    lease = leasing.next_task_for(project=project, labeler=u0)
    services.annotation_submit(task=lease.task, labeler=u0, payload=rank_payload(lease))
    assert leasing.next_task_for(project=project, labeler=u0).task_id == second.pk
    skipped = leasing.next_task_for(project=project, labeler=u1)
    assert skipped.task_id == first.pk  # one slot taken in each: the lower id
    leasing.assignment_skip(assignment=skipped, reason="unsure")
    assert leasing.next_task_for(project=project, labeler=u1).task_id == second.pk
    # Slots taken: the first item 1 (u0's judgment, u1 skipped it), the second 2 (u0, u1).
    assert leasing.next_task_for(project=project, labeler=u2).task_id == second.pk


def test_a_higher_priority_comes_first_among_fresh_and_started_items(make_user, project_factory):
    """Kills mutations: the top priority of fresh items found by `f.priority` ascending; started
    items with as many slots taken ordered by `c.priority` ascending, or not by it."""
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(
        prompts=2, overlap=2, members=[(alice, Role.LABELER), (bob, Role.LABELER)]
    )
    low, high = project.tasks.order_by("id")
    high.priority = 1
    high.save(update_fields=["priority"])  # as the admin's task form saves it
    lease = leasing.next_task_for(project=project, labeler=alice)
    assert lease.task_id == high.pk
    services.annotation_submit(task=lease.task, labeler=alice, payload=rank_payload(lease))
    assert leasing.next_task_for(project=project, labeler=alice).task_id == low.pk
    # Both items are started with one slot taken each: the higher priority first.
    assert leasing.next_task_for(project=project, labeler=bob).task_id == high.pk


def test_a_disabled_item_or_kind_is_never_leased(make_user, project_factory):
    """Kills mutations: the claim ignores the task's status (`status = open` dropped); ignores
    the project's enabled kinds (`kind IN (...)` dropped)."""
    alice = make_user("alice")
    project = project_factory(
        prompts=1,
        kinds=(TaskKind.RANK, TaskKind.COMPARE, TaskKind.RATE),
        members=[(alice, Role.LABELER)],
    )
    rank, _compare, rate = project.tasks.order_by("id")
    rank.status = Task.Status.DISABLED
    rank.save(update_fields=["status"])
    project.task_kinds = [TaskKind.RANK, TaskKind.RATE]
    project.save(update_fields=["task_kinds"])
    lease = leasing.next_task_for(project=project, labeler=alice)
    assert lease.task_id == rate.pk
    services.annotation_submit(task=lease.task, labeler=alice, payload={"score": 4})
    assert leasing.next_task_for(project=project, labeler=alice) is None


def test_a_live_lease_is_handed_back_only_in_its_own_project(make_user, project_factory):
    """Kills mutation: the live lease is looked up in every project
    (`lt.project_id = %(project)s` dropped): asking for work in another project would hand back
    this one's task."""
    alice = make_user("alice")
    alpha = project_factory("alpha", prompts=1, members=[(alice, Role.LABELER)])
    beta = project_factory("beta", prompts=1, members=[(alice, Role.LABELER)])
    held = leasing.next_task_for(project=alpha, labeler=alice)
    other = leasing.next_task_for(project=beta, labeler=alice)
    assert other.task.project_id == beta.pk and other.pk != held.pk
    assert leasing.next_task_for(project=alpha, labeler=alice).pk == held.pk


def test_a_lease_ends_at_the_instant_it_expires(make_user, project_factory):
    """At `expires_at` exactly the lease is over: its slot is free for another labeler, and
    then the page's heartbeat and a late answer are refused; the sweep marks it expired.

    Kills mutations: `expires_at > %(now)s` -> `>=` in sql._live_lease; `expires_at <= now` ->
    `<` in leasing.lease_renew and in the late-submit check of services._submit_locked;
    `expires_at__lte` -> `__lt` in leases_expire; `>` -> `>=` in Assignment.is_live; a lease
    shorter than the project's."""
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(
        prompts=1, overlap=1, members=[(alice, Role.LABELER), (bob, Role.LABELER)]
    )
    lease = leasing.next_task_for(project=project, labeler=alice)
    end = lease.expires_at
    assert end - lease.leased_at == timedelta(seconds=project.lease_seconds)
    assert lease.is_live(end - timedelta(microseconds=1)) and not lease.is_live(end)
    bobs = leasing.next_task_for(project=project, labeler=bob, now=end)
    assert bobs is not None and bobs.task_id == lease.task_id
    with pytest.raises(LeaseError, match="another labeler took this task"):
        leasing.lease_renew(assignment=lease, now=end)
    with pytest.raises(LeaseError, match="another labeler took this task"):
        services.annotation_submit(
            task=lease.task, labeler=alice, payload=rank_payload(lease), now=end
        )
    lease.refresh_from_db()  # the refused answer ended the lease on its row
    assert lease.state == Assignment.State.EXPIRED and lease.finished_at == end
    # The sweep ends Bob's at its own instant.
    assert leasing.leases_expire(now=bobs.expires_at - timedelta(microseconds=1)) == 0
    assert leasing.leases_expire(now=bobs.expires_at) == 1
    bobs.refresh_from_db()
    assert bobs.state == Assignment.State.EXPIRED


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
            while (lease := leasing.next_task_for(project=project, labeler=user)) is not None:
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
    lease = leasing.next_task_for(project=project, labeler=alice)
    text = "Explain {{ 7*7 }} <script>alert(1)</script> \u202eRTL 🙂"
    services.annotation_submit(
        task=lease.task, labeler=alice, payload={"text": text, "tags": ["maths"]}
    )
    prompt = project.prompts.get()
    assert prompt.text == text and prompt.tags == ["maths"] and prompt.source == "labeler"
    assert project.tasks.filter(kind=TaskKind.DEMONSTRATION, prompt=prompt).exists()


def _postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip(
            "SQLite serializes writers (IMMEDIATE transactions): no lease transaction can run "
            "while another labeler's is open, so these interleavings cannot happen there"
        )


def _lapsed_lease(project, labeler):
    """The labeler leases the first task and lets the lease run out: the task is started and
    its slot free again."""
    lease = leasing.next_task_for(project=project, labeler=labeler)
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    return lease


def _live_holders(task):
    live = Assignment.objects.filter(task=task, state="active", expires_at__gt=timezone.now())
    return sorted(live.values_list("labeler__username", flat=True))


@pytest.mark.django_db(transaction=True)
def test_a_lease_committed_after_the_claim_read_its_slots_is_counted_by_the_insert(
    make_user, project_factory, monkeypatch
):
    """The claim counts a task's taken slots in its statement's snapshot; a lease that another
    labeler commits after that snapshot is only seen by the insert's own re-count. The
    interleaving is forced: right after Alice's claim has locked the task (one slot, Bob's
    lapsed lease), another connection commits Bob's lease live again, and only then does her
    claim return. (An UPDATE, because an INSERT's foreign-key check would wait for her row lock;
    in production the commit falls between the claim's snapshot and its lock.)

    Kills mutation: next_task_for inserts the lease unconditionally (the re-count
    `where=sql.slot_free(...)` dropped from its `sql.insert`)."""
    _postgresql_only()
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(
        "race", prompts=2, overlap=1, members=[(alice, Role.LABELER), (bob, Role.LABELER)]
    )
    first, second = project.tasks.order_by("id")
    bobs = _lapsed_lease(project, bob)
    assert bobs.task_id == first.pk

    renewed, errors = threading.Event(), []

    def bob_commits_his_lease():  # on this thread's own connection, committed on return
        try:
            Assignment.objects.filter(pk=bobs.pk).update(
                expires_at=timezone.now() + timedelta(seconds=project.lease_seconds)
            )
            renewed.set()
        except Exception as error:  # noqa: BLE001 - asserted below
            errors.append(repr(error))
        finally:
            connection.close()

    claim, claimed = leasing._task_claim, []

    def claim_then_bob_commits(*args):
        result = claim(*args)
        claimed.append(result[0].pk if result else None)
        if len(claimed) == 1:
            thread = threading.Thread(target=bob_commits_his_lease)
            thread.start()
            thread.join(timeout=30)
            assert renewed.is_set(), errors or "Bob's lease was not committed within 30 s"
        return result

    monkeypatch.setattr(leasing, "_task_claim", claim_then_bob_commits)
    lease = leasing.next_task_for(project=project, labeler=alice)

    assert claimed[0] == first.pk  # her claim did take the task whose slot looked free
    assert lease is not None and lease.task_id == second.pk
    assert _live_holders(first) == ["bob"]
    assert _live_holders(second) == ["alice"]


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_waits_for_a_claim_of_its_task_and_then_sees_its_lease(
    make_user, project_factory, monkeypatch, client
):
    """A lapsed lease is renewed only while its slot is free, and that check must see a lease
    being written at the same moment: the renewal locks the task, as the claim does. Forced:
    Bob's page heart-beats (another connection) right after Alice's lease of his old slot is
    inserted and before she commits; her commit is held back until his heartbeat has finished
    or waits on a lock.

    Kills mutation: lease_renew locks only the assignment
    (`select_for_update()` -> `select_for_update(of=("self",))`): Bob's renewal, blind to her
    uncommitted lease, commits too, and the task has two live leases."""
    _postgresql_only()
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(
        "beat", prompts=2, overlap=1, members=[(alice, Role.LABELER), (bob, Role.LABELER)]
    )
    bobs = _lapsed_lease(project, bob)
    client.force_login(bob)
    answered, backend, pages = threading.Event(), [], []

    def bobs_page_heartbeats():
        try:
            backend.append(sql.fetch(sql.Statement("SELECT pg_backend_pid()"))[0][0])
            pages.append(client.post(f"/tasks/{bobs.task_id}/heartbeat/", HTTP_HX_REQUEST="true"))
        except Exception as error:  # noqa: BLE001 - asserted below
            pages.append(error)
        finally:
            answered.set()
            connection.close()

    insert, thread = sql.insert, threading.Thread(target=bobs_page_heartbeats)

    def insert_then_bob_heartbeats(obj, **kwargs):
        written = insert(obj, **kwargs)
        if isinstance(obj, Assignment) and obj.labeler_id == alice.pk:
            thread.start()
            deadline = time.monotonic() + 30
            while not answered.wait(0.01) and not _waits_on_a_lock(backend):
                assert time.monotonic() < deadline, "Bob's heartbeat neither ran nor waited"
        return written

    monkeypatch.setattr(sql, "insert", insert_then_bob_heartbeats)
    lease = leasing.next_task_for(project=project, labeler=alice)
    assert lease.task_id == bobs.task_id  # the started item first: his lapsed slot
    thread.join(timeout=30)
    assert answered.is_set()

    page = pages[0]
    assert page.status_code == 200, page
    assert b"another labeler took this task" in page.content
    assert _live_holders(lease.task) == ["alice"]


@pytest.mark.django_db(transaction=True)
def test_while_the_top_priority_is_being_claimed_the_next_priority_comes_first(
    make_user, project_factory, monkeypatch
):
    """When every fresh item of the top priority is locked by another labeler's claim at that
    instant, the claim falls back to any fresh item, still by priority. Forced: Bob's claim of
    the one top-priority item is held open (his transaction waits right after it) while Alice
    asks.

    Kills mutations: that fallback orders fresh items by `c.priority` ascending; the fallback
    dropped from the claim's COALESCE."""
    _postgresql_only()
    alice, bob = make_user("alice"), make_user("bob")
    project = project_factory(
        "queue", prompts=3, overlap=1, members=[(alice, Role.LABELER), (bob, Role.LABELER)]
    )
    low, middle, top = project.tasks.order_by("id")
    for task, priority in ((middle, 1), (top, 2)):
        task.priority = priority
        task.save(update_fields=["priority"])

    claim, bob_claimed, alice_done, bobs = (
        leasing._task_claim,
        threading.Event(),
        threading.Event(),
        [],
    )

    def claim_held_open_for_bob(project, labeler, now, *gold):
        result = claim(project, labeler, now, *gold)
        if labeler.pk == bob.pk:
            bob_claimed.set()
            alice_done.wait(30)
        return result

    def bob_asks():
        try:
            bobs.append(leasing.next_task_for(project=project, labeler=bob))
        except Exception as error:  # noqa: BLE001 - asserted below
            bobs.append(error)
        finally:
            bob_claimed.set()  # never leave Alice waiting
            connection.close()

    monkeypatch.setattr(leasing, "_task_claim", claim_held_open_for_bob)
    thread = threading.Thread(target=bob_asks)
    thread.start()
    try:
        assert bob_claimed.wait(30), "Bob's claim did not run within 30 s"
        lease = leasing.next_task_for(project=project, labeler=alice)
    finally:
        alice_done.set()
        thread.join(timeout=30)
    assert bobs and getattr(bobs[0], "task_id", bobs[0]) == top.pk
    assert lease is not None and lease.task_id == middle.pk
    assert low.assignments.count() == 0


def _waits_on_a_lock(backend: list) -> bool:
    if not backend:
        return False
    rows = sql.fetch(
        sql.Statement("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", backend)
    )
    return rows[0][0] > 0
