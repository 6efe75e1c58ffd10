"""A demo labeler logs in and opens a task, in a real browser."""

from __future__ import annotations

import pytest

from annotation.demo import demo_password, demo_seed

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_demo_labeler_logs_in_and_opens_a_task(page, login, screenshot, assert_no_dialog):
    """Kills mutation: templates/base.html with an <img src=missing onerror=alert()>."""
    demo_seed()
    login("labeler1", demo_password("labeler1"))
    assert page.get_by_role("heading", name="My projects").is_visible()
    page.get_by_role("button", name="Start labeling").first.click()
    page.wait_for_url("**/tasks/*/")
    assert page.locator("#task").is_visible()
    screenshot(page, "foundation-task")
    assert_no_dialog()
