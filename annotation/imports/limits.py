"""What an uploaded import file may be: its size and its type, by extension and by content.

Checked before a byte is parsed, so a 2 GB video renamed `.jsonl` or a zip bomb never reaches
the readers; the message names the file and says what is accepted.

What a file may decode to is bounded too, since a small file can decode to a huge one: the
readers (readers.py) refuse, naming the line and field, a Parquet file whose values decode to
more than IMPORT_MAX_DECODED_BYTES (a dictionary-encoded column repeats one long value at the
cost of a few bytes a row), JSON nested deeper than MAX_JSON_DEPTH levels (the parser's
recursion) and a CSV cell longer than CSV_MAX_CELL_CHARS.
"""

from __future__ import annotations

import codecs

from django.conf import settings

# Extension → container the readers will treat it as (see readers.sniff).
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
SNIFF_BYTES = 8192
_MAGIC = {
    b"\x1f\x8b": "a gzip archive",
    b"PK\x03\x04": "a zip archive",
    b"BZh": "a bzip2 archive",
    b"\xfd7zXZ\x00": "an xz archive",
    b"7z\xbc\xaf": "a 7z archive",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"\x7fELF": "an executable",
}


class UploadRejected(Exception):
    """An upload refused before parsing; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def max_bytes() -> int:
    return int(getattr(settings, "IMPORT_MAX_BYTES", 200 * 1024 * 1024))


def max_decoded_bytes() -> int:
    return int(getattr(settings, "IMPORT_MAX_DECODED_BYTES", 512 * 1024 * 1024))


# An OASST tree takes two levels a turn (a message, its replies): 100 levels is ~50 turns.
MAX_JSON_DEPTH = 100
# Ten times the longest text a record may hold (rules.MAX_TEXT): a longer cell is refused by
# the text rule with its column named; past this the CSV parser itself stops.
CSV_MAX_CELL_CHARS = 1_000_000


def human(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MB" if size >= 1024 * 1024 else f"{size} bytes"


def check_size(name: str, size: int | None) -> None:
    limit = max_bytes()
    if size is not None and size > limit:
        raise UploadRejected(
            413,
            f"{name or 'The upload'} is {human(size)}; imports are limited to {human(limit)} "
            "(IMPORT_MAX_BYTES). Split the file into smaller parts and import each.",
        )


def check_type(name: str, head: bytes) -> str:
    """The container of an upload whose first bytes are `head`; UploadRejected (415) if the
    extension is not an accepted one or the content does not look like it."""
    accepted = ", ".join(EXTENSIONS)
    dot = name.rfind(".")
    suffix = name[dot:].lower() if dot > 0 else ""
    container = EXTENSIONS.get(suffix)
    if container is None:
        raise UploadRejected(
            415, f"{name}: {suffix or 'no extension'} is not an accepted type; use {accepted}."
        )
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise UploadRejected(
                415,
                f"{name}: the content is {what}, not {suffix[1:].upper()}. Upload the "
                f"uncompressed {suffix} file itself.",
            )
    if container == "parquet":
        if not head.startswith(b"PAR1"):
            raise UploadRejected(415, f"{name}: not a Parquet file (no PAR1 header).")
        return container
    if b"\0" in head:
        raise UploadRejected(
            415, f"{name}: binary content (NUL bytes) in a {suffix} file; expected UTF-8 text."
        )
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as error:
        raise UploadRejected(
            415, f"{name}: not UTF-8 text (byte {error.start}); save the file as UTF-8."
        ) from None
    start = text.lstrip("\ufeff \t\r\n")[:1]
    if container in {"json", "jsonl"} and start and start not in "[{":
        raise UploadRejected(
            415, f"{name}: a {suffix} file must start with '{{' or '['; it starts with {start!r}."
        )
    return container
