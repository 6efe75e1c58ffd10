"""Progress events: one JSON-serialisable dict per event, to a JSONL file and/or a callable.

Pure Python on purpose: the web side imports this without pulling in torch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# "precision": once, after the first step: the dtypes of the weights and optimizer state.
EVENTS = ("start", "progress", "eval", "checkpoint", "end", "precision")
# Every event carries these keys (None when unknown) so consumers need no `.get` dance.
BASE_KEYS = (
    "step",
    "total_steps",
    "epoch",
    "loss",
    "learning_rate",
    "tokens_per_s",
    "eta_s",
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        # JSON has no NaN/inf; keep them readable rather than failing the write.
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return str(value)


class ProgressSink:
    """Fan-out for progress events: appends JSON lines to `path` and calls `callback(event)`.

    A failing callback must not kill a training run, so its exceptions are swallowed and
    counted in `callback_errors`.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        callback: Callable[[dict], Any] | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.callback = callback
        self.callback_errors = 0
        self.events: list[dict] = []  # kept in memory: small, and handy for tests and results
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> dict:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        record = {"event": event, "time": time.time(), **dict.fromkeys(BASE_KEYS)}
        record.update(fields)
        record = _jsonable(record)
        self.events.append(record)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.callback is not None:
            try:
                self.callback(record)
            except Exception:  # noqa: BLE001 - a broken UI hook must not stop training
                self.callback_errors += 1
        return record


def read_events(path: str | Path) -> list[dict]:
    """Events from a JSONL file. Split on '\\n' only: messages may hold other line breaks."""
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]
