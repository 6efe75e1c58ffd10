"""XSS sweep: a payload in every user-controlled field, rendered on every page.

Nothing may execute in the real browser, and no HTML page may carry the payload unescaped.
"""

from __future__ import annotations

import pytest
from django.test import Client

from tests.sweep import MARKER, concrete_urls, world_build

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAYLOAD = (
    f"{MARKER} <script>alert('xss-1')</script></script><script>alert('xss-2')</script>"
    "\"><img src=x onerror=alert('xss-3')> {{ 7*7 }} <a href=\"javascript:alert('xss-4')\">link</a>"
)
UNESCAPED = [b"<script>alert('xss", b"<img src=x onerror", b'href="javascript:alert']


@pytest.fixture
def xss_world(make_user):
    world = world_build(make_user, PAYLOAD)
    root = make_user("root", is_superuser=True, is_staff=True)
    world["root"] = root
    return world


def html_pages(client: Client, urls: list[str]) -> list[str]:
    pages = []
    for url in urls:
        response = client.get(url)
        if response.status_code == 200 and response["Content-Type"].startswith("text/html"):
            for needle in UNESCAPED:
                assert needle not in response.content, f"{url} renders the payload unescaped"
            pages.append(url)
    return pages


def test_nothing_renders_unescaped_or_executes(xss_world, page, login):
    urls = concrete_urls(xss_world["objects"])
    client = Client()
    client.force_login(xss_world["root"])
    pages = html_pages(client, urls)
    assert any(MARKER.encode() in client.get(url).content for url in pages)  # the payload is shown
    login("root", "pw-root")
    for url in pages:
        page.goto(url)
        page.wait_for_load_state("load")
    # The labeler's own task page, with the payload in the prompt and both responses.
    labeler = Client()
    labeler.force_login(xss_world["labeler_b"])
    task_url = f"/tasks/{xss_world['objects']['task'].pk}/"
    assert html_pages(labeler, [task_url]) == [task_url]
    page.context.clear_cookies()
    login("labeler_b", "pw-labeler_b")
    page.goto(task_url)
    page.wait_for_load_state("load")
    assert page.get_by_text("<script>alert('xss-1')</script>", exact=False).first.is_visible()
    assert page.dialogs == [], f"script ran: {page.dialogs}"
