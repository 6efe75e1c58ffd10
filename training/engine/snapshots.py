"""Dataset snapshots on disk: `manifest.json` plus split files in TRL's row formats."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

# Columns each stage needs, as alternatives (any one set must be present). Extra columns are
# dropped before training so web-side annotations (margin, agreement, ...) never leak in.
STAGE_COLUMNS: dict[str, list[tuple[str, ...]]] = {
    "pretrain": [("text",)],
    "sft": [("prompt", "completion"), ("messages",)],
    "instruction": [("messages",)],
    "reward": [("prompt", "chosen", "rejected"), ("chosen", "rejected")],
    "dpo": [("prompt", "chosen", "rejected")],
    "ppo": [("prompt",)],
    "grpo": [("prompt",)],
    "rloo": [("prompt",)],
    "kto": [("prompt", "completion", "label")],
}


@dataclass
class Snapshot:
    path: Path
    kind: str
    sha256: str
    splits: dict[str, dict]
    manifest: dict

    def split_path(self, name: str) -> Path:
        return self.path / self.splits[name]["path"]

    def has(self, name: str) -> bool:
        return name in self.splits


def read_snapshot(path: str | Path, *, field: str = "dataset") -> Snapshot:
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not path.is_dir():
        raise ConfigError(f"{field}: snapshot directory not found: {path}")
    if not manifest_path.is_file():
        raise ConfigError(f"{field}: {path} has no manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{field}: {manifest_path} is not valid JSON: {exc}") from None
    for key in ("kind", "splits"):
        if key not in manifest:
            raise ConfigError(f"{field}: {manifest_path} lacks {key!r}")
    splits = manifest["splits"]
    if "train" not in splits:
        raise ConfigError(f"{field}: {manifest_path} has no 'train' split")
    for name, split in splits.items():
        if not (path / split.get("path", "")).is_file():
            raise ConfigError(
                f"{field}: split {name!r} file missing: {path / split.get('path', '')}"
            )
    return Snapshot(path, manifest["kind"], manifest.get("sha256", ""), splits, manifest)


def first_row(path: Path) -> dict:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path).read_row_group(0)
        return {k: v[0] for k, v in table.to_pydict().items()} if table.num_rows else {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:  # file iteration splits on '\n' only
            if line.strip():
                return json.loads(line)
    return {}


def check_columns(snapshot: Snapshot, stage: str, *, field: str = "dataset") -> tuple[str, ...]:
    """The column set of the train split that fits `stage`; ConfigError if none does."""
    row = first_row(snapshot.split_path("train"))
    if not row:
        raise ConfigError(f"{field}: train split of {snapshot.path} is empty")
    for columns in STAGE_COLUMNS[stage]:
        if all(c in row for c in columns):
            if stage == "instruction" and not isinstance(row["messages"], list):
                break
            return columns
    wanted = " or ".join("{" + ", ".join(c) + "}" for c in STAGE_COLUMNS[stage])
    raise ConfigError(
        f"{field}: rows of {snapshot.path} have columns {sorted(row)}; stage {stage!r} needs {wanted}"
    )


def load_split(snapshot: Snapshot, name: str, columns: tuple[str, ...] | None = None):
    """A `datasets.Dataset` of one split, keeping only `columns` when given."""
    from datasets import Dataset

    path = snapshot.split_path(name)
    if path.suffix == ".parquet":
        ds = Dataset.from_parquet(str(path))
    else:
        # Parse ourselves: split on '\n' only, since U+2028 and friends are valid inside JSON
        # strings and `str.splitlines()` would cut rows apart.
        text = path.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.split("\n") if line.strip()]
        if columns is not None:
            rows = [{c: r[c] for c in columns if c in r} for r in rows]
        ds = Dataset.from_list(rows)
    if columns is not None:
        ds = ds.remove_columns([c for c in ds.column_names if c not in columns])
    return ds
