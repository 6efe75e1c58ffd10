"""A curator imports a file from the curate page in real headless Chromium: chooses the file,
the format and skip-invalid, and follows the job's page (htmx polling) from queued to its
report: the counts, the bad row with its line and field, the reject file to download. The
import job is run by the test where a Celery worker would run it: the same task, through
Celery's `apply`."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation import tasks as jobs
from annotation.models import ImportBatch, ImportJob, Prompt, Role
from tests.browser.test_judgments_reach_data import as_user
from tests.browser.test_labeling import UNLABELLED_CONTROLS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROWS = [
    {"prompt": "How do tides work?", "chosen": "The Moon's pull.", "rejected": "Magic."},
    {"prompt": "Name a prime.", "chosen": 7, "rejected": "nine"},
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"},
]


@pytest.fixture
def world(make_user, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    curator = make_user("cora")
    project = services.project_create(name="Loop", slug="loop")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    path = tmp_path / "week-1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return project, path


def test_a_curator_uploads_a_file_and_reads_its_report(browser, live_server, world, screenshot):
    project, path = world
    page = as_user(browser, live_server, "cora")
    page.get_by_role("link", name="Curate Loop").click()
    page.get_by_role("link", name="Import a file").click()
    assert page.evaluate(UNLABELLED_CONTROLS) == [], "every control of the form has a name"
    page.get_by_label(re.compile(r"^File \(")).set_input_files(str(path))
    page.get_by_label("Format").select_option("trl")
    page.get_by_label("Skip invalid rows").check()
    page.get_by_role("button", name="Import").click()

    page.wait_for_url(re.compile(r"/curate/loop/import-jobs/\d+/$"))
    job = ImportJob.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))
    assert job.file_name == "week-1.jsonl" and job.format == "trl" and job.skip_invalid
    expect(page.locator("#import-job-status")).to_have_text("Queued")
    assert not Prompt.objects.exists()  # nothing is imported until the worker runs it

    assert jobs.import_run.apply(args=(job.pk,)).get().startswith("done")
    expect(page.locator("#import-job-status")).to_have_text("Done", timeout=10_000)
    batch = ImportBatch.objects.get()
    expect(page.locator("#import-job-written")).to_have_text(
        f"Written as import batch #{batch.pk}."
    )
    terms = page.locator("#import-counts dt").all_inner_texts()
    values = page.locator("#import-counts dd").all_inner_texts()
    counts = dict(zip(terms, values, strict=True))
    assert counts["pairs"] == "2" and counts["rejected"] == "1" and counts["records"] == "2"
    bad = page.locator("#import-bad-rows tbody tr").all_inner_texts()
    assert bad == ["line 2\tchosen\texpected text or a list of messages, got int"]
    screenshot(page, "import-job-report")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download the reject file").click()
    rejected = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert rejected == {"line": 2, "field": "chosen",
                        "message": "expected text or a list of messages, got int"}  # fmt: skip
    assert sorted(Prompt.objects.values_list("text", flat=True)) == [
        "How do tides work?", "What is 2 + 2?"
    ]  # fmt: skip
