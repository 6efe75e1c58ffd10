"""A labeler does every kind of task in real headless Chromium; the database holds the result."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from annotation import services
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
    page.evaluate("window.__samePage = 'yes'")  # survives only if no full reload happens


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


def test_a_double_click_on_submit_saves_one_annotation(page, login, labeler, project_factory):
    project_with(project_factory, labeler, TaskKind.DEMONSTRATION, prompts=3)
    start(page, login, labeler)
    page.get_by_label("Your ideal assistant reply").fill("Once only.")
    before = current_task(page)
    page.get_by_role("button", name="Submit").dblclick()
    wait_for_next(page, before)
    page.wait_for_load_state("networkidle")
    assert Annotation.objects.filter(labeler=labeler).count() == 1
    assert Assignment.objects.filter(labeler=labeler, state="active").count() == 1


def test_untrusted_text_shows_as_text_and_runs_nothing(
    page, login, screenshot, labeler, project_factory
):
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
    page.wait_for_timeout(200)
    assert page.dialogs == []


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
    assert services.next_task_for(project=project, labeler=other).task_id == held.task_id
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
