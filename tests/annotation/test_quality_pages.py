"""Curator pages and admin actions: approve/reject, mark gold, quality table; scoped access."""

from __future__ import annotations

import re

import pytest
from django.contrib.messages import get_messages
from snapshot_testutils import demonstrate, judge, prompt_with

from annotation import services
from annotation.exports import snapshot_request
from annotation.models import Annotation, ReviewStatus, Role, Snapshot, TaskKind


@pytest.fixture
def world(make_user):
    owner, member, outsider = make_user("owner"), make_user("member"), make_user("outsider")
    project = services.project_create(name="Cur", slug="cur")
    services.membership_set(project=project, user=owner, role=Role.CURATOR)
    services.membership_set(project=project, user=member, role=Role.LABELER)
    _, (x, y), task = prompt_with(
        project, "<script>alert(1)</script>", ["{{ 7*7 }}", "b"], kind=TaskKind.COMPARE
    )
    annotation = judge(task, member, {"winner": x.pk})
    return project, owner, member, outsider, annotation


def test_it_shows_judgments_quality_and_escapes_imported_text(client, world):
    project, owner, *_ = world
    client.force_login(owner)

    page = client.get("/curate/cur/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert 'id="labeler-quality"' in html and "member" in html
    assert 'id="agreement-chart"' in html


def test_it_filters_approves_rejects_and_marks_gold(client, world):
    project, owner, _, _, annotation = world
    client.force_login(owner)

    assert "No judgments match" in client.get("/curate/cur/?review=approved").content.decode()
    row = client.post(f"/curate/cur/annotations/{annotation.pk}/review/", {"decision": "rejected"})
    assert row.status_code == 200 and "Rejected" in row.content.decode()
    annotation.refresh_from_db()
    assert annotation.review_status == ReviewStatus.REJECTED and annotation.reviewed_by == owner
    refused = client.post(f"/curate/cur/annotations/{annotation.pk}/gold/")
    assert refused.status_code == 400 and "approve it first" in refused.content.decode()
    client.post(f"/curate/cur/annotations/{annotation.pk}/review/", {"decision": "approved"})
    client.post(f"/curate/cur/annotations/{annotation.pk}/gold/")
    annotation.task.refresh_from_db()
    assert annotation.task.is_gold and annotation.task.gold_answer == annotation.payload
    assert "(gold)" in client.get("/curate/cur/?gold=1").content.decode()


def test_labelers_and_outsiders_cannot_curate(client, world):
    _, _, member, outsider, annotation = world
    client.force_login(member)
    assert client.get("/curate/cur/").status_code == 403
    assert (
        client.post(
            f"/curate/cur/annotations/{annotation.pk}/review/", {"decision": "approved"}
        ).status_code
        == 403
    )
    client.force_login(outsider)
    assert client.get("/curate/cur/").status_code == 404
    annotation.refresh_from_db()
    assert annotation.review_status == ReviewStatus.PENDING


def test_admin_actions_review_and_queue_snapshots(
    client, world, django_capture_on_commit_callbacks
):
    project, owner, _, _, annotation = world
    owner.is_staff = True
    owner.save()
    client.force_login(owner)

    client.post(
        "/admin/annotation/annotation/",
        {"action": "approve", "_selected_action": [annotation.pk]},
    )
    assert Annotation.objects.get(pk=annotation.pk).review_status == ReviewStatus.APPROVED

    form = {"project": project.pk, "kind": "preference", "format": "jsonl",
            "filters": '{"test_size": 0}'}  # fmt: skip
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post("/admin/annotation/snapshot/add/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    snapshot = Snapshot.objects.get()
    assert snapshot.filters["test_size"] == 0 and len(callbacks) == 1

    with django_capture_on_commit_callbacks() as callbacks:  # saved twice: one build
        response = client.post("/admin/annotation/snapshot/add/", form, follow=True)
    assert Snapshot.objects.get() == snapshot and not callbacks
    assert f"Snapshot #{snapshot.pk} of the same request is already queued" in (
        response.content.decode()
    )

    bad = client.post(
        "/admin/annotation/snapshot/add/",
        {"project": project.pk, "kind": "sft", "format": "jsonl", "filters": '{"colour": 1}'},
    )
    assert bad.status_code == 200 and "filters.colour" in bad.content.decode()


def test_admin_marks_tasks_gold_with_the_newest_approved_judgment(client, world, make_user):
    """Kills mutations: mark_gold doing nothing, or failing the whole action on a task without
    judgments; task_mark_gold taking the newest judgment over the newest approved one."""
    project, owner, member, _, _ = world
    second = make_user("second")
    services.membership_set(project=project, user=second, role=Role.LABELER)
    _, (x, y), task = prompt_with(project, "Which?", ["x", "y"], kind=TaskKind.COMPARE, required=2)
    approved = judge(task, member, {"winner": x.pk})
    services.annotation_review(annotation=approved, reviewer=owner, decision="approved")
    newer = judge(task, second, {"winner": y.pk})  # not reviewed
    _, _, unjudged = prompt_with(project, "Nobody answered", ["p", "q"], kind=TaskKind.COMPARE)
    client.force_login(owner)

    response = client.post(
        "/admin/annotation/task/",
        {"action": "mark_gold", "_selected_action": [task.pk, unjudged.pk]},
    )

    assert response.status_code == 302
    task.refresh_from_db(), unjudged.refresh_from_db()
    assert task.is_gold and task.gold_answer == approved.payload != newer.payload
    assert not unjudged.is_gold and unjudged.gold_answer is None
    said = [str(m) for m in get_messages(response.wsgi_request)]
    assert "1 task(s) marked as gold." in said
    assert f"task {unjudged.pk} has no approved judgment to take the answer from." in said


def test_admin_builds_a_snapshot_again_with_the_same_filters(
    client, world, django_capture_on_commit_callbacks
):
    """Kills mutations: build_again doing nothing, or dropping the format or the filters of the
    snapshot it repeats."""
    project, owner, *_ = world
    filters = {"test_size": 0.2, "tags": ["math"], "review": "approved", "seed": "7"}
    first = snapshot_request(project=project, kind="preference", format="parquet",
                             filters=filters, enqueue=False)  # fmt: skip
    Snapshot.objects.filter(pk=first.pk).update(status=Snapshot.Status.READY)
    client.force_login(owner)

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            "/admin/annotation/snapshot/",
            {"action": "build_again", "_selected_action": [first.pk]},
        )

    assert response.status_code == 302
    again = Snapshot.objects.exclude(pk=first.pk).get()
    assert (again.project, again.kind, again.format) == (project, "preference", "parquet")
    assert again.filters == first.filters and again.filters["tags"] == ["math"]
    assert again.status == Snapshot.Status.QUEUED and again.created_by == owner
    assert len(callbacks) == 1  # its build, sent once the transaction commits
    assert "1 snapshot build(s) queued." in [str(m) for m in get_messages(response.wsgi_request)]

    # Again, while that build is queued: the same request, so the same build.
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            "/admin/annotation/snapshot/",
            {"action": "build_again", "_selected_action": [first.pk]},
        )
    assert Snapshot.objects.count() == 2 and not callbacks
    assert (
        f"0 snapshot build(s) queued. Already queued or building for the same request, reused: "
        f"#{again.pk}." in [str(m) for m in get_messages(response.wsgi_request)]
    )


