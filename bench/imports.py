"""Import benchmark: public-dataset-sized files through the importer, beside `datasets`.

    .venv/bin/python bench/imports.py                       # 160,000 HH-RLHF lines, 64,000 UltraFeedback rows
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_bench .venv/bin/python bench/imports.py
    .venv/bin/python bench/imports.py --hh-lines 2000 --uf-rows 500   # a quick check

Generates, seeded and locally (nothing is downloaded), two files shaped as the public datasets
are published:

- `hh-rlhf.jsonl`: Anthropic/hh-rlhf lines, `{"chosen", "rejected"}` transcripts of
  "\\n\\nHuman: ... \\n\\nAssistant: ..." turns (one to three exchanges) that share every turn but
  the last reply; 160,000 lines (the train split has 160,800);
- `ultrafeedback.jsonl`: openbmb/UltraFeedback raw rows, `source`, `instruction`, `models` and
  four `completions`, each with `model`, `principle`, `custom_system_prompt`, `response`,
  `annotations` (instruction_following, honesty, truthfulness, helpfulness: string `Rating`s, a
  `Rationale`, some "N/A"), `critique`, `overall_score` and `fine-grained_score`; 64,000 rows (the
  dataset has 63,967).

Then, each in a fresh process so that its peak RSS (VmHWM) is its own:

- `import`: `annotation.imports.service.import_file` into a new project of the database the
  environment selects (DATABASE_URL; without it a scratch SQLite file beside the generated
  files, not the developer's var/), all or nothing as `manage.py import_data` runs it;
- `datasets` (the baseline): `datasets.load_dataset("json", data_files=FILE)` reading the same
  file into Arrow, with an empty cache folder, so it parses the whole file.

- `floor`, after the import in its process: the rows the import wrote (every table, the same
  row counts, indexes and constraints) read back as plain tuples, deleted (and vacuumed on
  PostgreSQL), then written again by the fastest path there is, COPY on PostgreSQL and
  `executemany` on SQLite, in one transaction, timed to the commit. No parsing, no checks, no
  model instances: what any import that stores the file as these rows must at least spend. A
  floor under half the baseline's rows/s means no row-per-object design meets the target.

Prints rows/s and peak RSS of all three, and the target beside them: at least half the baseline's
rows/s, under 500 MB peak RSS. Rows are the file's lines (records). Beside them the CPU seconds
of each phase (the process's, all threads; the import's PostgreSQL backend's, read from /proc
when the server runs on this machine) and rows per CPU second: on a shared machine the wall
clock follows the others' load more than the import's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
TARGET_RATIO = 0.5
TARGET_RSS_MB = 500


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: ru_maxrss is inherited across fork+exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- The files ---------------------------------------------------------------------------------

WORDS = (
    "the a of to and in is it that for you with on as are this be can or not your have by from "
    "an will they at one more which what about when there their if would how so use also some "
    "people time water number way could first make like than been call who its now find long "
    "down day did get come made may part over new sound take only little work know place year "
    "live back give most very after thing our just name good sentence man think say great where "
    "help through much before line right too mean old any same tell boy follow came want show "
    "around form three small set put end does another well large must big even such because "
    "turn here why ask went men read need land different home move try kind hand picture again "
    "change off play spell air away animal house point page letter mother answer found study "
    "still learn should world high every near add food between own below country plant last "
    "school father keep tree never start city earth eye light thought head under story saw left "
    "few while along might close something seem next hard open example begin life always those "
    "both paper together got group often run important until children side feet car mile night "
    "walk white sea began grow took river four carry state once book hear stop without second"
).split()


class Text:
    """Seeded sentences drawn from a pool (fast: files of hundreds of megabytes in seconds)."""

    def __init__(self, seed: int):
        self.random = random.Random(seed)
        self.pool = [self._sentence() for _ in range(5000)]

    def _sentence(self) -> str:
        words = self.random.choices(WORDS, k=self.random.randint(6, 18))
        return " ".join(words).capitalize() + self.random.choice(".!?.")

    def about(self, chars: int) -> str:
        parts, size = [], 0
        while size < chars:
            sentence = self.random.choice(self.pool)
            parts.append(sentence)
            size += len(sentence) + 1
        return " ".join(parts)

    def question(self, i: int) -> str:
        # The row number makes every prompt distinct, as the public datasets' mostly are.
        return f"{self.about(self.random.randint(40, 300))} ({i})"


def write_hh(path: Path, lines: int, seed: int = 0) -> None:
    text = Text(seed)
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            # Every turn but the last reply is shared; the replies differ.
            history = _hh_history(text, i)
            chosen = f"{history}\n\nAssistant: {text.about(text.random.randint(60, 600))}"
            rejected = f"{history}\n\nAssistant: {text.about(text.random.randint(60, 600))} [{i}]"
            out.write(json.dumps({"chosen": chosen, "rejected": rejected}) + "\n")


def _hh_history(text: Text, i: int) -> str:
    """One to three exchanges, ending with the human's turn."""
    exchanges = text.random.choice((1, 1, 1, 2, 2, 3))
    parts = [f"\n\nHuman: {text.question(i)}"]
    for _ in range(exchanges - 1):
        parts.append(f"\n\nAssistant: {text.about(text.random.randint(60, 400))}")
        parts.append(f"\n\nHuman: {text.about(text.random.randint(20, 160))}")
    return "".join(parts)


