"""XSS sweep: a payload in every user-controlled field, rendered on every page.

Nothing may execute in the real browser, and no HTML page may carry the payload unescaped.
"""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client, RequestFactory
from django.urls import resolve

from tests.sweep import MARKER, concrete_urls, world_build

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAYLOAD = (
    f"{MARKER} <script>alert('xss-1')</script></script><script>alert('xss-2')</script>"
    "\"><img src=x onerror=alert('xss-3')> {{ 7*7 }} <a href=\"javascript:alert('xss-4')\">link</a>"
)
UNESCAPED = [b"<script>alert('xss", b"<img src=x onerror", b'href="javascript:alert']


# The pages that answer the superuser's GET with something else than 200, and why; any other
# answer fails the sweep (a page it cannot render is a page it does not check). Besides these:
# POST-only endpoints (405, no GET in Allow) and the admin's add and delete pages of models whose
# admin offers none (403: judgments, records, runs, workers).
NOT_200 = {
    "admin:login": (302, "a logged-in user is sent on to the admin index"),
    "admin:autocomplete": (403, "a widget's JSON query; refused without its parameters"),
    "demo:report": (404, "no demo report in the test's VAR_DIR (its escaping is tested in "
                    "tests/training/test_demo_report_view.py)"),
    "demo:report-json": (404, "no demo report in the test's VAR_DIR"),
    "annotation:curate_snapshot_download": (404, "a file is named by ?file=, and the world's "
                                             "snapshot has none on disk (downloads: "
                                             "tests/annotation/test_snapshot_pages.py)"),
    "training:run_tensorboard": (404, "the world's runs logged to no tracker: nothing to "
                                 "download (the archive: tests/training/test_rl_stages.py)"),
    "annotation:task": (404, "the page of a task is for the labeler who holds it: see below"),
}  # fmt: skip


@pytest.fixture
def xss_world(make_user, settings, tmp_path):
    settings.VAR_DIR = tmp_path / "var"
    settings.DATA_DIR = tmp_path / "data"
    world = world_build(make_user, PAYLOAD)
    root = make_user("root", is_superuser=True, is_staff=True)
    world["root"] = root
    return world


def why_not_200(url: str, response, user) -> str | None:
    """Why `url` rightly answers `user` with something else than 200; None if it should not."""
    if response.status_code == 405 and "GET" not in response.get("Allow", ""):
        return "POST only"
    match = resolve(url)
    if NOT_200.get(match.view_name, (None,))[0] == response.status_code:
        return NOT_200[match.view_name][1]
    if response.status_code != 403:
        return None
    request = RequestFactory().get(url)
    request.user = user
    for model, model_admin in admin.site._registry.items():
        name = f"{model._meta.app_label}_{model._meta.model_name}"
        if match.url_name == f"{name}_add" and not model_admin.has_add_permission(request):
            return "the admin adds none"
        if match.url_name == f"{name}_delete" and not model_admin.has_delete_permission(request):
            return "the admin deletes none"
    return None


def html_pages(client: Client, user, urls: list[str]) -> list[str]:
    """The HTML pages among `urls`, each checked for the payload left unescaped; a URL that
    answers something unexpected fails, with its status."""
    pages = []
    for url in urls:
        response = client.get(url)
        if response.status_code != 200:
            assert why_not_200(url, response, user), (
                f"GET {url} → {response.status_code}: the XSS sweep cannot check it; fix the "
                "page or, if it is right, say why in NOT_200"
            )
            continue
        if response["Content-Type"].startswith("text/html"):
            for needle in UNESCAPED:
                assert needle not in response.content, f"{url} renders the payload unescaped"
            pages.append(url)
    return pages


def test_nothing_renders_unescaped_or_executes(xss_world, page, login):
    urls = concrete_urls(xss_world["objects"])
    client = Client()
    client.force_login(xss_world["root"])
    pages = html_pages(client, xss_world["root"], urls)
    assert any(MARKER.encode() in client.get(url).content for url in pages)  # the payload is shown
    # The playground's chat page shows the model's reply (untrusted text) of B's conversation.
    chat = [url for url in pages if "/playground/sessions/" in url and url.count("/") == 5]
    assert chat and all(MARKER.encode() in client.get(url).content for url in chat)
    login("root", "pw-root")
    for url in pages:
        page.goto(url)
        page.wait_for_load_state("load")
    # The labeler's own task page, with the payload in the prompt and both responses.
    labeler = Client()
    labeler.force_login(xss_world["labeler_b"])
    task_url = f"/tasks/{xss_world['objects']['task'].pk}/"
    assert html_pages(labeler, xss_world["labeler_b"], [task_url]) == [task_url]
    page.context.clear_cookies()
    login("labeler_b", "pw-labeler_b")
    page.goto(task_url)
    page.wait_for_load_state("load")
    assert page.get_by_text("<script>alert('xss-1')</script>", exact=False).first.is_visible()
    assert page.dialogs == [], f"script ran: {page.dialogs}"
