"""Import prompts, demonstrations and judgments from files in common dataset formats."""

from __future__ import annotations

from annotation.imports.errors import RowError
from annotation.imports.formats import FORMATS
from annotation.imports.service import ImportReport, import_file

__all__ = ["FORMATS", "ImportReport", "RowError", "import_file"]