def test_me_and_the_curate_page_show_one_agreement_figure_for_a_labeler(client, make_user):
    """Agreement with consensus is one measure: /me/, the curate page and the API give the same
    figure.

    Ann agrees with the others on the comparison, on two of the three pairs of the ranking
    (she puts y above x) and on the rating (4, within one of the others' median 5): 4 of 5,
    80%. Her rejected judgment does not count. (The old /me/ figure compared the ranking's
    best group only, 2/3; the old curate figure left ratings out, 3/4.)"""
    boss = make_user("boss")
    ann, bob, cat, dan = (make_user(name) for name in ("ann", "bob", "cat", "dan"))
    project = services.project_create(name="Same", slug="same")
    services.membership_set(project=project, user=boss, role=Role.CURATOR)
    for labeler in (ann, bob, cat, dan):
        services.membership_set(project=project, user=labeler, role=Role.LABELER)
    _, (x, y), task = prompt_with(project, "Pair", ["x", "y"], kind=TaskKind.COMPARE, required=4)
    for labeler, winner in ((ann, x), (bob, x), (cat, x), (dan, y)):
        judge(task, labeler, {"winner": winner.pk})
    _, (x, y, z), task = prompt_with(project, "Rank", ["x", "y", "z"], required=4)
    for labeler in (bob, cat, dan):
        judge(task, labeler, {"ranking": [[x.pk], [y.pk], [z.pk]]})
    judge(task, ann, {"ranking": [[y.pk], [x.pk], [z.pk]]})
    _, (r,), task = prompt_with(project, "Rate", ["r"], kind=TaskKind.RATE, required=4)
    for labeler, score in ((ann, 4), (bob, 5), (cat, 6), (dan, 2)):
        judge(task, labeler, {"score": score})
    _, (x, y), task = prompt_with(project, "Odd", ["x", "y"], kind=TaskKind.COMPARE, required=4)
    for labeler, winner in ((ann, y), (bob, x), (cat, x), (dan, x)):
        judge(task, labeler, {"winner": winner.pk})
    services.annotation_review(
        annotation=Annotation.objects.get(task=task, labeler=ann),
        reviewer=boss,
        decision="rejected",
    )

    client.force_login(ann)
    me = client.get("/me/").content.decode()
    client.force_login(boss)
    curate = client.get("/curate/same/").content.decode()
    api = client.get(f"/api/v1/quality/{project.pk}/").json()["agreement"]["labelers"]

    assert '<dd id="agreement">80%</dd>' in me
    # Each figure is followed by its n (here 5 units compared).
    n = r'(?: <span class="n">n=(\d+)</span>)?'
    row = re.search(rf"<tr><td>ann</td>\s*<td>[^<]*{n}</td>\s*<td>([^<]*){n}</td>", curate)
    assert row is not None and row.group(2) == "80%" and row.group(3) == "5"
    assert api[str(ann.pk)]["consensus_agreement"] == pytest.approx(0.8)


