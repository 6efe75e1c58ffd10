"""A labeler does every kind of task in real headless Chromium; the database holds the result."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from annotation import leasing, services
from annotation.models import Annotation, Assignment, Role, Source, TaskKind

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Every visible form control has an accessible name (a <label>, aria-label or aria-labelledby).
UNLABELLED_CONTROLS = """() => Array.from(document.querySelectorAll(
    'input:not([type=hidden]), textarea, select')).filter((el) => {
  const byLabel = Array.from(el.labels || []).map((l) => l.textContent).join('').trim();
  const byAria = (el.getAttribute('aria-label') || '').trim();
  const byRef = (el.getAttribute('aria-labelledby') || '').split(' ')
      .map((id) => (document.getElementById(id) || {}).textContent || '').join('').trim();
  return !(byLabel || byAria || byRef);
}).map((el) => el.outerHTML.slice(0, 120))"""


@pytest.fixture
def labeler(make_user):
    return make_user("lena")


def project_with(project_factory, labeler, kind, *, slug="work", prompts=1, k=4, **extra):
    return project_factory(
        slug, prompts=prompts, k=k, kinds=(kind,), members=[(labeler, Role.LABELER)], **extra
    )


def start(page, login, labeler):
    login(labeler.username, "pw-" + labeler.username)
    page.get_by_role("button", name="Start labeling").first.click()
    page.locator("#task-form").wait_for()
    page.wait_for_url(re.compile(r"/tasks/\d+/$"))
    mark_page(page)


def mark_page(page):
    """Mark the document (the mark survives only if no full reload happens) once htmx has
    taken over the task form: a key pressed before that would post the form natively."""
    page.wait_for_function(
        "() => { const f = document.querySelector('#task-form');"
        " return !!(window.htmx && f && f['htmx-internal-data']); }"
    )
    page.evaluate("window.__samePage = 'yes'")


def submit_and_wait(page):
    before = current_task(page)
    page.get_by_role("button", name="Submit").click()
    wait_for_next(page, before)


def current_task(page) -> str | None:
    return page.locator("#task").get_attribute("data-task")


def wait_for_next(page, before):
    """Wait until htmx swapped in another task (or the "nothing left" page), without a reload."""
    page.wait_for_function(
        "(before) => { const t = document.querySelector('#task');"
        " return t ? t.dataset.task !== before : !!document.querySelector('#no-task'); }",
        arg=before,
    )
    assert page.evaluate("window.__samePage") == "yes", "the page reloaded between tasks"


def submit_with_keys(page):
    """Ctrl+Enter, as a labeler submits, wherever the focus is; wait for the next task."""
    before = current_task(page)
    page.keyboard.press("Control+Enter")
    wait_for_next(page, before)


def held_assignment(labeler) -> Assignment:
    return Assignment.objects.select_related("task").get(labeler=labeler, state="active")


def assert_accessible(page):
    assert page.evaluate(UNLABELLED_CONTROLS) == []


def the_annotation(labeler) -> Annotation:
    (annotation,) = Annotation.objects.filter(labeler=labeler)
    return annotation


def test_it_writes_a_single_turn_prompt_with_tags(
    page, login, screenshot, labeler, project_factory
):
    project_with(project_factory, labeler, TaskKind.WRITE_PROMPT)
    start(page, login, labeler)
    assert_accessible(page)
    page.get_by_label("Your prompt").fill("Explain photosynthesis to a child.")
    page.get_by_label("brainstorming").check()
    page.get_by_label("Other tags").fill("science, kids")
    screenshot(page, "task-write-prompt")
    submit_and_wait(page)
    assert the_annotation(labeler).payload == {
        "text": "Explain photosynthesis to a child.",
        "tags": ["brainstorming", "science", "kids"],
    }


def test_it_writes_a_multi_turn_prompt(page, login, screenshot, labeler, project_factory):
    project_with(project_factory, labeler, TaskKind.WRITE_PROMPT)
    start(page, login, labeler)
    page.get_by_label("Conversation (multi-turn)").check()
    assert not page.get_by_label("Your prompt").is_visible()
    page.get_by_label("Turn 1: text").fill("Hi there")
    page.get_by_role("button", name="Add a turn").click()
    page.get_by_label("Turn 2: text").fill("Hello! How can I help?")
    page.get_by_role("button", name="Add a turn").click()
    page.get_by_label("Turn 3: text").fill("Tell me a joke about cats.")
    page.get_by_label("chat").check()
    assert_accessible(page)
    screenshot(page, "task-write-prompt-multi-turn")
    submit_and_wait(page)
    assert the_annotation(labeler).payload == {
        "messages": [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke about cats."},
        ],
        "tags": ["chat"],
    }


def test_it_writes_a_demonstration_and_the_next_task_appears(
    page, login, screenshot, labeler, project_factory
):
    project_with(project_factory, labeler, TaskKind.DEMONSTRATION, prompts=2)
    start(page, login, labeler)
    assert_accessible(page)
    first_url = page.url
    page.get_by_label("Your ideal assistant reply").fill("Here is a careful answer.")
    page.get_by_label("Rationale").fill("Short and correct.")
    screenshot(page, "task-demonstration")
    submit_and_wait(page)
    annotation = the_annotation(labeler)
    assert annotation.payload == {"text": "Here is a careful answer."}
    assert annotation.rationale == "Short and correct."
    assert annotation.guideline_version == 1
    # The next task is in place, at its own URL, with an empty form.
    assert page.url != first_url and re.search(r"/tasks/\d+/$", page.url)
    assert page.get_by_label("Your ideal assistant reply").input_value() == ""


def test_it_ranks_with_the_mouse(page, login, screenshot, labeler, project_factory):
    project_with(project_factory, labeler, TaskKind.RANK, k=4)
    # Tall enough that source and target are on screen together: a drag that has to scroll
    # the page first is Playwright's weak spot, not the page's.
    page.set_viewport_size({"width": 1280, "height": 1600})
    start(page, login, labeler)
    assert_accessible(page)
    shown = Assignment.objects.get(labeler=labeler).shown_order
    cards = [page.locator(f'.rankable[data-response="{i}"]') for i in shown]
    slot = lambda rank: page.locator(f'.rank-slot[data-rank="{rank}"]')  # noqa: E731
    for card, rank in zip(cards, [2, 1, 2, 4], strict=True):
        card.locator(".label").drag_to(slot(rank))
    assert page.locator('.rank-slot[data-rank="2"] .rankable').count() == 2
    page.get_by_label("All responses are unacceptable").check()
    screenshot(page, "task-rank")
    submit_and_wait(page)
    annotation = the_annotation(labeler)
    assert annotation.payload == {
        "ranking": [[shown[1]], sorted([shown[0], shown[2]]), [shown[3]]],
        "all_unacceptable": True,
    }
    assert annotation.shown_order == shown


def test_it_ranks_with_the_keyboard_only(page, login, screenshot, labeler, project_factory):
    project_with(project_factory, labeler, TaskKind.RANK, k=4)
    start(page, login, labeler)
    shown = Assignment.objects.get(labeler=labeler).shown_order
    for _ in range(15):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('rankable')"):
            break
    assert page.evaluate("document.activeElement.dataset.response") == str(shown[0])
    # Focus moves on after each number; the last response keeps focus, and ↑ lifts it a rank.
    for key in ["2", "1", "2", "4"]:
        page.keyboard.press(key)
    page.keyboard.press("ArrowUp")
    assert page.locator(f"#rank-{shown[3]}").input_value() == "3"
    screenshot(page, "task-rank-keyboard")
    before = current_task(page)
    page.keyboard.press("Control+Enter")
    wait_for_next(page, before)
    assert the_annotation(labeler).payload == {
        "ranking": [[shown[1]], sorted([shown[0], shown[2]]), [shown[3]]],
        "all_unacceptable": False,
    }


def test_it_moves_and_unplaces_ranked_responses_with_the_keyboard(
    page, login, labeler, project_factory
):
    """↓ moves a response one rank worse (from the pool: to rank 1; never past the last rank);
    0, Delete and Backspace take it off the ranking.

    Kills mutations: workspace.js rankKeys without the ArrowDown branch; without the "0" key;
    without Delete; without Backspace."""
    project_with(project_factory, labeler, TaskKind.RANK, k=3)
    start(page, login, labeler)
    shown = held_assignment(labeler).shown_order
    rank = {i: page.locator(f"#rank-{i}") for i in shown}
    card = {i: page.locator(f'.rankable[data-response="{i}"]') for i in shown}
    pool = page.locator(".pool .rankable")
    card[shown[0]].focus()
    page.keyboard.press("2")
    page.keyboard.press("1")  # focus moved on to the next response to place
    expect(rank[shown[1]]).to_have_value("1")
    expect(card[shown[2]]).to_be_focused()
    for expected in ["1", "2", "3", "3"]:
        page.keyboard.press("ArrowDown")
        expect(rank[shown[2]]).to_have_value(expected)
    page.keyboard.press("0")
    expect(rank[shown[2]]).to_have_value("")
    expect(pool).to_have_count(1)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(rank[shown[2]]).to_have_value("2")  # tied with the first response
    card[shown[1]].focus()
    page.keyboard.press("Backspace")
    expect(rank[shown[1]]).to_have_value("")
    card[shown[0]].focus()
    page.keyboard.press("Delete")
    expect(rank[shown[0]]).to_have_value("")
    expect(pool).to_have_count(2)
    card[shown[1]].focus()
    page.keyboard.press("3")
    card[shown[0]].focus()
    page.keyboard.press("1")
    submit_with_keys(page)
    assert the_annotation(labeler).payload == {
        "ranking": [[shown[0]], [shown[2]], [shown[1]]],
        "all_unacceptable": False,
    }


def test_it_compares_a_pair(page, login, screenshot, labeler, project_factory):
    project_with(project_factory, labeler, TaskKind.COMPARE)
    start(page, login, labeler)
    assert_accessible(page)
    shown = Assignment.objects.get(labeler=labeler).shown_order
    page.get_by_label("B is better").check()
    page.get_by_label("Clearly better").check()
    screenshot(page, "task-compare")
    submit_and_wait(page)
    assert the_annotation(labeler).payload == {
        "winner": shown[1],
        "loser": shown[0],
        "tie": False,
        "strength": 2,
    }


def test_it_writes_a_better_one_than_a_compared_pair_with_the_keyboard_only(
    page, login, screenshot, labeler, project_factory
):
    """x marks both responses bad; w does too and puts the focus in "Write a better one", where
    letters are text, not shortcuts; Ctrl+Enter submits. The answer becomes a demonstration of
    the prompt, and the task's judgment casts no vote between the two.

    Kills mutations: workspace.js without the compare x key; w not focusing the answer; letters
    typed in the answer taken as shortcuts; views._payload_from dropping the better answer."""
    project_with(project_factory, labeler, TaskKind.COMPARE, prompts=2)
    start(page, login, labeler)
    assert_accessible(page)
    first = held_assignment(labeler)
    both_bad = page.get_by_role("radio", name=re.compile("^Both are bad"))
    page.keyboard.press("a")
    page.keyboard.press("x")
    expect(both_bad).to_be_checked()
    page.keyboard.press("b")
    page.keyboard.press("w")
    expect(both_bad).to_be_checked()
    expect(page.get_by_label(re.compile("^Write a better one"))).to_be_focused()
    page.keyboard.type("a better answer, typed with a b t x w in it")
    expect(both_bad).to_be_checked()  # the letters were text
    screenshot(page, "task-compare-better")
    submit_with_keys(page)

    judged = Annotation.objects.get(task_id=first.task_id)
    better = "a better answer, typed with a b t x w in it"
    assert judged.payload == {"winner": None, "loser": None, "tie": True, "strength": 0,
                              "all_unacceptable": True, "better": better}  # fmt: skip
    written = Annotation.objects.get(kind=TaskKind.DEMONSTRATION)
    assert written.payload == {"text": better} and written.labeler == labeler
    assert written.task.prompt_id == first.task.prompt_id


def test_it_compares_pairs_with_the_keyboard_only(page, login, labeler, project_factory):
    """a / b / t choose, 1 2 3 say how much better, Ctrl+Enter submits from wherever the focus
    is (the heading the workspace focuses after each task, or the rationale while typing); the
    stored winner is the response shown as A or B, whatever its place in the stored order.

    Kills mutations: workspace.js compare keys a and b swapped; a strength key dropped; letters
    typed in the rationale taken as shortcuts (no isTyping check); Ctrl+Enter ignored outside
    the form; views._payload_from taking A from the candidates' id order, not the shown one."""
    project_with(project_factory, labeler, TaskKind.COMPARE, prompts=3)
    start(page, login, labeler)
    # The larger id is shown as A, so a winner taken from the id order would be the wrong one.
    first = held_assignment(labeler)
    shown = sorted(first.shown_order, reverse=True)
    Assignment.objects.filter(pk=first.pk).update(shown_order=shown)
    page.reload()
    mark_page(page)
    assert page.locator(".candidate").first.get_attribute("data-response") == str(shown[0])
    answers = {}

    page.keyboard.press("b")
    page.keyboard.press("a")
    expect(page.get_by_label("A is better")).to_be_checked()
    page.keyboard.press("3")
    expect(page.get_by_label("Much better")).to_be_checked()
    submit_with_keys(page)
    answers[first.task_id] = {"winner": shown[0], "loser": shown[1], "tie": False, "strength": 3}

    second = held_assignment(labeler)
    page.keyboard.press("b")
    page.keyboard.press("1")
    expect(page.get_by_label("B is better")).to_be_checked()
    expect(page.get_by_label("Slightly better")).to_be_checked()
    page.get_by_label("Rationale").click()
    page.keyboard.type("a tie at first, then B by 2 points")
    submit_with_keys(page)
    winner, loser = second.shown_order[1], second.shown_order[0]
    answers[second.task_id] = {"winner": winner, "loser": loser, "tie": False, "strength": 1}

    third = held_assignment(labeler)
    expect(page.locator("#task-title")).to_be_focused()  # where each new task puts the focus
    page.keyboard.press("2")
    expect(page.get_by_label("Clearly better")).to_be_checked()
    page.keyboard.press("t")
    expect(page.get_by_label("About the same (tie)")).to_be_checked()
    submit_with_keys(page)
    answers[third.task_id] = {"winner": None, "loser": None, "tie": True, "strength": 0}

    stored = Annotation.objects.filter(labeler=labeler)
    assert {a.task_id: a.payload for a in stored} == answers
    assert stored.get(task_id=second.task_id).rationale == "a tie at first, then B by 2 points"


