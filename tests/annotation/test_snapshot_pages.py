"""The curator's snapshot pages: the project's snapshots, one snapshot's manifest laid out with
the first rows of each split, and its files downloaded (streamed, with their sha256); curators
and above of the project only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from snapshot_testutils import demonstrate

from annotation import services
from annotation.exports import snapshot_build, snapshot_request
from annotation.models import Role


@pytest.fixture
def world(make_user):
    curator, labeler, outsider = make_user("curator"), make_user("lab"), make_user("outsider")
    project = services.project_create(name="Snaps", slug="snaps")
    services.membership_set(project=project, user=curator, role=Role.CURATOR)
    services.membership_set(project=project, user=labeler, role=Role.LABELER)
    demonstrate(project, {"text": "Say <script>alert(1)</script>"}, "Hi\x07 there", labeler)
    demonstrate(project, {"text": "Count to 3", "tags": ["math"]}, "1, 2, 3", labeler)
    return {"project": project, "curator": curator, "labeler": labeler, "outsider": outsider}


def build(project, kind="sft", **request):
    snapshot = snapshot_request(
        project=project, kind=kind, filters={"test_size": 0}, enqueue=False, **request
    )
    return snapshot_build(snapshot=snapshot)


def test_a_curator_reads_the_manifest_and_the_first_rows_of_each_split(client, world):
    snapshot = build(world["project"])
    client.force_login(world["curator"])

    listing = client.get("/curate/snaps/snapshots/").content.decode()
    assert f'href="/curate/snaps/snapshots/{snapshot.pk}/"' in listing
    assert 'id="snapshots-link"' in client.get("/curate/snaps/").content.decode()

    html = client.get(f"/curate/snaps/snapshots/{snapshot.pk}/").content.decode()
    train = snapshot.manifest["splits"]["train"]
    size = (Path(snapshot.path) / "train.jsonl").stat().st_size
    assert f'<code id="snapshot-sha256">{snapshot.sha256}</code>' in html
    assert f"<code>{train['sha256']}</code>" in html and f'title="{size} bytes"' in html
    assert "2 prompts; languages: (unknown) 2; tags: (untagged) 1, math 1" in html
    preview = html.split('id="preview-train"')[1]
    assert "Say &lt;script&gt;alert(1)&lt;/script&gt;" in preview and "<script>alert" not in html
    assert 'Hi<span class="control" title="U+0007">\u2407</span> there' in preview
    assert "Count to 3" in preview and "\x07" not in html


def test_a_split_downloads_streamed_with_its_sha256(client, world):
    snapshot = build(world["project"])
    client.force_login(world["curator"])

    response = client.get(f"/curate/snaps/snapshots/{snapshot.pk}/download/?file=train")

    assert response.status_code == 200 and response.streaming
    body = b"".join(response.streaming_content)
    assert body == (Path(snapshot.path) / "train.jsonl").read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    assert response["X-Content-SHA256"] == digest == snapshot.manifest["splits"]["train"]["sha256"]
    assert "attachment" in response["Content-Disposition"]
    manifest = client.get(f"/curate/snaps/snapshots/{snapshot.pk}/download/?file=manifest")
    assert json.loads(b"".join(manifest.streaming_content))["sha256"] == snapshot.sha256
    missing = client.get(f"/curate/snaps/snapshots/{snapshot.pk}/download/?file=test")
    assert missing.status_code == 404  # test_size 0: no test split


def test_a_parquet_snapshot_is_previewed_too(client, world):
    snapshot = build(world["project"], format="parquet")
    client.force_login(world["curator"])
    html = client.get(f"/curate/snaps/snapshots/{snapshot.pk}/").content.decode()
    assert "train.parquet" in html and "Count to 3" in html.split('id="preview-train"')[1]


def test_only_curators_of_the_project_see_its_snapshots(client, world, make_user):
    snapshot = build(world["project"])
    other = services.project_create(name="Other", slug="other")
    services.membership_set(project=other, user=world["curator"], role=Role.CURATOR)
    pages = [
        f"/curate/snaps/snapshots/{snapshot.pk}/",
        f"/curate/snaps/snapshots/{snapshot.pk}/download/?file=train",
        "/curate/snaps/snapshots/",
    ]
    client.force_login(world["labeler"])
    for page in pages:
        refused = client.get(page)
        assert refused.status_code == 403, page
        assert "curator" in refused.content.decode()
    client.force_login(world["outsider"])
    assert all(client.get(page).status_code == 404 for page in pages)
    # Through a project the curator curates, another project's snapshot is not found.
    client.force_login(world["curator"])
    assert client.get(f"/curate/other/snapshots/{snapshot.pk}/").status_code == 404
    assert (
        client.get(f"/curate/other/snapshots/{snapshot.pk}/download/?file=train").status_code == 404
    )


def test_a_curator_goes_from_the_snapshots_page_to_cutting_one_and_back_to_its_page(client, world):
    """Kills mutations: no link to cut a snapshot where a curator lists them (the admin's form
    found only by its URL), the project not chosen for them, no way from the admin's record
    back to the snapshot's page with its preview and download."""
    client.force_login(world["curator"])
    listing = client.get("/curate/snaps/snapshots/").content.decode()
    cut = f'href="/admin/annotation/snapshot/add/?project={world["project"].pk}"'
    assert cut in listing and ">Cut a snapshot</a>" in listing
    form = client.get(f"/admin/annotation/snapshot/add/?project={world['project'].pk}")
    assert form.context["adminform"].form.initial["project"] == str(world["project"].pk)

    snapshot = build(world["project"])
    record = client.get(f"/admin/annotation/snapshot/{snapshot.pk}/change/").content.decode()
    assert f'href="/curate/snaps/snapshots/{snapshot.pk}/" id="snapshot-page-link"' in record
