"""Disk full or an unwritable output folder while a snapshot is exported: the row says failed
with an error naming the folder and what to do, nothing is left at the content-addressed path,
and the next build of the same data succeeds whatever the failed one left behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from annotation import services, tasks
from annotation.exports import snapshot_build, snapshot_request, snapshots_root
from annotation.exports import snapshots as snapshots_module
from annotation.models import Snapshot


@pytest.fixture
def project(db):
    project = services.project_create(name="Faults", slug="faults")
    services.prompts_create(project=project, items=[{"text": f"Prompt {i}"} for i in range(20)])
    return project


def request(project, format="jsonl"):
    return snapshot_request(
        project=project, kind="prompts", format=format, filters={"test_size": 0}, enqueue=False
    )


def contents(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.fixture
def full_disk(monkeypatch):
    """Send the train split to /dev/full: the kernel answers ENOSPC, as on a full disk."""
    if not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("/dev/full is not the kernel's full device on this machine")
    original = snapshots_module._SplitWriter.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.name == "train":
            self.path = Path("/dev/full")

    monkeypatch.setattr(snapshots_module._SplitWriter, "__init__", init)
    return monkeypatch


def test_a_full_disk_fails_the_snapshot_clearly_and_keeps_nothing(project, full_disk):
    snapshot = request(project)
    result = tasks.snapshot_build(snapshot.pk)  # what the worker runs
    assert result.startswith("failed:")
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.FAILED
    assert "No space left on device" in snapshot.error
    assert str(snapshots_root()) in snapshot.error
    assert "Free disk space" in snapshot.error and "build the snapshot again" in snapshot.error
    assert snapshot.path == "" and snapshot.sha256 == ""
    assert contents(snapshots_root()) == []  # no temp folder, no content-addressed folder


def test_after_the_disk_is_freed_the_same_data_builds_and_leftovers_do_not_confuse_it(
    project, full_disk
):
    with pytest.raises(OSError):
        snapshot_build(snapshot=request(project))
    full_disk.undo()

    reference = snapshot_build(snapshot=request(project))
    final = Path(reference.path)
    # What a crashed, non-atomic writer (or a person) could leave: the final folder without its
    # manifest, a half-written split inside it, and a stale temp folder beside it.
    import shutil

    shutil.rmtree(final)
    final.mkdir()
    (final / "train.jsonl").write_text('{"prompt": "half')
    (snapshots_root() / ".tmp-deadbeef").mkdir()

    again = snapshot_build(snapshot=request(project))
    assert again.status == Snapshot.Status.READY
    assert again.sha256 == reference.sha256 and Path(again.path) == final
    manifest = json.loads((final / "manifest.json").read_text())
    rows = (final / "train.jsonl").read_text().split("\n")
    assert manifest["splits"]["train"]["rows"] == 20 == len([r for r in rows if r])


@pytest.mark.parametrize("where", ["root_is_a_file", "data_dir_under_a_file"])
def test_an_unwritable_output_folder_fails_the_snapshot_naming_it(
    project, settings, tmp_path, where
):
    if where == "root_is_a_file":
        snapshots_root().parent.mkdir(parents=True)
        snapshots_root().write_text("not a folder")
    else:
        (tmp_path / "blocker").write_text("a file where a folder should be")
        settings.DATA_DIR = tmp_path / "blocker" / "data"
    snapshot = request(project)
    with pytest.raises(OSError):
        snapshot_build(snapshot=snapshot)
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.FAILED
    assert f"could not write the snapshot under {snapshots_root()}" in snapshot.error
    assert "writable folder" in snapshot.error
    assert snapshot.path == ""


def test_a_full_disk_while_writing_parquet_keeps_nothing(project, monkeypatch):
    import pyarrow.parquet as pq

    def no_space(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", no_space)
    snapshot = request(project, format="parquet")
    with pytest.raises(OSError):
        snapshot_build(snapshot=snapshot)
    snapshot.refresh_from_db()
    assert snapshot.status == Snapshot.Status.FAILED
    assert "No space left on device" in snapshot.error and "Free disk space" in snapshot.error
    assert contents(snapshots_root()) == []