def test_it_rates_and_flags_a_response(page, login, screenshot, labeler, project_factory):
    project_with(project_factory, labeler, TaskKind.RATE)
    start(page, login, labeler)
    assert_accessible(page)
    page.get_by_label("5", exact=True).check()
    page.get_by_label("Makes up facts").check()
    page.get_by_label("Contains personal data").check()
    screenshot(page, "task-rate")
    submit_and_wait(page)
    assert the_annotation(labeler).payload == {
        "score": 5,
        "flags": ["made_up_facts", "personal_data"],
    }


def test_it_rates_with_the_keyboard(page, login, labeler, project_factory):
    """1 … 7 choose the score; digits typed in the rationale stay text.

    Kills mutations: workspace.js rate keys limited to 1-6 (or 2-7); a key checking the
    neighbouring score; digits typed in the rationale taken as scores (no isTyping check)."""
    project_with(project_factory, labeler, TaskKind.RATE)
    start(page, login, labeler)
    for score in "1234567":
        page.keyboard.press(score)
        expect(page.get_by_label(score, exact=True)).to_be_checked()
    page.get_by_label("Harmful").check()
    page.get_by_label("Makes up facts").check()
    page.get_by_label("Rationale").click()
    page.keyboard.type("7, not 3: only 1 slip")
    expect(page.get_by_label("7", exact=True)).to_be_checked()
    submit_with_keys(page)
    annotation = the_annotation(labeler)
    assert annotation.payload == {"score": 7, "flags": ["harmful", "made_up_facts"]}
    assert annotation.rationale == "7, not 3: only 1 slip"


