"""Read records from a file one at a time, with the line number each starts on.

JSONL is split on b"\\n" only: U+2028, U+0085 and lone carriage returns are valid inside JSON
strings and `str.splitlines()` would cut rows apart. A top-level JSON array is decoded one
element at a time, so a huge export never sits in memory whole.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from pathlib import Path

from annotation.imports.errors import RowError

READ_SIZE = 1 << 20


def sniff(path: Path) -> str:
    """'jsonl', 'json' (an array or one object), 'csv' or 'parquet' by extension and content."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in {".csv", ".tsv"}:
        return "csv"
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        return "json"
    if suffix == ".json" and head.startswith(b"{"):
        # One object per file (an OASST tree) or JSONL saved as .json: decide by the lines.
        with path.open("rb") as fh:
            first = fh.readline()
        try:
            json.loads(first)
            return "jsonl"
        except ValueError:
            return "json"
    return "jsonl"


def read_records(path: Path, container: str) -> Iterator[tuple[int, object]]:
    if container == "parquet":
        yield from _parquet(path)
    elif container == "csv":
        yield from _csv(path)
    elif container == "json":
        yield from _json_array(path)
    else:
        yield from _jsonl(path)


def _jsonl(path: Path) -> Iterator[tuple[int, object]]:
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):  # binary iteration splits on b"\n" only
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield (
                    number,
                    RowError(number, "", f"not UTF-8 ({error.reason} at byte {error.start})"),
                )
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as error:
                yield (
                    number,
                    RowError(number, "", f"not valid JSON ({error.msg} at column {error.colno})"),
                )


def _csv(path: Path) -> Iterator[tuple[int, object]]:
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
        reader = csv.DictReader(fh, dialect=dialect)
        start = 2
        for row in reader:
            if None in row:
                yield start, RowError(start, "", "more cells than header columns")
            else:
                yield start, dict(row)
            start = reader.line_num + 1


def _parquet(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _json_array(path: Path) -> Iterator[tuple[int, object]]:
    """Elements of a top-level JSON array (or the single top-level object), one by one."""
    decoder = json.JSONDecoder()
    reader = codecs.getincrementaldecoder("utf-8-sig")()
    buf = ""
    line = 1
    pos = 0
    eof = False
    started = False
    single = False

    def more() -> bool:
        nonlocal buf, eof
        chunk = fh.read(READ_SIZE)
        if not chunk:
            eof = True
            buf += reader.decode(b"", final=True)
            return False
        buf += reader.decode(chunk)
        return True

    with path.open("rb") as fh:
        more()
        while True:
            # skip whitespace and separators, counting lines
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    if buf[pos] == "\n":
                        line += 1
                    pos += 1
                if pos < len(buf) or eof:
                    break
                buf, pos = "", 0
                more()
            if pos >= len(buf):
                if started and not single:
                    raise RowError(line, "", "the JSON array is not closed (truncated file?)")
                if not started:
                    raise RowError(line, "", "the file is empty")
                return
            if not started:
                started = True
                if buf[pos] == "[":
                    pos += 1
                    continue
                single = True
            elif buf[pos] == "]" and not single:
                return
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as error:
                    if eof:
                        at = line + buf.count("\n", pos, error.pos)
                        raise RowError(at, "", f"not valid JSON ({error.msg})") from None
                    buf, pos = buf[pos:], 0
                    more()
            yield line, value
            line += buf.count("\n", pos, end)
            pos = end
            if single:
                return
