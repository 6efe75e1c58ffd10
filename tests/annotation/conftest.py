"""Shared fixtures of the annotation tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Snapshots, imports and rejects go under the test's own folder, never var/."""
    settings.DATA_DIR = tmp_path / "data"
    return settings.DATA_DIR
