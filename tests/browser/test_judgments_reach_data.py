"""Issue 20's loop in real headless Chromium: every step a person takes is a click or a key.

A curator selects an import batch and creates demonstration tasks for it; a labeler writes
them; the curator creates rate tasks for the same batch (they rate the written
demonstrations); a second labeler rates one 7 and the other 2; the curator cuts an SFT snapshot
filtered by `min_rating` in the admin, and it holds the demonstration rated 7 and not the
other. The background jobs (task batches, the snapshot build) are run by the test where a
Celery worker would run them: the same task functions, through Celery's `apply`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation import tasks as jobs
from annotation.imports import import_file
from annotation.models import (
    Annotation,
    ImportBatch,
    Role,
    Snapshot,
    Task,
    TaskBatch,
    TaskKind,
)
from tests.browser.test_labeling import UNLABELLED_CONTROLS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TIDES = "How do tides work?"
PRIME = "Name a prime number and say why it is prime."
ELSEWHERE = "A prompt of another import batch."
GOOD = "The Moon's gravity pulls the oceans into two bulges; Earth turns under them."
WEAK = "nine"


def imported(project, tmp_path: Path, name: str, prompts: list[str]) -> ImportBatch:
    path = tmp_path / name
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    report = import_file(project=project, path=path)
    assert report.ok and report.written, report.error_lines()
    return ImportBatch.objects.get(pk=report.batch_id)


@pytest.fixture
def world(make_user, tmp_path, settings):
    settings.DATA_DIR = tmp_path / "data"
    curator, writer, rater = make_user("cora"), make_user("lena"), make_user("rafa")
    project = services.project_create(
        name="Loop",
        slug="loop",
        task_kinds=[TaskKind.DEMONSTRATION, TaskKind.RATE],
        k_responses=2,
        overlap=1,
        guidelines="Answer correctly and briefly.",
    )
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    services.membership_set(project=project, user=writer, role=Role.LABELER)
    services.membership_set(project=project, user=rater, role=Role.LABELER)
    imported(project, tmp_path, "other.jsonl", [ELSEWHERE])
    batch = imported(project, tmp_path, "week-1.jsonl", [TIDES, PRIME])
    return project, batch


def as_user(browser, live_server, username: str):
    """A fresh browser context (its own cookies) logged in as `username` by typing."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill("pw-" + username)
    page.keyboard.press("Enter")
    page.wait_for_url("**/")
    return page


def create_tasks(page, *, kind: str, batch: ImportBatch) -> TaskBatch:
    """From the curate page's form: the kind, the import batch, then "Create tasks"; the worker's
    job runs and the batch page (polling itself) shows it done."""
    page.get_by_role("link", name="Create tasks in bulk").click()
    assert page.evaluate(UNLABELLED_CONTROLS) == [], "every control of the form has a name"
    page.get_by_label("Kind of task").select_option(label=kind)
    choice = page.locator("#id_batch option", has_text=f"#{batch.pk} {batch.file_name}")
    page.get_by_label("Import batch").select_option(label=choice.inner_text())
    page.get_by_label("Labelers per task").fill("1")
    page.get_by_role("button", name="Create tasks").click()
    page.wait_for_url(re.compile(r"/curate/loop/task-batches/\d+/$"))
    created = TaskBatch.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))
    assert created.selection == {"batch": batch.pk}
    assert jobs.task_batch_run.apply(args=(created.pk,)).get().startswith("done")
    expect(page.locator("#task-batch-status")).to_have_text("Done", timeout=10_000)
    created.refresh_from_db()
    return created


def counts_shown(page) -> dict[str, str]:
    terms = page.locator("#task-batch-counts dt").all_inner_texts()
    values = page.locator("#task-batch-counts dd").all_inner_texts()
    return dict(zip(terms, (v.strip() for v in values), strict=True))


def start_labeling(page):
    page.get_by_role("button", name="Start labeling").click()
    page.locator("#task, #no-task").first.wait_for()


def shown_prompt(page) -> str:
    return page.locator(".prompt").inner_text()


def submit(page):
    """Ctrl+Enter, as a labeler submits; wait until the next task (or none) is in place."""
    before = page.locator("#task").get_attribute("data-task")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "(before) => { const t = document.querySelector('#task');"
        " return t ? t.dataset.task !== before : !!document.querySelector('#no-task'); }",
        arg=before,
    )


