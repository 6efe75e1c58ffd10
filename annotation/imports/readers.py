"""Read records from a file one at a time, with the line number each starts on.

Each reader bounds what a small file may decode to (limits.py): nesting depth, cell length,
Parquet's decoded size.

JSONL is split on b"\\n" only: U+2028, U+0085 and lone carriage returns are valid inside JSON
strings and `str.splitlines()` would cut rows apart. A top-level JSON array is decoded one
element at a time, so a huge export never sits in memory whole; its records are named by their
index (`errors.Index`), since a compact array is all on line 1.

NaN, Infinity and -Infinity are not JSON (RFC 8259, section 6) though Python's `json` reads
them: they are decoded to a `NotJson` marker that `formats.checked_text` refuses, naming the
field, with the lone surrogates (`"\\ud800"`) that JSON's escapes can spell but no UTF-8 text holds.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

from annotation.imports import limits
from annotation.imports.errors import Index, RowError

READ_SIZE = 1 << 20


class NotJson(str):
    """What a NaN, Infinity or -Infinity literal decodes to, so that the record is refused by
    name (the field it is in) rather than read as a float."""


_DECODER = json.JSONDecoder(parse_constant=NotJson)


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
            if (deep := _too_deep(text)) is not None:
                yield number, RowError(number, "", deep)
                continue
            try:
                yield number, _DECODER.decode(text)
            except json.JSONDecodeError as error:
                yield (
                    number,
                    RowError(number, "", f"not valid JSON ({error.msg} at column {error.colno})"),
                )


def _csv(path: Path) -> Iterator[tuple[int, object]]:
    # The csv module's own limit (131,072 characters) raises a bare _csv.Error; ours is named.
    csv.field_size_limit(limits.CSV_MAX_CELL_CHARS)
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
        reader = csv.DictReader(fh, dialect=dialect)
        start = 2
        try:
            for row in reader:
                if None in row:
                    yield start, RowError(start, "", "more cells than header columns")
                else:
                    yield start, dict(row)
                start = reader.line_num + 1
        except csv.Error as error:
            # The parser cannot go on past a cell it refused: the rest of the file is unread.
            if "field larger than field limit" in str(error):
                message = (
                    f"a field is too large: over {limits.CSV_MAX_CELL_CHARS:,} characters; "
                    "the rest of the file was not read"
                )
            else:
                message = f"not valid CSV ({error}); the rest of the file was not read"
            yield start, RowError(start, "", message)


def _parquet(path: Path) -> Iterator[tuple[int, object]]:
    """Rows, batch by batch, once the whole file is known to decode to at most
    IMPORT_MAX_DECODED_BYTES: first from its metadata (values, rows, plain sizes), then by
    reading every text column as a dictionary (each distinct value once, an index a row)
    and adding up what the indices would decode to, all before a row becomes Python."""
    import pyarrow.parquet as pq

    bound = limits.max_decoded_bytes()
    shown = f"{limits.human(bound)} (IMPORT_MAX_DECODED_BYTES)"
    metadata = pq.ParquetFile(path).metadata
    plain = 0
    values = metadata.num_rows
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            plain += column.total_uncompressed_size
            values += column.num_values
    # A value or a row decodes to no less than 8 bytes, however it is encoded.
    if plain > bound or values * 8 > bound:
        yield (
            1,
            RowError(
                1,
                "",
                f"the file's {metadata.num_rows:,} rows decode to more than {shown}; "
                "split it into smaller files",
            ),
        )
        return
    texts = [
        metadata.schema.column(c).path
        for c in range(metadata.num_columns)
        if metadata.schema.column(c).physical_type == "BYTE_ARRAY"
    ]
    parquet = pq.ParquetFile(path, read_dictionary=texts)
    total, number = 0, 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        sizes = {name: _decoded_bytes(batch.column(name)) for name in batch.schema.names}
        total += sum(sizes.values())
        if total > bound:
            field = max(sizes, key=sizes.get)
            yield (
                number + 1,
                RowError(
                    number + 1,
                    field,
                    f"the file decodes to more than {shown} by this row; split it into smaller files",
                ),
            )
            return
        number += batch.num_rows
    number = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            number += 1
            yield number, row


PARQUET_BATCH_ROWS = 1000


def _decoded_bytes(array) -> int:
    """About what `array` takes once decoded: a dictionary array counts each row's value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        return sum(_decoded_bytes(chunk) for chunk in array.chunks)
    if isinstance(array, pa.DictionaryArray):
        lengths = pc.binary_length(array.dictionary).take(array.indices)
        return (pc.sum(lengths).as_py() or 0) + 8 * len(array)
    if isinstance(array, pa.ListArray | pa.LargeListArray):
        return _decoded_bytes(array.flatten()) + 8 * len(array)
    if isinstance(array, pa.StructArray):
        return sum(_decoded_bytes(field) for field in array.flatten()) + 8 * len(array)
    return array.nbytes


def _too_deep(text: str, start: int = 0, end: int | None = None) -> str | None:
    """Why JSON text is nested too deep to parse, or None. Cheap for ordinary records: only
    text with more brackets than the limit is scanned (strings skipped)."""
    end = len(text) if end is None else end
    limit = limits.MAX_JSON_DEPTH
    if text.count("[", start, end) + text.count("{", start, end) <= limit:
        return None
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text, start, end):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return f"nested deeper than {limit} levels of arrays and objects"
        elif token in "]}":
            depth -= 1
    return None


_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_array(path: Path) -> Iterator[tuple[int, object]]:
    """Elements of a top-level JSON array (or the single top-level object), one by one."""
    decoder = _DECODER
    reader = codecs.getincrementaldecoder("utf-8-sig")()
    buf = ""
    line = 1
    pos = 0
    eof = False
    started = False
    single = False
    index = 0

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
                except RecursionError:
                    deep = (
                        f"nested deeper than {limits.MAX_JSON_DEPTH} levels of arrays and objects"
                    )
                    raise RowError(line, "", deep) from None
                except json.JSONDecodeError as error:
                    if eof:
                        at = line + buf.count("\n", pos, error.pos)
                        raise RowError(at, "", f"not valid JSON ({error.msg})") from None
                    buf, pos = buf[pos:], 0
                    more()
            if (deep := _too_deep(buf, pos, end)) is not None:
                raise RowError(line if single else Index(index), "", deep)
            yield (line if single else Index(index)), value
            index += 1
            line += buf.count("\n", pos, end)
            pos = end
            if single:
                return