MODELS = ["gpt-4", "gpt-3.5-turbo", "llama-2-70b-chat", "wizardlm-13b", "falcon-40b-instruct",
          "ultralm-65b", "starchat", "bard", "mpt-30b-chat", "vicuna-33b"]  # fmt: skip
SOURCES = ["evol_instruct", "false_qa", "flan_v2_niv2", "sharegpt", "ultrachat", "truthful_qa"]
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")


def write_ultrafeedback(path: Path, rows: int, seed: int = 1) -> None:
    text = Text(seed)
    rnd = text.random
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            models = rnd.sample(MODELS, 4)
            completions = []
            for j, model in enumerate(models):
                annotations = {}
                for aspect in ASPECTS:
                    rating = rnd.choice(["1", "2", "3", "4", "5", "5", "4", "N/A"])
                    entry = {"Rating": rating, "Rationale": text.about(rnd.randint(80, 240))}
                    if aspect in ("truthfulness", "helpfulness"):
                        entry["Type"] = rnd.sample(["0", "1", "2", "3"], rnd.randint(0, 2))
                        entry["Rationale For Rating"] = text.about(rnd.randint(40, 160))
                    annotations[aspect] = entry
                completions.append(
                    {
                        "annotations": annotations,
                        "critique": text.about(rnd.randint(100, 400)),
                        "custom_system_prompt": text.about(rnd.randint(20, 120)),
                        "fine-grained_score": round(rnd.uniform(1, 5), 2),
                        "model": model,
                        "overall_score": rnd.choice([3, 4, 5, 6, 6.5, 7, 7.5, 8, 8.5, 9]),
                        "principle": rnd.choice(["helpfulness", "honesty", "truthfulness"]),
                        "response": f"{text.about(rnd.randint(200, 1200))} [{i}.{j}]",
                    }
                )
            row = {
                "source": rnd.choice(SOURCES),
                "instruction": text.question(i),
                "models": models,
                "completions": completions,
                "correct_answers": ["None"],
                "incorrect_answers": ["None"],
            }
            out.write(json.dumps(row) + "\n")


# --- The phases (each in its own process) --------------------------------------------------------


def phase_import(path: Path, format: str) -> dict:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    import django

    django.setup()
    from django.core.management import call_command

    from annotation import services
    from annotation.imports.service import import_file

    call_command("migrate", verbosity=0)
    slug = f"bench-import-{format}-{uuid.uuid4().hex[:8]}"
    project = services.project_create(name=f"Bench import {format}", slug=slug)
    from bench.export import cpu_seconds

    marks = _last_ids()
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    report = import_file(project=project, path=path, format=format)
    seconds = time.perf_counter() - started
    own, database = (
        after - before for after, before in zip(cpu_seconds(), cpu_before, strict=True)
    )
    if not report.ok:
        sys.exit(f"the import failed: {report.error_lines()[:5]}")
    rows = report.counts["records"]
    peak = round(peak_rss_mb())  # the import's own, before the floor holds its rows
    floor = phase_floor(marks, rows)
    return {"phase": f"import ({format})", "rows": rows, "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds), "peak_rss_mb": peak,
            "cpu_s": round(own, 2), "database_cpu_s": round(database, 2), "counts": report.counts, "project": slug,
            "floor": floor}  # fmt: skip


# --- The floor: the import's own rows, written by the fastest path ----------------------------
#
# What any design that stores an import as database rows must at least spend: the very rows
# the import just wrote (every table, same row counts, same indexes and constraints), read
# back as plain tuples, deleted, and written again, timed from the first row to the commit,
# with no parsing, no checks and no model instances: COPY on PostgreSQL, executemany on SQLite.


