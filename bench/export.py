"""Export benchmark: 1,000,000 and 3,000,000 preference pairs from the database to JSONL and Parquet.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_bench .venv/bin/python bench/export.py
    .venv/bin/python bench/export.py --pairs 200000 600000   # smaller sizes

Builds (once per size; reused on later runs) a project of 166,667 ranking judgments of K=4
responses (C(4,2) = 6 pairs each: 1,000,002 pairs; 500,000 judgments for 3,000,000) with bulk
inserts, then, each in a fresh process so peak RSS is the export's own, for each size:

- `snapshot jsonl` / `snapshot parquet`: the real snapshot builder (`annotation.exports`), rows/s
  and peak RSS;
- `ceiling`: the database dumping the same data the builder reads (every judgment with its
  prompt text and ranking, and every response text) as fast as it can: `COPY (...) TO STDOUT`
  on PostgreSQL (psycopg's copy, discarded), a raw cursor loop on SQLite; expressed in pairs/s.
  (Dumping the million pair rows themselves from a table holding them takes the same time on
  PostgreSQL: 1.1 s for the 620 MB, measured once with a table made for it.)
- `pairs by SQL` (PostgreSQL only): for reference, the database itself expanding the rankings
  into the same pair rows (prompt, chosen, rejected texts) and dumping them: what the export
  would cost done in SQL alone, before any JSON, hashing or file.

Each phase also prints its CPU seconds (the process, all threads) and its PostgreSQL backend's
(from /proc): on a shared machine the wall clock depends on the load, the CPU much less.
On PostgreSQL it first runs VACUUM ANALYZE, as autovacuum would some time after a bulk load:
the first reads of new rows otherwise set their hint bits, which slows whichever phase runs
first (the ceiling) by half.

Targets: the builder at least half the ceiling's speed, under 500 MB peak RSS; from the first
size to the others, time linear and peak RSS flat (within 10%); the ratios are printed.
Without DATABASE_URL it runs on the embedded SQLite default (under var/).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
K = 4


def slug_for(pairs: int) -> str:
    """One project per size, so both sizes stay built side by side and are reused."""
    return "bench-export" if pairs == 1_000_000 else f"bench-export-{pairs}"


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    import django

    django.setup()


def peak_rss_mb() -> float:
    """This process's own peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from
    the parent across fork+exec, so a child would report the (bigger) builder's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of this process (all its threads) and of its database backend (the
    PostgreSQL server process serving its connection, when on this machine)."""
    from django.db import connection

    usage = resource.getrusage(resource.RUSAGE_SELF)
    own = usage.ru_utime + usage.ru_stime
    if connection.vendor != "postgresql":
        return own, 0.0
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return own, 0.0
    return own, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build(pairs: int) -> None:
    from django.core.management import call_command
    from django.db import transaction

    from annotation import services
    from annotation.models import Annotation, Project, Prompt, Response, Task, content_hash

    call_command("migrate", verbosity=0)
    judgments = -(-pairs // 6)
    slug = slug_for(pairs)
    project = Project.objects.filter(slug=slug).first()
    if project and Annotation.objects.filter(task__project=project).count() == judgments:
        print(f"reusing {judgments:,} judgments in project {slug}")
        return
    if project:
        project.delete()
    project = services.project_create(name=f"Bench export {pairs:,}", slug=slug)
    started = time.perf_counter()
    filler = "lorem ipsum dolor sit amet " * 4
    batch = 5000
    for start in range(0, judgments, batch):
        n = min(batch, judgments - start)
        with transaction.atomic():
            prompts = Prompt.objects.bulk_create(
                [
                    Prompt(
                        project=project,
                        text=f"Prompt {start + i}: {filler}",
                        source="seed",
                        content_hash=content_hash(f"Prompt {start + i}: {filler}"),
                    )
                    for i in range(n)
                ]
            )
            responses = Response.objects.bulk_create(
                [
                    Response(
                        prompt=p,
                        text=f"Answer {j} to {p.text[:12]} {filler}{filler}",
                        origin="seed",
                    )
                    for p in prompts
                    for j in range(K)
                ]
            )
            tasks = Task.objects.bulk_create(
                [
                    Task(
                        project=project,
                        kind="rank",
                        prompt=p,
                        required=1,
                        done=1,
                        status="complete",
                    )
                    for p in prompts
                ]  # fmt: skip
            )
            Annotation.objects.bulk_create(
                [
                    Annotation(
                        task=t,
                        kind="rank",
                        payload={
                            "ranking": [[r.pk] for r in responses[i * K : i * K + K]],
                            "all_unacceptable": False,
                        },
                        source="imported",
                    )
                    for i, t in enumerate(tasks)
                ]
            )
        done = start + n
        if done % 50_000 < batch:
            print(
                f"  built {done:,}/{judgments:,} judgments ({time.perf_counter() - started:.0f}s)",
                flush=True,
            )
    print(
        f"built {judgments:,} judgments ({judgments * 6:,} pairs) in {time.perf_counter() - started:.0f}s"
    )


def phase_snapshot(fmt: str, pairs: int) -> dict:
    from django.conf import settings

    from annotation.exports import build_directory
    from annotation.models import Project

    settings.DATA_DIR = Path(tempfile.mkdtemp(prefix="bench-export-"))
    project = Project.objects.get(slug=slug_for(pairs))
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    result = build_directory(
        project=project, kind="preference", format=fmt, filters={"test_size": 0.01}
    )
    figures = measured(f"snapshot {fmt}", result["manifest"]["row_count"], 0, started, cpu_before)
    figures["bytes"] = sum(p.stat().st_size for p in Path(result["path"]).iterdir() if p.is_file())
    figures["sha256"] = result["manifest"]["sha256"]
    import shutil

    shutil.rmtree(settings.DATA_DIR)
    return figures


def phase_ceiling(pairs: int) -> dict:
    from django.db import connection

    from annotation.models import Annotation, Project, Response

    project = Project.objects.get(slug=slug_for(pairs))
    judgments = Annotation.objects.filter(task__project=project)
    pairs = judgments.count() * 6  # the pairs the builder writes from them
    a_sql, a_params = judgments.values_list(
        "id", "task__prompt__text", "payload"
    ).query.sql_with_params()
    r_sql, r_params = (
        Response.objects.filter(prompt__project=project)
        .values_list("id", "text")
        .query.sql_with_params()
    )
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    total = 0
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            raw = cursor.cursor
            for sql, params in ((a_sql, a_params), (r_sql, r_params)):
                query = raw.mogrify(sql, params)
                query = query.decode() if isinstance(query, bytes) else query
                with raw.copy(f"COPY ({query}) TO STDOUT") as copy:
                    for chunk in copy:
                        total += len(chunk)
        else:
            for sql, params in ((a_sql, a_params), (r_sql, r_params)):
                cursor.execute(sql, params)
                while rows := cursor.fetchmany(10_000):
                    total += len(rows)
    return measured("ceiling (database dump)", pairs, total, started, cpu_before)


def measured(phase: str, rows: int, size: int, started: float, cpu_before) -> dict:
    """A phase's figures, from its start (`time.perf_counter()`, `cpu_seconds()`)."""
    seconds = time.perf_counter() - started
    cpu = [after - before for after, before in zip(cpu_seconds(), cpu_before, strict=True)]
    return {"phase": phase, "rows": rows, "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds), "peak_rss_mb": round(peak_rss_mb()),
            "bytes": size, "cpu_s": round(cpu[0], 2),
            "db_cpu_s": round(cpu[1], 2)}  # fmt: skip