def test_a_double_click_on_submit_saves_one_annotation(page, login, labeler, project_factory):
    project_with(project_factory, labeler, TaskKind.DEMONSTRATION, prompts=3)
    start(page, login, labeler)
    page.get_by_label("Your ideal assistant reply").fill("Once only.")
    submits = []
    page.on("request", lambda r: submits.append(r) if r.url.endswith("/submit/") else None)
    before = current_task(page)
    page.get_by_role("button", name="Submit").dblclick()
    wait_for_next(page, before)
    # Both clicks happened before the first answer came back, so any second submit is in
    # `submits` by now; the server has finished with each one once its response arrived.
    for request in submits:
        assert request.response() is not None
    assert Annotation.objects.filter(labeler=labeler).count() == 1
    assert Assignment.objects.filter(labeler=labeler, state="active").count() == 1


def test_untrusted_text_shows_as_text_and_runs_nothing(
    page, login, screenshot, assert_no_dialog, labeler, project_factory
):
    """Kills mutation: templates/base.html with an <img src=missing onerror=alert()> (the
    no-dialog check waits for the image to fail, not a fixed 200 ms)."""
    project = project_with(project_factory, labeler, TaskKind.RATE, prompts=0)
    (prompt,), _ = services.prompts_create(
        project=project, items=[{"text": "{{ 7*7 }} — مرحبا بالعالم 👋🏽"}]
    )
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)> " + "x" * 3000
    response = services.response_create(prompt=prompt, text=evil, origin=Source.MODEL)
    services.task_create(project=project, kind=TaskKind.RATE, prompt=prompt, candidates=[response])
    start(page, login, labeler)
    assert page.get_by_text("<script>alert(1)</script>", exact=False).is_visible()
    assert page.get_by_text("{{ 7*7 }} — مرحبا بالعالم 👋🏽").is_visible()
    assert page.locator("#task img").count() == 0
    # A 3000-character line wraps instead of widening the page.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "task-untrusted-text")
    assert_no_dialog()


