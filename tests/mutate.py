"""Mutation testing of the core rules: `make mutate` (or `python tests/mutate.py --help`).

Each mutant in `tests/mutants.py` is one deliberate mistake (a clause dropped, a comparison
flipped, a scope removed) in a copy of the working tree; the tests named beside it run against
the copy, and the mutant is *killed* when they fail. A survivor is a mistake the suite would let
through. The working tree itself is never modified.

Why a catalogue of named mutations instead of mutmut or cosmic-ray: those generate thousands
of mutants and run the suite for each; on the 2-core machines this project is built on, one
pass would take days. The catalogue holds the mistakes that matter (the ones a refactor of
leasing, judgments, snapshots, scoping and runs would plausibly make), each tied to the tests
meant to catch it, and a mutant whose text no longer matches the code fails loudly, so the
catalogue cannot silently rot.

Results go to test-output/mutations.json; `--report docs/mutations.md` rewrites the table
there. Exit status: 0 when the kill rate reaches `--target` (default 0.9), 1 below it, 2 when a
mutant is stale or the unmutated tests fail.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mutants import MUTANTS, Mutant  # noqa: E402

REPORT_BEGIN = "<!-- mutation report: begin (written by tests/mutate.py --report) -->"
REPORT_END = "<!-- mutation report: end -->"
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, survived, timeout, error
    seconds: float
    killed_by: str = ""
    detail: str = ""

    def as_dict(self) -> dict:
        return {
            "name": self.mutant.name,
            "module": self.mutant.path,
            "area": self.mutant.area,
            "status": self.status,
            "seconds": round(self.seconds, 1),
            "killed_by": self.killed_by,
            "tests": list(self.mutant.tests),
            "survives_on_purpose": self.mutant.survives_on_purpose,
            "detail": self.detail,
        }


def stale(mutants: list[Mutant]) -> list[str]:
    """Mutants whose original text is not exactly once in their file (the code moved on)."""
    problems = []
    for mutant in mutants:
        path = ROOT / mutant.path
        if not path.exists():
            problems.append(f"{mutant.name}: {mutant.path} does not exist")
            continue
        count = path.read_text().count(mutant.old)
        if count != 1:
            problems.append(
                f"{mutant.name}: its text occurs {count} times in {mutant.path} (must be once); "
                "update tests/mutants.py to match the code"
            )
        for test in mutant.tests:
            if not (ROOT / test.split("::")[0]).exists():
                problems.append(f"{mutant.name}: test file {test.split('::')[0]} does not exist")
    return problems


def tree_copy(destination: Path) -> None:
    """The working tree as git sees it (tracked and new files, not ignored ones), plus the venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if not source.is_file():
            continue  # deleted but still in the index
        target = destination / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (destination / ".venv").symlink_to(ROOT / ".venv")


