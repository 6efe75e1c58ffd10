"""An arena battle judged by keyboard in real headless Chromium: a / b / t / x choose, Ctrl+Enter
submits; the stored winner is the response shown as A or B; the page never names a model."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.models import Annotation, Assignment, Role, Source, TaskKind
from training.models import ModelArtifact

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MODELS = ("Zephyr-parent-7731", "Quokka-child-4419")


@pytest.fixture
def battles(make_user, project_factory):
    labeler = make_user("lena")
    project = project_factory("arena", prompts=0, members=[(labeler, Role.LABELER)])
    models = [
        ModelArtifact.objects.create(project=project, name=name, stage="sft", path=f"/m/{name}")
        for name in MODELS
    ]
    prompts, _ = services.prompts_create(
        project=project, items=[{"text": f"Question {i}"} for i in range(3)]
    )
    for prompt in prompts:
        answers = [
            services.response_create(prompt=prompt, text=f"Answer of model {m.pk} to {prompt.pk}",
                                     origin=Source.MODEL, model_artifact=m)
            for m in models
        ]  # fmt: skip
        services.task_create(project=project, kind=TaskKind.ARENA, prompt=prompt,
                             candidates=answers, required=1)  # fmt: skip
    return labeler


def held(labeler) -> Assignment:
    return Assignment.objects.filter(labeler=labeler, state="active").get()


def press_and_submit(page, key: str, label: str):
    before = page.locator("#task").get_attribute("data-task")
    page.keyboard.press(key)
    expect(page.get_by_label(label)).to_be_checked()
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "(before) => { const t = document.querySelector('#task');"
        " return t ? t.dataset.task !== before : !!document.querySelector('#no-task'); }",
        arg=before,
    )


def test_a_labeler_judges_arena_battles_by_keyboard_blind(page, login, screenshot, battles):
    labeler = battles
    login(labeler.username, "pw-" + labeler.username)
    page.get_by_role("button", name="Start labeling").first.click()
    page.locator("#task-form").wait_for()
    page.wait_for_function(
        "() => { const f = document.querySelector('#task-form');"
        " return !!(window.htmx && f && f['htmx-internal-data']); }"
    )
    answers = {}
    for key, label in (("b", "B is better"), ("a", "A is better"), ("x", "Both are bad")):
        html = page.content()
        assert all(name not in html for name in MODELS) and "/m/" not in html
        assignment = held(labeler)
        if key == "b":
            screenshot(page, "task-arena")
        press_and_submit(page, key, label)
        shown = assignment.shown_order
        answers[assignment.task_id] = {"b": shown[1], "a": shown[0], "x": None}[key]
    expect(page.locator("#no-task")).to_be_visible()
    stored = {a.task_id: a.payload for a in Annotation.objects.filter(labeler=labeler)}
    assert {task: payload["winner"] for task, payload in stored.items()} == answers
    assert [p["both_bad"] for p in stored.values()].count(True) == 1