def snapshot_rows(snapshot: Snapshot) -> list[dict]:
    rows = []
    for split in snapshot.manifest["splits"].values():
        text = (Path(snapshot.path) / split["path"]).read_text(encoding="utf-8")
        rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def test_a_rated_demonstration_reaches_an_sft_snapshot_filtered_by_rating(
    browser, live_server, world, screenshot
):
    project, batch = world

    # 1. The curator finds the project's curate page from the home page and asks for one
    #    demonstration for each prompt of the import batch "week-1.jsonl".
    curator = as_user(browser, live_server, "cora")
    curator.get_by_role("link", name="Curate Loop").click()
    created = create_tasks(curator, kind="Write a demonstration", batch=batch)
    assert counts_shown(curator)["Tasks created"] == "2"
    assert created.counts["created"] == 2
    demo_tasks = Task.objects.filter(project=project, kind=TaskKind.DEMONSTRATION)
    assert sorted(t.prompt.text for t in demo_tasks) == sorted([PRIME, TIDES])
    screenshot(curator, "loop-1-demonstration-tasks-created")

    # 2. A labeler writes both: a careful answer to the tides prompt, a weak one to the other.
    writer = as_user(browser, live_server, "lena")
    start_labeling(writer)
    for _ in range(2):
        answer = GOOD if TIDES in shown_prompt(writer) else WEAK
        reply = writer.get_by_label("Your ideal assistant reply")
        reply.click()
        writer.keyboard.type(answer)
        submit(writer)
    # The prompt of the other import batch got no task.
    expect(writer.locator("#no-task")).to_contain_text("Nothing left")
    written = {a.task.prompt.text: a.payload["text"] for a in Annotation.objects.all()}
    assert written == {TIDES: GOOD, PRIME: WEAK}

    # 3. The curator creates rate tasks for the same batch: one per written demonstration.
    curator.get_by_role("link", name="Create more tasks").click()
    curator.get_by_role("link", name="Back to curation").click()
    create_tasks(curator, kind="Rate and flag a response", batch=batch)
    assert counts_shown(curator)["Tasks created"] == "2"
    rated = {t.candidates.get().text for t in Task.objects.filter(kind=TaskKind.RATE)}
    assert rated == {GOOD, WEAK}

    # 4. Another labeler rates them with the keyboard: the careful answer 7, the weak one 2.
    #    (The writer is not offered her own demonstrations.)
    rater = as_user(browser, live_server, "rafa")
    start_labeling(rater)
    for _ in range(2):
        text = rater.locator(".candidate .text").inner_text()
        score = "7" if text == GOOD else "2"
        rater.keyboard.press(score)
        expect(rater.get_by_label(score, exact=True)).to_be_checked()
        submit(rater)
    expect(rater.locator("#no-task")).to_contain_text("Nothing left")
    scores = {
        a.task.candidates.get().text: a.payload["score"]
        for a in Annotation.objects.filter(kind=TaskKind.RATE)
    }
    assert scores == {GOOD: 7, WEAK: 2}
    writer.goto("/")
    start_labeling(writer)
    expect(writer.locator("#no-task")).to_contain_text("Nothing left")

    # 5. The curator cuts an SFT snapshot of demonstrations rated at least 6, in the admin.
    curator.get_by_role("link", name="Admin").click()
    curator.get_by_role("link", name="Snapshots").click()
    curator.get_by_role("link", name=re.compile("Add snapshot")).click()
    curator.get_by_label("Project").select_option(label="Loop")
    curator.get_by_label("Kind").select_option(value="sft")
    curator.get_by_label("Format").select_option(value="jsonl")
    filters = curator.get_by_label("Filters")
    filters.fill("")
    filters.type('{"min_rating": 6}')
    curator.get_by_role("button", name="Save", exact=True).click()
    message = curator.locator(".messagelist")
    expect(message).to_contain_text(re.compile(r"Snapshot #\d+ queued\."))
    snapshot_id = int(re.search(r"#(\d+)", message.inner_text()).group(1))
    assert jobs.snapshot_build.apply(args=(snapshot_id,)).get().startswith("ready")
    curator.get_by_role("link", name=re.compile(rf"^{snapshot_id}$")).click()
    expect(curator.locator(".field-status")).to_contain_text("Ready")
    expect(curator.locator(".field-row_count")).to_contain_text("1")
    screenshot(curator, "loop-5-sft-snapshot-ready")

    snapshot = Snapshot.objects.get(pk=snapshot_id)
    assert snapshot.filters["min_rating"] == 6
    assert snapshot_rows(snapshot) == [{"prompt": TIDES, "completion": GOOD}]
    notes = snapshot.manifest["rating_filter"]
    assert notes == {"kept": 1, "flagged": 0, "unrated": 0, "below_min_rating": 1}