# The rankings of the bench (K responses, no ties) expanded into their pair rows in SQL.
PAIRS_SQL = """
SELECT p.text, rk.texts[ci], rk.texts[di], 1.0, 1.0
FROM annotation_annotation a
JOIN annotation_task t ON t.id = a.task_id
JOIN annotation_prompt p ON p.id = t.prompt_id
CROSS JOIN LATERAL (
    SELECT array_agg(r.text ORDER BY x.i) AS texts
    FROM jsonb_array_elements(a.payload->'ranking') WITH ORDINALITY AS x (g, i)
    JOIN annotation_response r ON r.id = (x.g->>0)::bigint) rk
CROSS JOIN LATERAL generate_series(1, cardinality(rk.texts)) AS ci
CROSS JOIN LATERAL generate_series(ci + 1, cardinality(rk.texts)) AS di
WHERE t.project_id = %s
"""


def phase_pairs_sql(pairs: int) -> dict:
    from django.db import connection

    from annotation.models import Project

    project = Project.objects.get(slug=slug_for(pairs))
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    total = rows = 0
    with connection.cursor() as cursor:
        cursor.execute("SET jit = off")  # as the export's reads do
        query = cursor.cursor.mogrify(PAIRS_SQL, [project.pk])
        with cursor.cursor.copy(f"COPY ({query}) TO STDOUT") as copy:
            while row := copy.read():
                total += len(row)
                rows += 1
    return measured("pairs by SQL (reference)", rows, total, started, cpu_before)


