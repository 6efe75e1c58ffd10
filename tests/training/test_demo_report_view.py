"""The demo report page: staff only, linked from the admin index, a clear hint when missing."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def report_dir(tmp_path, settings):
    settings.VAR_DIR = tmp_path
    (tmp_path / "demo").mkdir()
    return tmp_path / "demo"


def test_it_shows_the_report_to_staff_and_links_it_from_the_admin(client, make_user, report_dir):
    (report_dir / "report.html").write_text("<h1>RLHF demo report</h1>", encoding="utf-8")
    (report_dir / "report.json").write_text(json.dumps({"ppo_vs_sft": {}}), encoding="utf-8")
    client.force_login(make_user("owner", is_staff=True, is_superuser=True))
    index = client.get("/admin/")
    assert b'href="/training/demo/report/"' in index.content
    page = client.get("/training/demo/report/")
    assert page.status_code == 200
    assert b"RLHF demo report" in b"".join(page.streaming_content)
    assert "script-src" not in page["Content-Security-Policy"]
    data = client.get("/training/demo/report.json")
    assert json.loads(b"".join(data.streaming_content)) == {"ppo_vs_sft": {}}


def test_it_keeps_the_report_from_labelers_and_visitors(client, make_user, report_dir):
    (report_dir / "report.html").write_text("secret", encoding="utf-8")
    assert client.get("/training/demo/report/").status_code == 302
    client.force_login(make_user("labeler"))
    assert client.get("/training/demo/report/").status_code == 302


def test_it_says_how_to_make_a_report_when_there_is_none(client, make_user, report_dir):
    client.force_login(make_user("member", is_staff=True))
    page = client.get("/training/demo/report/")
    assert page.status_code == 404
    assert b"make demo" in page.content