def test_the_home_page_links_a_curator_to_the_curate_page_and_a_labeler_not(client, world):
    """The curate page (figures, bulk task creation) was reachable only by typing its URL."""
    project, owner, member, *_ = world
    client.force_login(owner)
    home = client.get("/").content.decode()
    assert 'href="/curate/cur/"' in home and "Curate Cur" in home
    assert client.get("/curate/cur/").status_code == 200
    client.force_login(member)
    home = client.get("/").content.decode()
    assert "Cur" in home and "/curate/cur/" not in home


def test_a_labeler_who_wrote_only_demonstrations_is_listed_with_their_count(client, make_user):
    """ "No judgments by labelers yet" after a labeler wrote three demonstrations: the table
    listed only labelers with agreement figures."""
    curator, writer = make_user("curator"), make_user("writer")
    project = services.project_create(name="Demo", slug="demos")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    services.membership_set(project=project, user=writer, role=Role.LABELER)
    for i in range(3):
        demonstrate(project, {"text": f"Say {i}"}, f"Said {i}", writer)
    client.force_login(curator)

    html = client.get("/curate/demos/").content.decode()

    assert "No judgments by labelers yet" not in html
    row = re.search(r"<tr><td>writer</td>.*?</tr>", html, re.S)
    assert row is not None and '<td class="judgments">demonstration: 3</td>' in row.group()