PHASES = {"ceiling": phase_ceiling, "pairs-sql": phase_pairs_sql}


def run_size(pairs: int, phases: list[str]) -> dict[str, dict]:
    """Every phase of one size, each in a fresh process (peak RSS is its own)."""
    results = {}
    for phase in phases:
        out = subprocess.run(
            [sys.executable, __file__, "--phase", phase, "--pairs", str(pairs)],
            capture_output=True,
            text=True,
            env=os.environ,
        )
        if out.returncode:
            sys.exit(f"phase {phase} ({pairs:,} pairs) failed:\n{out.stderr[-4000:]}")
        results[phase] = json.loads(out.stdout.strip().splitlines()[-1])
    if results["jsonl"]["sha256"] != results["parquet"]["sha256"]:
        sys.exit("the JSONL and Parquet snapshots of the same rows have different hashes")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pairs",
        type=int,
        nargs="+",
        default=[1_000_000, 3_000_000],
        help="sizes to export (pairs; each is built once as its own project): the first is the "
        "base that the others' time and peak RSS are compared with",
    )
    parser.add_argument("--phase", choices=["jsonl", "parquet", *PHASES], help=argparse.SUPPRESS)
    args = parser.parse_args()
    setup_django()
    if args.phase:
        pairs = args.pairs[0]
        result = (
            PHASES[args.phase](pairs) if args.phase in PHASES else phase_snapshot(args.phase, pairs)
        )
        print(json.dumps(result))
        return
    from django.db import connection

    print(f"database: {connection.vendor}")
    for pairs in args.pairs:
        build(pairs)
    phases = ["ceiling", "jsonl", "parquet"]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")  # see the docstring
        phases.append("pairs-sql")
    load = os.getloadavg()
    by_size = {pairs: run_size(pairs, phases) for pairs in args.pairs}
    print(
        f"{'phase':<26}{'rows':>11}{'seconds':>9}{'rows/s':>10}{'peak RSS MB':>13}{'vs ceiling':>12}"
        f"{'CPU s':>8}{'DB CPU s':>10}"
    )
    for results in by_size.values():
        ceiling = results["ceiling"]["rows_per_s"]
        for result in results.values():
            ratio = result["rows_per_s"] / ceiling
            print(f"{result['phase']:<26}{result['rows']:>11,}{result['seconds']:>9}{result['rows_per_s']:>10,}"
                  f"{result['peak_rss_mb']:>13}{ratio:>12.2f}{result['cpu_s']:>8}{result['db_cpu_s']:>10}")  # fmt: skip
    print("target: snapshot >= 0.50 of the ceiling's rows/s, peak RSS < 500 MB")
    base_pairs, base = next(iter(by_size.items()))
    for pairs, results in list(by_size.items())[1:]:
        scale = results["jsonl"]["rows"] / base["jsonl"]["rows"]
        for fmt in ("jsonl", "parquet"):
            time_ratio = results[fmt]["seconds"] / base[fmt]["seconds"]
            rss_ratio = results[fmt]["peak_rss_mb"] / base[fmt]["peak_rss_mb"]
            print(
                f"{fmt} {pairs:,} vs {base_pairs:,} pairs ({scale:.2f}x the rows): "
                f"time {time_ratio:.2f}x (linear: {scale:.2f}x), "
                f"peak RSS {rss_ratio:.2f}x (target: flat, <= 1.10x)"
            )
    before, after = (" ".join(f"{x:.2f}" for x in avg) for avg in (load, os.getloadavg()))
    print(f"load average (1, 5, 15 min): before {before}, after {after}")
    for results in by_size.values():
        for result in results.values():
            print(json.dumps(result))


if __name__ == "__main__":
    main()
