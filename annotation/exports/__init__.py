"""Dataset snapshots: the rows TRL reads, streamed from the database to content-addressed
directories. `snapshot_request` records and queues one; `snapshot_build` writes it."""

from __future__ import annotations

from annotation.exports.snapshots import (
    FORMATS,
    build_directory,
    filters_clean,
    snapshot_build,
    snapshot_request,
    snapshots_root,
)

__all__ = [
    "FORMATS",
    "build_directory",
    "filters_clean",
    "snapshot_build",
    "snapshot_request",
    "snapshots_root",
]