def test_the_curate_page_shows_each_judgment_as_texts_in_its_order_or_choice(client, make_user):
    """The page showed `{'ranking': [[5551], [5552], ...]}`: a curator reads ids, not answers."""
    curator, ann = make_user("curator"), make_user("ann")
    project = services.project_create(name="Texts", slug="texts")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    services.membership_set(project=project, user=ann, role=Role.LABELER)
    _, (red, blue, green), rank = prompt_with(project, "Name a colour", ["red", "blue", "green"])
    judge(rank, ann, {"ranking": [[blue.pk], [red.pk, green.pk]]})
    _, (yes, no), compare = prompt_with(
        project, "Is <b>2</b> even?", ["Yes\x1b[0m", "No"], kind=TaskKind.COMPARE
    )
    judge(compare, ann, {"winner": yes.pk, "strength": 2})
    _, (only,), rate = prompt_with(project, "Rate me", ["Fine answer"], kind=TaskKind.RATE)
    judge(rate, ann, {"score": 6, "flags": []})
    client.force_login(curator)

    html = client.get("/curate/texts/").content.decode()

    assert "{'ranking'" not in html and "'winner'" not in html
    row = re.search(r'<tr id="annotation-\d+">(?:(?!</tr>).)*Name a colour.*?</tr>', html, re.S)
    ranking = re.search(r'<ol class="judgment ranking">(.*?)</ol>', row.group(), re.S).group(1)
    ranks = [re.findall(r'<pre class="text">([^<]*)</pre>', li) for li in ranking.split("</li>")]
    assert ranks[:2] == [["blue"], ["red", "green"]] and "(tie of 2)" in ranking
    chosen = re.search(r"<strong>Chosen</strong>.*?<strong>Rejected</strong>(.*?)</td>", html, re.S)
    assert "Yes" in chosen.group() and ">No</pre>" in chosen.group(1)
    assert "Is &lt;b&gt;2&lt;/b&gt; even?" in html and "<b>2</b>" not in html
    assert '<span class="control" title="U+001B">\u241b</span>[0m' in html and "\x1b" not in html
    assert "<strong>Score 6</strong>" in html and "Fine answer" in html


def test_the_home_page_says_each_role_and_links_the_pages_it_opens(client, make_user):
    labeler, curator, engineer, boss = (make_user(n) for n in ("lab", "cur", "eng", "boss"))
    project = services.project_create(name="Roles", slug="roles")
    for user, role in [(labeler, Role.LABELER), (curator, Role.CURATOR),
                       (engineer, Role.ENGINEER), (boss, Role.ADMIN)]:  # fmt: skip
        services.membership_set(project=project, user=user, role=role)

    def home(user) -> str:
        client.force_login(user)
        return client.get("/").content.decode()

    def links(html: str) -> list[str]:
        return re.findall(r'<a href="[^"]*" id="(\w+)-roles">', html)

    page = home(labeler)
    assert '<strong class="role" id="role-roles">labeler</strong>' in page
    assert "You can label the tasks given to you." in page
    assert links(page) == ["label"]
    assert links(home(curator)) == ["label", "curate", "snapshots", "arena"]
    page = home(engineer)
    assert links(page) == ["label", "curate", "snapshots", "train", "runs", "arena", "playground"]
    assert 'href="/admin/training/trainingrun/launch/" id="train-roles"' in page
    assert "launch training" in page and "grant roles" not in page
    assert "members" in links(home(boss)) and "add members and grant roles" in home(boss)


def test_a_refused_page_says_the_role_it_needs_and_who_can_grant_it(client, make_user):
    labeler, boss = make_user("lab"), make_user("boss")
    project = services.project_create(name="Roles", slug="roles")
    services.membership_set(project=project, user=labeler, role=Role.LABELER)
    services.membership_set(project=project, user=boss, role=Role.ADMIN)
    client.force_login(labeler)

    refused = client.get("/curate/roles/")

    assert refused.status_code == 403
    html = refused.content.decode()
    assert "Only a curator or engineer or admin of this project can do this." in html
    assert "Your role in it is labeler; its admins can grant it: boss." in html
    assert 'href="/"' in html  # back to the projects and their roles


def test_a_staff_user_of_no_project_is_told_why_everything_is_empty(client, make_user):
    client.force_login(make_user("staffer", is_staff=True))
    html = client.get("/").content.decode()
    assert 'id="no-projects"' in html and "every list and form there stays empty" in html
