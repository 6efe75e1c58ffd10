"""Checkpoints that count only when complete.

The HF Trainer writes `checkpoint-N/` file by file; a crash mid-write leaves a directory that
looks fine but cannot be resumed. We write a marker file last (after the Trainer has finished
the directory) and only ever resume from directories that carry it.
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


def mark_complete(path: Path, step: int) -> None:
    tmp = path / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "time": time.time()}))
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