def _tables() -> list:
    """Every concrete model with an integer primary key (m2m links included), referenced
    tables before the tables that reference them."""
    from django.apps import apps
    from django.db import models as m

    found = [
        model
        for model in apps.get_models(include_auto_created=True)
        if model._meta.managed and not model._meta.proxy
        and isinstance(model._meta.pk, m.AutoField | m.BigAutoField | m.IntegerField)
    ]  # fmt: skip
    ordered, seen = [], set()

    def visit(model) -> None:
        if model in seen:
            return
        seen.add(model)
        for field in model._meta.concrete_fields:
            target = field.related_model if field.is_relation else None
            if target is not None and target is not model and target in found:
                visit(target)
        ordered.append(model)

    for model in found:
        visit(model)
    return ordered


def _last_ids() -> dict:
    from django.db import connection
    from django.db.models import Max

    with connection.cursor():
        return {model: model.objects.aggregate(last=Max("pk"))["last"] or 0 for model in _tables()}


def phase_floor(marks: dict, records: int) -> dict:
    """Read back the rows written since `marks`, delete them, then time writing them again."""
    from django.db import connection, transaction

    from bench.export import cpu_seconds

    quote = connection.ops.quote_name
    postgres = connection.vendor == "postgresql"
    tables = []  # (model, table, columns, rows), referenced tables first
    with connection.cursor() as cursor:
        for model, last in marks.items():
            columns = [f.column for f in model._meta.concrete_fields]
            # PostgreSQL gets every value as its text form: COPY's own input, no adapter.
            selected = ", ".join(f"{quote(c)}::text" if postgres else quote(c) for c in columns)
            pk = quote(model._meta.pk.column)
            table = quote(model._meta.db_table)
            cursor.execute(f"SELECT {selected} FROM {table} WHERE {pk} > %s ORDER BY {pk}", [last])
            rows = [tuple(row) for row in cursor.fetchall()]
            if rows:
                tables.append((model, table, columns, rows))
    with transaction.atomic(), connection.cursor() as cursor:
        for model, table, _, _ in reversed(tables):
            pk = quote(model._meta.pk.column)
            cursor.execute(f"DELETE FROM {table} WHERE {pk} > %s", [marks[model]])
    if postgres:
        with connection.cursor() as cursor:  # autocommit: dead rows out of heaps and indexes
            for _, table, _, _ in tables:
                cursor.execute(f"VACUUM {table}")
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    split = {}  # wall seconds per table, and of the commit (PostgreSQL checks deferred keys there)
    with transaction.atomic():
        raw = connection.connection.cursor()
        for model, table, columns, rows in tables:
            at = time.perf_counter()
            names = ", ".join(quote(c) for c in columns)
            if postgres:
                with raw.copy(f"COPY {table} ({names}) FROM STDIN") as load:
                    for row in rows:
                        load.write_row(row)
            else:
                places = ", ".join("?" * len(columns))
                raw.executemany(f"INSERT INTO {table} ({names}) VALUES ({places})", rows)
            split[model._meta.db_table] = round(time.perf_counter() - at, 3)
        at = time.perf_counter()
    split["commit"] = round(time.perf_counter() - at, 3)
    seconds = time.perf_counter() - started
    own, database = (
        after - before for after, before in zip(cpu_seconds(), cpu_before, strict=True)
    )
    written = {model._meta.db_table: len(rows) for model, _, _, rows in tables}
    return {"phase": "floor (its rows, COPY)" if postgres else "floor (its rows, executemany)",
            "rows": records, "seconds": round(seconds, 2), "rows_per_s": round(records / seconds),
            "peak_rss_mb": round(peak_rss_mb()), "cpu_s": round(own, 2),
            "database_cpu_s": round(database, 2), "database_rows": sum(written.values()),
            "tables": written, "split_s": split}  # fmt: skip


def phase_datasets(path: Path) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets

    cache = tempfile.mkdtemp(prefix="bench-imports-hf-")
    try:
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        dataset = datasets.load_dataset(
            "json", data_files=str(path), split="train", cache_dir=cache
        )
        rows = len(dataset)
        seconds = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        own = usage.ru_utime + usage.ru_stime - cpu.ru_utime - cpu.ru_stime
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"phase": "datasets.load_dataset (baseline)", "rows": rows,
            "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "peak_rss_mb": round(peak_rss_mb()), "cpu_s": round(own, 2),
            "database_cpu_s": 0.0}  # fmt: skip


