"""Bulk task creation benchmark: tasks for 5,000 prompts, beside one task_create per task.

    .venv/bin/python bench/bulk_tasks.py [--prompts 5000]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_bench .venv/bin/python bench/bulk_tasks.py

On a throwaway test database (SQLite in memory by default): a project of N prompts with four
responses each (K=4), then, timed, a batch (`annotation.bulk`) of each kind over all of them
(demonstration: N tasks; rank: N; compare: 6N; rate: 4N), the same rank batch again (creates
nothing: the idempotency check alone), and the baseline: `services.task_create` one task at a
time for the rank tasks of 500 prompts, scaled to N.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=5000)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        run(args.prompts, connection.vendor)
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)


def run(n: int, vendor: str) -> None:
    from annotation import services
    from annotation.bulk import task_batch_request, task_batch_run
    from annotation.models import Prompt, Response, TaskBatch

    project = services.project_create(name="Bench", slug="bench-bulk", k_responses=4)
    services.prompts_create(project=project, items=[{"text": f"prompt {i}"} for i in range(n)])
    prompts = list(Prompt.objects.filter(project=project))
    Response.objects.bulk_create(
        Response(prompt=p, text=f"reply {j}", origin="model") for p in prompts for j in range(4)
    )
    print(f"{vendor}: {n:,} prompts, 4 responses each, K=4")

    def timed(kind: str, label: str, **settings) -> TaskBatch:
        start = time.perf_counter()
        batch = task_batch_request(project=project, kind=kind, selection={"without_demonstrations": 1},
                                   enqueue=False, **settings)  # fmt: skip
        task_batch_run(batch=batch)
        took = time.perf_counter() - start
        created = batch.counts["created"]
        print(f"  {label:<28} {took:6.2f} s  {created:>7,} created  "
              f"{batch.counts['already_there']:>6,} already there  "
              f"({created / took if created else 0:,.0f} tasks/s)")  # fmt: skip
        return batch

    timed("demonstration", "demonstration batch")
    timed("rank", "rank batch")
    timed("compare", "compare batch")
    timed("rate", "rate batch")
    timed("rank", "rank batch again (no-op)")

    sample = prompts[:500]
    start = time.perf_counter()
    for prompt in sample:
        services.task_create(
            project=project, kind="rank", prompt=prompt, candidates=list(prompt.responses.all()),
            round=2,
        )  # fmt: skip
    took = (time.perf_counter() - start) * n / len(sample)
    print(
        f"  baseline: task_create loop  {took:6.2f} s  (rank, 500 prompts timed, scaled to {n:,})"
    )


if __name__ == "__main__":
    main()
