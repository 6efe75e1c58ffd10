"""Checkpoints that count only when complete.

The HF Trainer writes `checkpoint-N/` file by file; a crash mid-write leaves a directory that
looks fine but cannot be resumed. We write a marker file last (after the Trainer has finished
the directory) and only ever resume from directories that carry it. A complete checkpoint that a
resume cannot continue from (weights only, e.g. a policy saved on cancel) says so in its marker.

The platform resumes a run into a fresh output folder: it hard-links the last resumable
checkpoint directory into the new folder's checkpoints/ and starts the stage with `resume: true`.
So everything a resume needs lives inside `checkpoint-N/`, and a marked checkpoint is never
written to again.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

MARKER = "ENGINE_COMPLETE"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def mark_complete(path: Path, step: int, *, resumable: bool = True) -> None:
    tmp = path / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "time": time.time(), "resumable": resumable}))
    tmp.rename(path / MARKER)  # rename is atomic: the marker is either whole or absent


def list_checkpoints(root: str | Path) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) for every checkpoint directory, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP.match(child.name)
        if m and child.is_dir():
            found.append((int(m.group(1)), child, (child / MARKER).is_file()))
    return sorted(found)


def is_resumable(path: Path) -> bool:
    """Complete, and not marked as one a resume cannot continue from."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return not isinstance(marker, dict) or marker.get("resumable", True) is not False


def last_complete(root: str | Path) -> Path | None:
    complete = [path for _, path, ok in list_checkpoints(root) if ok]
    return complete[-1] if complete else None


def remove_incomplete(root: str | Path) -> list[Path]:
    removed = []
    for _, path, ok in list_checkpoints(root):
        if not ok:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def checkpoint_step(path: Path) -> int:
    m = _STEP.match(path.name)
    return int(m.group(1)) if m else 0


def tensorboard_dir(output_dir: str | Path) -> Path:
    """Where `report_to: tensorboard` writes a run's event files (the run page links them):
    beside checkpoints/, whose rotation would prune them."""
    return Path(output_dir) / "tensorboard"