def test_a_lost_lease_keeps_the_draft_and_gives_the_next_task(
    page, login, labeler, make_user, project_factory
):
    other = make_user("otto")
    project = project_with(project_factory, labeler, TaskKind.DEMONSTRATION, prompts=2)
    services.membership_set(project=project, user=other, role=Role.LABELER)
    start(page, login, labeler)
    page.get_by_label("Your ideal assistant reply").fill("Twenty minutes of careful writing.")
    held = Assignment.objects.get(labeler=labeler)
    Assignment.objects.filter(pk=held.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert leasing.next_task_for(project=project, labeler=other).task_id == held.task_id
    page.get_by_role("button", name="Submit").click()
    page.get_by_role("alert").filter(has_text="another labeler took this task").wait_for()
    assert page.get_by_label("Your text").input_value() == "Twenty minutes of careful writing."
    assert page.locator("#task-form").is_visible()  # the next task is ready below
    assert Annotation.objects.filter(labeler=labeler).count() == 0


def test_it_shows_the_shortcut_help_and_a_lease_countdown(page, login, labeler, project_factory):
    project_with(project_factory, labeler, TaskKind.RANK)
    start(page, login, labeler)
    expect(page.locator("#lease .countdown")).to_have_text(re.compile(r"^1[45]:\d\d$"))
    page.locator("#task-title").focus()
    page.keyboard.press("?")
    help_dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(help_dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()
    page.keyboard.press("g")
    expect(page.locator("#guidelines")).not_to_have_attribute("open", "")


@pytest.mark.slow
def test_an_open_task_page_renews_its_lease_and_a_closed_one_stops(
    page, login, browser, live_server, labeler, make_user, project_factory
):
    """The page renews its lease every `hx-trigger` interval, well within the lease, and the
    countdown shows the renewed expiry; once the page is closed the lease is no longer renewed
    (a second labeler's open page is the clock: it renewed a whole interval after the last
    renewal of the closed one).

    Kills mutations: _lease.html without its hx-trigger; views._lease_context's interval as
    long as the lease; views.task_heartbeat answering a fragment that no longer polls (no
    heartbeat_seconds), or not renewing; leasing.lease_renew not saving expires_at, or
    renewing every active lease of the project (a closed page's too)."""
    lease_seconds = 30  # the smallest a project allows
    other = make_user("otto")
    project = project_with(
        project_factory, labeler, TaskKind.DEMONSTRATION, prompts=2, lease_seconds=lease_seconds
    )
    services.membership_set(project=project, user=other, role=Role.LABELER)
    start(page, login, labeler)
    trigger = page.locator("#lease").get_attribute("hx-trigger")
    interval = int(re.fullmatch(r"every (\d+)s", trigger).group(1))
    assert interval <= lease_seconds / 2, trigger
    held = held_assignment(labeler)
    countdown = "#lease .countdown"
    expires = page.locator(countdown).get_attribute("data-expires")
    assert datetime.fromisoformat(expires) == held.expires_at

    other_context = browser.new_context(base_url=live_server.url)
    try:
        other_page = other_context.new_page()
        login(other.username, "pw-" + other.username, on=other_page)
        other_page.get_by_role("button", name="Start labeling").click()
        other_page.locator("#task-form").wait_for()

        for _ in range(2):  # the renewed fragment keeps renewing
            page.wait_for_function(
                "([selector, before]) => document.querySelector(selector).dataset.expires !== before",
                arg=[countdown, expires],
                timeout=(interval + 10) * 1000,
            )
            renewed = page.locator(countdown).get_attribute("data-expires")
            held.refresh_from_db()
            assert held.expires_at == datetime.fromisoformat(renewed)
            assert datetime.fromisoformat(renewed) > datetime.fromisoformat(expires)
            expires = renewed

        page.close()
        held.refresh_from_db()
        last = held.expires_at
        # The closed page would have renewed by `last + interval`; wait until the open page
        # renewed a second after that, on the server's clock.
        other_page.wait_for_function(
            "([selector, after]) => Date.parse(document.querySelector(selector).dataset.expires) > after",
            arg=[countdown, (last + timedelta(seconds=interval + 1)).timestamp() * 1000],
            timeout=(2 * interval + 10) * 1000,
        )
        held.refresh_from_db()
        assert held.expires_at == last
        assert held.state == "active"
    finally:
        other_context.close()


def test_every_page_is_labelled_focus_visible_and_fits_at_200_percent_zoom(
    page, login, labeler, project_factory, screenshot
):
    # 200% zoom of a 1280px window lays the page out in 640 CSS pixels.
    page.set_viewport_size({"width": 640, "height": 800})
    kinds = [
        TaskKind.WRITE_PROMPT,
        TaskKind.DEMONSTRATION,
        TaskKind.RANK,
        TaskKind.COMPARE,
        TaskKind.RATE,
    ]
    project_with(project_factory, labeler, TaskKind.RANK, prompts=1, k=4)
    project = labeler.projects.get()
    for kind in kinds[:2] + kinds[3:]:
        prompt = project.prompts.first()
        candidates = {TaskKind.COMPARE: 2, TaskKind.RATE: 1}.get(kind, 0)
        services.task_create(
            project=project,
            kind=kind,
            prompt=None if kind == TaskKind.WRITE_PROMPT else prompt,
            candidates=list(prompt.responses.all()[:candidates]),
        )
    login(labeler.username, "pw-" + labeler.username)
    checked = []

    def check_page(name):
        assert page.evaluate(UNLABELLED_CONTROLS) == [], name
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), name
        page.keyboard.press("Tab")
        outline = page.evaluate(
            "getComputedStyle(document.activeElement).outlineStyle + ' ' + "
            "getComputedStyle(document.activeElement).outlineWidth"
        )
        assert outline != "none 0px" and not outline.startswith("none"), (name, outline)
        checked.append(name)

    check_page("home")
    page.get_by_role("button", name="Start labeling").click()
    page.evaluate("window.__samePage = 'yes'")
    for _ in kinds:
        page.locator("#task-form").wait_for()
        kind = page.locator("#task").get_attribute("data-kind")
        check_page(kind)
        screenshot(page, f"zoom-200-{kind}")
        before = current_task(page)
        page.locator("#skip summary").click()
        page.get_by_label("Why do you skip it?").select_option("unclear")
        page.get_by_role("button", name="Skip and take the next task").click()
        wait_for_next(page, before)
    page.goto("/me/")
    check_page("stats")
    assert sorted(checked) == sorted(["home", "stats", *kinds])