def _lines(path: Path) -> int:
    if not path.is_file():
        return -1
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _per_cpu(result: dict) -> float:
    """Rows per CPU second, the database's included: on a loaded machine the wall clock says
    more about the others' load than about the import."""
    return result["rows"] / max(0.01, result["cpu_s"] + result["database_cpu_s"])


def run_phase(args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"phase {' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hh-lines", type=int, default=160_000, help="HH-RLHF lines (0: none)")
    parser.add_argument("--uf-rows", type=int, default=64_000, help="UltraFeedback rows (0: none)")
    parser.add_argument(
        "--dir", type=Path, help="where the files go (default: a temporary folder, removed)"
    )
    parser.add_argument("--phase", choices=["import", "datasets"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = (
            phase_import(args.file, args.format)
            if args.phase == "import"
            else phase_datasets(args.file)
        )
        print(json.dumps(result))
        return

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-imports-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = f"sqlite:///{(work / 'bench.sqlite3').as_posix()}"
    database = env["DATABASE_URL"].split("://")[0]
    print(f"database: {database} ({env['DATABASE_URL'].rsplit('/', 1)[-1]})")
    files = []
    for name, format, count, write in (
        ("hh-rlhf.jsonl", "hh-rlhf", args.hh_lines, write_hh),
        ("ultrafeedback.jsonl", "ultrafeedback", args.uf_rows, write_ultrafeedback),
    ):
        if not count:
            continue
        path = work / name
        started = time.perf_counter()
        if _lines(path) != count:  # a file of --dir made by an earlier run is reused
            write(path, count)
        size = path.stat().st_size
        print(f"{path.name}: {count:,} rows, {size / 1e6:,.0f} MB ({time.perf_counter() - started:.0f}s)", flush=True)  # fmt: skip
        files.append((path, format))
    load = os.getloadavg()
    results = []
    try:
        for path, format in files:
            baseline = run_phase(["--phase", "datasets", "--file", str(path)], env)
            imported = run_phase(
                ["--phase", "import", "--file", str(path), "--format", format], env
            )
            results.append((path, baseline, imported))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'file':<22}{'phase':<34}{'rows':>9}{'seconds':>9}{'rows/s':>9}{'peak RSS MB':>13}"
          f"{'vs baseline':>13}{'CPU s':>8}{'db CPU s':>10}{'rows/CPU s':>12}{'vs baseline':>13}")  # fmt: skip
    for path, baseline, imported in results:
        for result in (baseline, imported, imported["floor"]):
            ratio = result["rows_per_s"] / baseline["rows_per_s"]
            per_cpu = _per_cpu(result)
            print(f"{path.name:<22}{result['phase']:<34}{result['rows']:>9,}{result['seconds']:>9}"
                  f"{result['rows_per_s']:>9,}{result['peak_rss_mb']:>13}{ratio:>13.2f}"
                  f"{result['cpu_s']:>8}{result['database_cpu_s']:>10}{per_cpu:>12,.0f}"
                  f"{per_cpu / _per_cpu(baseline):>13.2f}")  # fmt: skip
    print(
        f"target: import >= {TARGET_RATIO:.2f} of the baseline's rows/s, peak RSS < {TARGET_RSS_MB} MB"
    )
    for path, baseline, imported in results:
        ratio = imported["rows_per_s"] / baseline["rows_per_s"]
        speed = "met" if ratio >= TARGET_RATIO else "NOT met"
        memory = "met" if imported["peak_rss_mb"] < TARGET_RSS_MB else "NOT met"
        print(
            f"{path.name}: speed {ratio:.2f} ({speed}), peak RSS {imported['peak_rss_mb']} MB ({memory})"
        )
        floor = imported["floor"]
        ceiling = floor["rows_per_s"] / baseline["rows_per_s"]
        print(
            f"{path.name}: floor {ceiling:.2f} of the baseline: writing the import's own "
            f"{floor['database_rows']:,} database rows, nothing else, "
            + ("reaches" if ceiling >= TARGET_RATIO else "cannot reach")
            + f" {TARGET_RATIO:.2f}; the import is at {imported['rows_per_s'] / floor['rows_per_s']:.2f} of the floor"
        )
    before, after = (" ".join(f"{x:.2f}" for x in avg) for avg in (load, os.getloadavg()))
    print(f"load average (1, 5, 15 min): before {before}, after {after}")
    for _, baseline, imported in results:
        print(json.dumps(baseline))
        print(json.dumps(imported))


if __name__ == "__main__":
    main()
