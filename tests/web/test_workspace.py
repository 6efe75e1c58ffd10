"""The labeler workspace pages, through Django's test client (the browser tests drive them live)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import leasing, services
from annotation.models import Annotation, Assignment, Role, Source, TaskKind

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def people(make_user):
    return {
        "owner": make_user("owner"),
        "member": make_user("member"),
        "outsider": make_user("outsider"),
    }


@pytest.fixture
def project(project_factory, people):
    return project_factory(
        "alpha",
        prompts=2,
        k=3,
        kinds=(TaskKind.RANK,),
        members=[(people["owner"], Role.ADMIN), (people["member"], Role.LABELER)],
    )


def client_for(client, user):
    client.force_login(user)
    return client


def lease(project, user):
    return leasing.next_task_for(project=project, labeler=user)


def rank_form(assignment, key="k1"):
    return {
        "idempotency_key": key,
        **{f"rank_{rid}": str(n) for n, rid in enumerate(assignment.shown_order, start=1)},
    }


def test_it_swaps_the_next_task_in_for_htmx(client, project, people):
    response = client_for(client, people["member"]).post("/projects/alpha/next/", **HTMX)
    assert response.status_code == 200
    assignment = Assignment.objects.get(labeler=people["member"])
    assert response["HX-Push-Url"] == f"/tasks/{assignment.task_id}/"
    html = response.content.decode()
    assert "<html" not in html and 'id="task-form"' in html
    assert 'name="idempotency_key"' in html


def test_it_renders_the_whole_page_without_htmx(client, project, people):
    c = client_for(client, people["member"])
    response = c.post("/projects/alpha/next/")
    assert response.status_code == 200 and b"<html" in response.content
    task_id = Assignment.objects.get(labeler=people["member"]).task_id
    assert c.get(f"/tasks/{task_id}/").status_code == 200


def test_it_saves_a_ranking_in_the_shown_order_and_shows_the_next_task(client, project, people):
    c = client_for(client, people["member"])
    assignment = lease(project, people["member"])
    response = c.post(f"/tasks/{assignment.task_id}/submit/", rank_form(assignment), **HTMX)
    assert response.status_code == 200
    assert b"Saved." in response.content
    annotation = Annotation.objects.get()
    assert annotation.payload["ranking"] == [[i] for i in assignment.shown_order]
    assert annotation.shown_order == assignment.shown_order
    assert annotation.guideline_version == 1
    next_lease = Assignment.objects.get(labeler=people["member"], state="active")
    assert response["HX-Push-Url"] == f"/tasks/{next_lease.task_id}/"


def test_each_labeler_sees_the_candidates_in_their_own_order_and_it_is_stored(
    client, project_factory, make_user
):
    """The candidates are shuffled per (labeler, task), to measure position bias: the page
    shows them in the order stored on the lease, and the judgment records that order. Six
    labelers on four items of four candidates (24 possible orders): with real shuffling, the
    chance that some item shows one order to all six is about one in two million, and that the
    24 pages use at most six orders far smaller.

    Kills mutations: _shown_order returns the ids unshuffled; seeds its shuffle by the task
    alone; seeds it by the labeler alone."""
    users = [make_user(f"u{i}") for i in range(6)]
    project_factory("order", prompts=4, k=4, overlap=6, members=[(u, Role.LABELER) for u in users])
    shown = {}  # (task id, labeler id) -> the candidates' order on the page
    for user in users:
        c = client_for(client, user)
        page = c.post("/projects/order/next/", **HTMX).content.decode()
        for _ in range(4):
            assignment = Assignment.objects.get(labeler=user, state="active")
            on_page = [int(i) for i in re.findall(r'data-response="(\d+)"', page)]
            assert on_page == assignment.shown_order
            assert sorted(on_page) == assignment.task.candidate_ids()
            shown[assignment.task_id, user.pk] = on_page
            # Rank them as they stand on the page, best first.
            key = re.search(r'name="idempotency_key" value="(\w+)"', page)[1]
            form = {f"rank_{i}": str(n) for n, i in enumerate(on_page, start=1)}
            page = c.post(
                f"/tasks/{assignment.task_id}/submit/", {"idempotency_key": key, **form}, **HTMX
            ).content.decode()
            assert "Saved." in page
        assert "No task is left for you" in page

    annotations = Annotation.objects.all()
    assert len(annotations) == len(shown) == 24
    for annotation in annotations:
        order = shown[annotation.task_id, annotation.labeler_id]
        assert annotation.shown_order == order
        assert annotation.payload["ranking"] == [[i] for i in order]
    for task_id in {task_id for task_id, _ in shown}:
        orders = {tuple(shown[task_id, u.pk]) for u in users}
        assert len(orders) > 1, f"all six labelers saw task {task_id} in one order"
    positions = {tuple(sorted(order).index(i) for i in order) for order in shown.values()}
    assert len(positions) > 6, f"24 pages used only {len(positions)} orders"


def test_it_groups_equal_ranks_as_a_tie(client, project, people):
    c = client_for(client, people["member"])
    assignment = lease(project, people["member"])
    a, b, d = assignment.shown_order
    form = {"idempotency_key": "k", f"rank_{a}": "2", f"rank_{b}": "1", f"rank_{d}": "2"}
    form["all_unacceptable"] = "on"
    c.post(f"/tasks/{assignment.task_id}/submit/", form, **HTMX)
    payload = Annotation.objects.get().payload
    assert payload == {"ranking": [[b], sorted([a, d])], "all_unacceptable": True}


def test_a_retry_with_the_same_key_writes_one_annotation(client, project, people):
    c = client_for(client, people["member"])
    assignment = lease(project, people["member"])
    for _ in range(3):
        response = c.post(f"/tasks/{assignment.task_id}/submit/", rank_form(assignment), **HTMX)
        assert response.status_code == 200
    assert Annotation.objects.count() == 1
    assert Assignment.objects.filter(labeler=people["member"], state="active").count() == 1


def test_it_names_a_missing_rank_and_keeps_the_choices_made(client, project, people):
    c = client_for(client, people["member"])
    assignment = lease(project, people["member"])
    first, second, _ = assignment.shown_order
    form = {
        "idempotency_key": "k",
        f"rank_{first}": "1",
        f"rank_{second}": "3",
        "rationale": "mine",
    }
    response = c.post(f"/tasks/{assignment.task_id}/submit/", form, **HTMX)
    html = response.content.decode()
    assert "Response 3 has no rank yet" in html
    assert '<option value="3" selected>' in html and ">mine</textarea>" in html
    assert 'value="k"' in html  # the same key, so a retry stays idempotent
    assert Annotation.objects.count() == 0


def test_a_lost_lease_shows_the_draft_and_the_next_task(client, project_factory, make_user):
    member, other = make_user("member"), make_user("other")
    project = project_factory(
        "solo",
        prompts=2,
        kinds=(TaskKind.DEMONSTRATION,),
        lease_seconds=60,
        members=[(member, Role.LABELER), (other, Role.LABELER)],
    )
    assignment = lease(project, member)
    Assignment.objects.filter(pk=assignment.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    # The slot went back to the queue and someone else took that very task.
    taken = lease(project, other)
    assert taken.task_id == assignment.task_id
    c = client_for(client, member)
    response = c.post(
        f"/tasks/{assignment.task_id}/submit/",
        {"idempotency_key": "k", "text": "My long careful reply", "rationale": "why"},
        **HTMX,
    )
    html = response.content.decode()
    assert "another labeler took this task" in html
    assert "My long careful reply</textarea>" in html and "why</textarea>" in html
    assert Annotation.objects.count() == 0
    assert 'id="task-form"' in html  # ...and the next task is already there


def test_it_shows_untrusted_text_as_text(client, project_factory, people):
    project = project_factory("xss", prompts=0, members=[(people["member"], Role.LABELER)])
    (prompt,), _ = services.prompts_create(project=project, items=[{"text": "{{ 7*7 }} ‏שלום"}])
    evil = services.response_create(
        prompt=prompt,
        text="<script>alert(1)</script><img src=x onerror=alert(2)>",
        origin=Source.MODEL,
    )
    services.task_create(project=project, kind=TaskKind.RATE, prompt=prompt, candidates=[evil])
    c = client_for(client, people["member"])
    html = c.post("/projects/xss/next/", **HTMX).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in html and "<img src=x" not in html
    assert '<pre class="text">{{ 7*7 }} \u200fשלום</pre>' in html  # not evaluated: no 49


def test_control_characters_of_a_model_are_shown_as_symbols_never_as_they_are(
    client, project_factory, people
):
    """A model's sample with a terminal escape, a bell, a lone CR, a NEL and a right-to-left
    override: each is shown as a visible symbol, marked; tab, LF and CRLF line ends stay."""
    project = project_factory("ctl", prompts=0, members=[(people["member"], Role.LABELER)])
    (prompt,), _ = services.prompts_create(project=project, items=[{"text": "Say\x07 red"}])
    sample = services.response_create(
        prompt=prompt,
        text="\x1b[31mred\x1b[0m\rover\x85 \u202etxt.exe\tok\r\nnext",
        origin=Source.MODEL,
    )
    services.task_create(project=project, kind=TaskKind.RATE, prompt=prompt, candidates=[sample])
    html = client_for(client, people["member"]).post("/projects/ctl/next/", **HTMX).content.decode()

    def shown(code: int, symbol: str) -> str:
        return f'<span class="control" title="U+{code:04X}">{symbol}</span>'

    esc, cr, bell = shown(0x1B, "\u241b"), shown(0xD, "\u240d"), shown(7, "\u2407")
    nel, rlo = shown(0x85, "&lt;U+0085&gt;"), shown(0x202E, "&lt;U+202E&gt;")
    assert f"Say{bell} red" in html
    assert f"{esc}[31mred{esc}[0m{cr}over{nel} {rlo}txt.exe\tok\r\nnext" in html
    assert not any(c in html for c in "\x07\x1b\x85\u202e")


def test_guidelines_markdown_is_sanitized(client, project_factory, people):
    project = project_factory("md", prompts=1, members=[(people["member"], Role.LABELER)])
    services.guideline_publish(
        project=project, body="# Rules\n\n<script>alert(1)</script>\n\n```\n<b>code</b>\n```"
    )
    html = client_for(client, people["member"]).post("/projects/md/next/", **HTMX).content.decode()
    assert "<h1>Rules</h1>" in html and "alert(1)" not in html
    assert "&lt;b&gt;code&lt;/b&gt;" in html
    assert "(version 2)" in html and 'name="guideline_version" value="2"' in html


def test_guidelines_load_nothing_from_elsewhere_and_show_where_links_go(
    client, project_factory, people
):
    """A guideline may not track or mislead its labelers: images are not rendered (their
    address is shown as text), a protocol-relative link is plain text with its address, and
    an http(s) link keeps its address visible beside a text that claims another place."""
    project = project_factory("md", prompts=1, members=[(people["member"], Role.LABELER)])
    services.guideline_publish(
        project=project,
        body=(
            "![pixel](http://tracker.example/p.gif) ![](//cdn.example/x.png)\n\n"
            "[log in again](//evil.example/login) [paypal.com](https://evil.example/pay)\n\n"
            '<img src="http://raw.example/y.gif"> <a href="//raw.example/z">raw</a>'
        ),
    )
    html = client_for(client, people["member"]).post("/projects/md/next/", **HTMX).content.decode()
    guideline = html.split('<div class="markdown">', 1)[1].split("</div>", 1)[0]
    assert "<img" not in guideline and "raw.example/y.gif" not in guideline
    assert "[image: pixel] http://tracker.example/p.gif" in guideline
    assert "[image] //cdn.example/x.png" in guideline
    assert "<span>log in again (//evil.example/login)</span>" in guideline
    assert 'href="//' not in guideline
    assert (
        '<a href="https://evil.example/pay" rel="noopener noreferrer nofollow">paypal.com</a>'
        " (https://evil.example/pay)"
    ) in guideline


def test_it_stores_the_guideline_version_the_page_showed(client, project, people):
    c = client_for(client, people["member"])
    assignment = lease(project, people["member"])
    services.guideline_publish(project=project, body="Newer rules")
    form = {**rank_form(assignment), "guideline_version": "1"}
    c.post(f"/tasks/{assignment.task_id}/submit/", form, **HTMX)
    assert Annotation.objects.get().guideline_version == 1


def test_the_heartbeat_renews_the_lease(client, project, people):
    c = client_for(client, people["member"])
    assignment = lease(project, people["member"])
    Assignment.objects.filter(pk=assignment.pk).update(
        expires_at=timezone.now() + timedelta(seconds=5)
    )
    response = c.post(f"/tasks/{assignment.task_id}/heartbeat/", **HTMX)
    assert response.status_code == 200 and b'id="lease"' in response.content
    assignment.refresh_from_db()
    assert assignment.expires_at > timezone.now() + timedelta(seconds=800)


def test_the_heartbeat_renews_a_lapsed_lease_while_its_slot_is_free(client, project, people):
    """A page left open past its lease keeps the task when nobody else took the slot.

    Kills mutation: lease_renew refuses every lapsed lease (`and not slot_still_free(...)`
    replaced by nothing, so `if assignment.expires_at <= now:` raises)."""
    c = client_for(client, people["member"])
    assignment = lease(project, people["member"])
    Assignment.objects.filter(pk=assignment.pk).update(
        expires_at=timezone.now() - timedelta(seconds=30)
    )
    response = c.post(f"/tasks/{assignment.task_id}/heartbeat/", **HTMX)
    assert response.status_code == 200 and b'id="lease"' in response.content
    assert b'role="alert"' not in response.content
    assignment.refresh_from_db()
    assert assignment.expires_at > timezone.now() + timedelta(seconds=800)


def test_the_heartbeat_refuses_a_lapsed_lease_whose_slot_another_labeler_took(
    client, project_factory, make_user
):
    """Kills mutation: lease_renew renews a lapsed lease whose slot is taken (its
    `and not slot_still_free(...)` dropped): two labelers would hold one slot."""
    member, other = make_user("member"), make_user("other")
    project = project_factory(
        "solo", prompts=2, overlap=1, members=[(member, Role.LABELER), (other, Role.LABELER)]
    )
    mine = lease(project, member)
    lapsed = timezone.now() - timedelta(seconds=1)
    Assignment.objects.filter(pk=mine.pk).update(expires_at=lapsed)
    theirs = lease(project, other)
    assert theirs.task_id == mine.task_id
    response = client_for(client, member).post(f"/tasks/{mine.task_id}/heartbeat/", **HTMX)
    assert response.status_code == 200
    assert b'role="alert"' in response.content
    assert b"Your lease expired and another labeler took this task." in response.content
    mine.refresh_from_db()
    assert mine.expires_at == lapsed  # not extended
    # The slot stays the other labeler's: their answer is saved.
    response = client_for(client, other).post(
        f"/tasks/{theirs.task_id}/submit/", rank_form(theirs), **HTMX
    )
    assert response.status_code == 200 and b"Saved." in response.content
    assert list(Annotation.objects.values_list("task_id", "labeler_id")) == [
        (theirs.task_id, other.pk)
    ]


def test_the_heartbeat_says_when_the_lease_is_gone(client, project, people):
    c = client_for(client, people["member"])
    assignment = lease(project, people["member"])
    leasing.assignment_skip(assignment=assignment, reason="x")
    response = c.post(f"/tasks/{assignment.task_id}/heartbeat/", **HTMX)
    assert b"already skipped" in response.content and b'role="alert"' in response.content


def test_skip_needs_a_reason_and_then_gives_the_next_task(client, project, people):
    c = client_for(client, people["member"])
    assignment = lease(project, people["member"])
    response = c.post(f"/tasks/{assignment.task_id}/skip/", {"reason": ""}, **HTMX)
    assert b"Choose why you skip this task." in response.content
    response = c.post(
        f"/tasks/{assignment.task_id}/skip/",
        {"reason": "unclear", "reason_detail": "vague"},
        **HTMX,
    )
    assignment.refresh_from_db()
    assert assignment.state == "skipped" and assignment.skip_reason == "unclear: vague"
    assert b"Skipped." in response.content


@pytest.mark.parametrize(
    ("kind", "form", "expected"),
    [
        (
            TaskKind.WRITE_PROMPT,
            {
                "mode": "single",
                "text": "Write a haiku",
                "tags": ["generation"],
                "extra_tags": "poetry, ,x",
            },
            {"text": "Write a haiku", "tags": ["generation", "poetry", "x"]},
        ),
        (
            TaskKind.WRITE_PROMPT,
            {
                "mode": "multi",
                "turn_role": ["user", "assistant", "user", "assistant"],
                "turn_content": ["Hi", "Hello!", "Tell a joke", ""],
                "tags": ["chat"],
            },
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Tell a joke"},
                ],
                "tags": ["chat"],
            },
        ),
        (TaskKind.DEMONSTRATION, {"text": "The answer is 12."}, {"text": "The answer is 12."}),
        (TaskKind.RATE, {"score": "6", "flags": ["harmful", "made_up_facts"]}, None),
        (TaskKind.COMPARE, {"choice": "b", "strength": "3"}, None),
        (TaskKind.COMPARE, {"choice": "tie"}, None),
    ],
)
def test_each_kind_of_form_becomes_its_payload(
    client, project_factory, people, kind, form, expected
):
    project = project_factory(
        "kinds", prompts=1, kinds=(kind,), members=[(people["member"], Role.LABELER)]
    )
    c = client_for(client, people["member"])
    assignment = lease(project, people["member"])
    c.post(f"/tasks/{assignment.task_id}/submit/", {"idempotency_key": "k", **form}, **HTMX)
    payload = Annotation.objects.get().payload
    if kind == TaskKind.RATE:
        expected = {"score": 6, "flags": ["harmful", "made_up_facts"]}
    if kind == TaskKind.COMPARE and form["choice"] == "b":
        a, b = assignment.shown_order
        expected = {"winner": b, "loser": a, "tie": False, "strength": 3}
    if kind == TaskKind.COMPARE and form["choice"] == "tie":
        expected = {"winner": None, "loser": None, "tie": True, "strength": 0}
    assert payload == expected


def test_an_outsider_gets_404_for_the_project_and_its_tasks(client, project, people):
    assignment = lease(project, people["member"])
    c = client_for(client, people["outsider"])
    assert c.post("/projects/alpha/next/", **HTMX).status_code == 404
    for url in ("", "submit/", "skip/", "heartbeat/"):
        method = c.get if url == "" else c.post
        assert method(f"/tasks/{assignment.task_id}/{url}").status_code == 404
    # ...and another member of the project cannot open a lease that is not theirs.
    assert (
        client_for(client, people["owner"]).get(f"/tasks/{assignment.task_id}/").status_code == 404
    )


def test_it_says_when_nothing_is_left(client, project_factory, people):
    project_factory("empty", prompts=0, members=[(people["member"], Role.LABELER)])
    response = client_for(client, people["member"]).post("/projects/empty/next/", **HTMX)
    assert b"No task is left for you in Empty" in response.content


def test_the_stats_page_counts_per_day_and_agreement(client, project_factory, make_user):
    users = [make_user(f"u{i}") for i in range(4)]
    project = project_factory(
        "agree",
        prompts=2,
        kinds=(TaskKind.COMPARE,),
        overlap=4,
        members=[(u, Role.LABELER) for u in users],
    )
    for user in users:
        while (held := lease(project, user)) is not None:
            low, high = sorted(held.shown_order)
            # Three labelers prefer the lower id; the last one always dissents.
            winner = high if user is users[3] else low
            services.annotation_submit(task=held.task, labeler=user, payload={"winner": winner})
    html = client_for(client, users[0]).get("/me/").content.decode()
    assert "Annotations per day" in html and "<td>Agree</td><td>2</td>" in html
    assert '<dd id="agreement">100%</dd>' in html
    html = client_for(client, users[3]).get("/me/").content.decode()
    assert '<dd id="agreement">0%</dd>' in html


def test_agreement_waits_for_two_other_labelers(client, project_factory, make_user):
    users = [make_user(f"u{i}") for i in range(2)]
    project = project_factory(
        "pair",
        prompts=1,
        kinds=(TaskKind.RATE,),
        overlap=2,
        members=[(u, Role.LABELER) for u in users],
    )
    for user in users:
        held = lease(project, user)
        services.annotation_submit(task=held.task, labeler=user, payload={"score": 5})
    html = client_for(client, users[0]).get("/me/").content.decode()
    assert '<dd id="agreement">—</dd>' in html
