"""A curator's first look at the data in real headless Chromium: from the home page's links to
the curate page, where judgments read as texts in their order; to a snapshot's page, its preview
and its download, whose bytes hash to the sha256 the page shows. A labeler who opens the curate
page is told which role it needs and who grants it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from annotation import services
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import Role
from tests.annotation.snapshot_testutils import demonstrate, judge, prompt_with
from tests.browser.test_judgments_reach_data import as_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def world(make_user, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    curator, labeler, boss = make_user("cora"), make_user("lena"), make_user("ada")
    project = services.project_create(name="Loop", slug="loop")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    services.membership_set(project=project, user=labeler, role=Role.LABELER)
    services.membership_set(project=project, user=boss, role=Role.ADMIN)
    demonstrate(project, {"text": "Greet <b>me</b>"}, "Hello\x1b[0m there", labeler)
    _, (red, blue, green), task = prompt_with(project, "Name a colour", ["red", "blue", "green"])
    judge(task, labeler, {"ranking": [[blue.pk], [red.pk, green.pk]]})
    request = snapshot_request(project=project, kind="sft",
                               filters={"test_size": 0}, enqueue=False)  # fmt: skip
    return project, snapshot_build(snapshot=request)


def test_a_curator_reads_judgments_and_downloads_a_snapshot(
    browser, live_server, world, screenshot
):
    project, snapshot = world
    page = as_user(browser, live_server, "cora")
    expect(page.locator("#role-loop")).to_have_text("curator")
    page.locator("#curate-loop").click()

    ranking = page.locator("#annotations ol.judgment.ranking").first
    expect(ranking.locator("li").nth(0)).to_contain_text("Rank 1")
    expect(ranking.locator("li").nth(0)).to_contain_text("blue")
    expect(ranking.locator("li").nth(1)).to_contain_text("(tie of 2)")
    expect(page.locator("#annotations")).not_to_contain_text("'ranking'")

    page.locator("#snapshots-link").click()
    page.get_by_role("link", name=f"#{snapshot.pk}").click()
    preview = page.locator("#preview-train")
    expect(preview).to_contain_text("Greet <b>me</b>")  # shown as text, not bold
    expect(preview.locator(".control").first).to_have_text("\u241b")
    shown = page.locator("#splits td code").nth(1).inner_text()
    screenshot(page, "curator-snapshot")

    with page.expect_download() as info:
        page.locator("#download-train").click()
    saved = Path(info.value.path())
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == shown
    assert shown == snapshot.manifest["splits"]["train"]["sha256"]
    assert re.fullmatch(r"loop-sft-[0-9a-f]{12}-train\.jsonl", info.value.suggested_filename)


def test_a_labeler_is_told_which_role_the_curate_page_needs(browser, live_server, world):
    page = as_user(browser, live_server, "lena")
    expect(page.locator("#role-loop")).to_have_text("labeler")
    expect(page.locator("#curate-loop")).to_have_count(0)
    page.goto("/curate/loop/")
    expect(page.locator("#refusal")).to_contain_text("Only a curator or engineer or admin")
    expect(page.locator("#refusal")).to_contain_text("its admins can grant it: ada")