def environment(job: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a stale .pyc of a mutant must never be reused
    url = env.get("DATABASE_URL", "")
    if url.startswith("postgres"):  # each job its own database (pytest-django adds test_)
        env["DATABASE_URL"] = f"{url.rstrip('/')}_mutate{job}"
    return env


def pytest_run(copy: Path, tests: list[str], env: dict, timeout: float) -> tuple[int | None, str]:
    command = [
        str(ROOT / ".venv" / "bin" / "python"),
        "-m",
        "pytest",
        "-x",
        "-q",
        "-rfE",
        "-p",
        "no:cacheprovider",
        "--create-db",
        *tests,
    ]
    try:
        done = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout or ""
        return None, out if isinstance(out, str) else out.decode(errors="replace")
    return done.returncode, done.stdout + done.stderr


def mutant_run(mutant: Mutant, copy: Path, env: dict, timeout: float) -> Outcome:
    path = copy / mutant.path
    original = path.read_text()
    path.write_text(original.replace(mutant.old, mutant.new, 1))
    started = time.monotonic()
    try:
        code, output = pytest_run(copy, list(mutant.tests), env, timeout)
    finally:
        path.write_text(original)
    seconds = time.monotonic() - started
    if code is None:
        return Outcome(mutant, "timeout", seconds, detail=f"tests ran past {timeout:.0f} s")
    if code == 0:
        return Outcome(mutant, "survived", seconds)
    if code == 1:
        failed = FAILED.findall(output)
        return Outcome(mutant, "killed", seconds, killed_by=failed[0] if failed else "")
    # 2: interrupted or a collection error, 3: internal error, 4: usage, 5: no tests ran.
    tail = "\n".join(output.strip().splitlines()[-5:])
    return Outcome(mutant, "error", seconds, detail=f"pytest exit {code}: {tail}")


def report_write(path: Path, outcomes: list[Outcome], target: float) -> None:
    killed = sum(o.status in {"killed", "timeout"} for o in outcomes)
    lines = [
        REPORT_BEGIN,
        "",
        f"Last run: {time.strftime('%Y-%m-%d')}, {len(outcomes)} mutants, **{killed} killed "
        f"({killed / max(1, len(outcomes)):.0%}; target {target:.0%})**, "
        f"{sum(o.status == 'survived' for o in outcomes)} survived, "
        f"{sum(o.status == 'timeout' for o in outcomes)} killed only by a time-out, "
        f"{sum(o.status == 'error' for o in outcomes)} errors.",
        "",
        "| area | mutant | module | outcome | killed by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for o in sorted(outcomes, key=lambda o: (o.mutant.area, o.mutant.name)):
        outcome = o.status
        if o.status == "survived" and o.mutant.survives_on_purpose:
            outcome = f"survived on purpose: {o.mutant.survives_on_purpose}"
        lines.append(
            f"| {o.mutant.area} | {o.mutant.name} | `{o.mutant.path}` | {outcome} | "
            f"{'`' + o.killed_by + '`' if o.killed_by else ''} |"
        )
    lines += ["", REPORT_END]
    text = path.read_text() if path.exists() else ""
    if REPORT_BEGIN in text and REPORT_END in text:
        head, rest = text.split(REPORT_BEGIN, 1)
        text = head + "\n".join(lines) + rest.split(REPORT_END, 1)[1]
    else:
        text = text + ("\n" if text else "") + "\n".join(lines) + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run mutants whose name or area contains this (repeatable)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="mutants run at once, each in its own copy"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant's tests")
    parser.add_argument(
        "--target", type=float, default=0.9, help="kill rate below which the exit status is 1"
    )
    parser.add_argument(
        "--report", type=Path, help="rewrite the report table in this Markdown file"
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip running the tests unmutated first"
    )
    args = parser.parse_args(argv)

    mutants = [
        m for m in MUTANTS if not args.only or any(o in m.name or o in m.area for o in args.only)
    ]
    if args.list:
        for m in mutants:
            print(f"{m.area:10} {m.name:62} {m.path} {m.backend}".rstrip())
        return 0
    on_postgresql = os.environ.get("DATABASE_URL", "").startswith("postgres")
    skipped = [m for m in mutants if m.backend == "postgresql" and not on_postgresql]
    if skipped:
        print(
            "Skipped (they need PostgreSQL; set DATABASE_URL):",
            *[m.name for m in skipped],
            sep="\n  ",
        )
    mutants = [m for m in mutants if m not in skipped]
    problems = stale(mutants)
    if problems:
        print("Stale mutants (the code changed under them):", *problems, sep="\n  ")
        return 2
    if not mutants:
        print("No mutant matches --only", args.only)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="mutate-"))
    copies = []
    for job in range(max(1, args.jobs)):
        copy = workdir / f"tree{job}"
        copy.mkdir()
        tree_copy(copy)
        copies.append((copy, environment(job)))
    print(f"{len(mutants)} mutants, {len(copies)} job(s), copies under {workdir}", flush=True)
    try:
        if not args.no_baseline:
            tests = sorted({t for m in mutants for t in m.tests})
            print(f"Baseline: {len(tests)} test targets, unmutated...", flush=True)
            code, output = pytest_run(copies[0][0], tests, copies[0][1], args.timeout * 2)
            if code != 0:
                print(output[-4000:])
                print("The tests fail without any mutation: fix them first (nothing was mutated).")
                return 2
        free = list(range(len(copies)))
        outcomes: list[Outcome] = []

        def one(mutant: Mutant) -> Outcome:
            slot = free.pop()
            try:
                copy, env = copies[slot]
                outcome = mutant_run(mutant, copy, env, args.timeout)
            finally:
                free.append(slot)
            by = f" by {outcome.killed_by}" if outcome.killed_by else ""
            print(
                f"{outcome.status.upper():9} {mutant.name} ({outcome.seconds:.0f} s){by} {outcome.detail}",
                flush=True,
            )
            return outcome

        with ThreadPoolExecutor(max_workers=len(copies)) as pool:
            outcomes = list(pool.map(one, mutants))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    killed = sum(o.status in {"killed", "timeout"} for o in outcomes)
    rate = killed / len(outcomes)
    output_dir = ROOT / "test-output"
    output_dir.mkdir(exist_ok=True)
    (output_dir / "mutations.json").write_text(
        json.dumps({"killed": killed, "total": len(outcomes), "rate": rate,
                    "mutants": [o.as_dict() for o in outcomes]}, indent=2)
    )  # fmt: skip
    if args.report:
        report_write(args.report, outcomes, args.target)
    print(f"\n{len(outcomes)} mutants: {killed} killed ({rate:.0%}), "
          f"{sum(o.status == 'survived' for o in outcomes)} survived, "
          f"{sum(o.status == 'timeout' for o in outcomes)} by time-out, "
          f"{sum(o.status == 'error' for o in outcomes)} errors")  # fmt: skip
    for o in outcomes:
        if o.status in {"survived", "error"}:
            why = (
                f" (on purpose: {o.mutant.survives_on_purpose})"
                if o.mutant.survives_on_purpose
                else ""
            )
            print(f"  {o.status}: {o.mutant.name} in {o.mutant.path}{why}")
    if any(o.status == "error" for o in outcomes):
        return 2
    return 0 if rate >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
