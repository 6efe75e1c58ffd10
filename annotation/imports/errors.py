from __future__ import annotations

from dataclasses import dataclass


class Index(int):
    """The place of a record in a JSON array (from 0): named `index N`, where a record of a
    JSONL or CSV file is named by its line. Everything that keeps a record's place (an item's
    `line`, its provenance, its ImportRecord) takes it as the number it is."""

    def __repr__(self) -> str:
        return f"Index({int(self)})"


def place(line: int) -> str:
    return f"index {int(line)}" if isinstance(line, Index) else f"line {line}"


def place_dict(line: int) -> dict:
    return {"index": int(line)} if isinstance(line, Index) else {"line": line}


def place_of(row: dict) -> int:
    """The place a reported row names (`place_dict`'s inverse): `place(place_of(row))`."""
    return Index(row["index"]) if "index" in row else row.get("line", 0)


class RowError(Exception):
    """A bad record: where it is (line or index, field) and what is wrong with it."""

    def __init__(self, line: int, field: str, message: str):
        super().__init__(message)
        self.line = line
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return (
            place(self.line)
            + (f", field {self.field!r}" if self.field else "")
            + (f": {self.message}")
        )

    def as_dict(self) -> dict:
        """{"line": n, ...} for a line of JSONL or CSV, {"index": n, ...} for a JSON array's."""
        return {**place_dict(self.line), "field": self.field, "message": self.message}


@dataclass(frozen=True)
class Notice:
    """A well-formed record, or part of one, that gave nothing to learn from or was imported as
    something less than it looks like (a tie, a lone rated response, a bare prompt): never an
    error, always counted by `reason` in the import's report."""

    line: int
    reason: str
    field: str
    message: str

    def as_dict(self) -> dict:
        return {**place_dict(self.line), "field": self.field, "message": self.message}
