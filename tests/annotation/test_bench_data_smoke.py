"""The import and export benchmarks run end to end at small sizes (their figures are meaningless
here; bench/README.md has the real ones)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    # A scratch SQLite file, never the session's or the developer's database.
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{(tmp_path / 'bench.sqlite3').as_posix()}",
           "HF_HUB_OFFLINE": "1", "PLATFORM_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_import_bench_imports_both_files_beside_the_datasets_baseline(tmp_path):
    done = _bench(["bench/imports.py", "--hh-lines", "120", "--uf-rows", "40",
                   "--dir", str(tmp_path / "files")], tmp_path)  # fmt: skip
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    imported = {r["phase"]: r for r in results if r["phase"].startswith("import")}
    assert imported["import (hh-rlhf)"]["counts"]["pairs"] == 120
    assert imported["import (ultrafeedback)"]["counts"]["records"] == 40
    baselines = [r for r in results if r["phase"].startswith("datasets")]
    assert [r["rows"] for r in baselines] == [120, 40]
    assert "vs baseline" in done.stdout and "peak RSS" in done.stdout
    assert "rows/CPU s" in done.stdout and all(r["cpu_s"] > 0 for r in results)
    # The floor writes again exactly the rows the import wrote, every table of them.
    for result in imported.values():
        counts, floor = result["counts"], result["floor"]
        assert floor["rows"] == counts["records"] and floor["rows_per_s"] > 0
        assert floor["tables"]["annotation_prompt"] == counts["prompts"]
        assert floor["tables"]["annotation_response"] == counts["responses"]
        assert floor["tables"]["annotation_annotation"] == counts["judgments"]
        assert floor["tables"]["annotation_importrecord"] == counts["records"]
        assert floor["tables"]["annotation_importbatch"] == 1
        assert floor["database_rows"] == sum(floor["tables"].values())
    assert "hh-rlhf.jsonl: floor" in done.stdout and "of the floor" in done.stdout


@pytest.mark.slow
def test_export_bench_compares_two_sizes(tmp_path):
    done = _bench(["bench/export.py", "--pairs", "600", "1200"], tmp_path)
    assert "jsonl 1,200 vs 600 pairs (2.00x the rows)" in done.stdout
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert sorted({r["rows"] for r in rows if r["phase"] == "snapshot jsonl"}) == [600, 1200]
