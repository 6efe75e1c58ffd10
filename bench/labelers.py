"""Load benchmark: C concurrent simulated labelers against the platform served as in production.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_bench CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \
        .venv/bin/python bench/labelers.py --concurrency 1 8 32 64 --count 3000

Starts gunicorn on loopback (production settings: DEBUG off), creates per concurrency level a
project with 5,000 ranking tasks (K=4, overlap 3) and C labeler accounts with API tokens, then
runs C threads that lease (`POST /api/v1/projects/{id}/tasks/next/`) and submit
(`POST /api/v1/tasks/{id}/annotations/` with an Idempotency-Key) until N annotations are in.
Prints a human row and one JSON line per level; `violations` comes from checks on the database:
no item with more than 3 annotations, no labeler twice on an item, every 2xx submission present
exactly once. Without DATABASE_URL it runs on the embedded SQLite default.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]


def production_env(var_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SECURE_SSL_REDIRECT="0",
        PLATFORM_VAR_DIR=str(var_dir),
        LOG_LEVEL="WARNING",
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(
        {
            k: v
            for k, v in env.items()
            if k.startswith(("DJANGO_", "PLATFORM_", "DATABASE_URL", "CELERY_", "LOG_"))
        }
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def build_level(concurrency: int, tasks: int, k: int, overlap: int) -> tuple[int, list[str]]:
    """A fresh project with `tasks` ranking tasks and `concurrency` labelers; returns (id, tokens)."""
    from django.contrib.auth import get_user_model
    from django.db import transaction
    from rest_framework.authtoken.models import Token

    from annotation import services
    from annotation.models import Prompt, Response, Role, Source, Task, TaskKind, content_hash

    tag = uuid.uuid4().hex[:8]
    with transaction.atomic():
        project = services.project_create(
            name=f"Load {tag}", slug=f"load-{tag}", k_responses=k, overlap=overlap
        )
        prompts = Prompt.objects.bulk_create(
            Prompt(
                project=project,
                text=f"Load prompt {i} {tag}",
                content_hash=content_hash(f"Load prompt {i} {tag}"),
                source=Source.SEED,
            )
            for i in range(tasks)
        )
        responses = Response.objects.bulk_create(
            Response(prompt=p, text=f"Answer {j} to {p.text}", origin=Source.SEED)
            for p in prompts
            for j in range(k)
        )
        rows = Task.objects.bulk_create(
            Task(project=project, kind=TaskKind.RANK, prompt=p, required=overlap) for p in prompts
        )
        through = Task.candidates.through
        through.objects.bulk_create(
            through(task_id=t.pk, response_id=r.pk)
            for i, t in enumerate(rows)
            for r in responses[i * k : (i + 1) * k]
        )
        tokens = []
        User = get_user_model()
        for n in range(concurrency):
            user = User.objects.create_user(username=f"load-{tag}-{n}", password=None)
            services.membership_set(project=project, user=user, role=Role.LABELER)
            tokens.append(Token.objects.create(user=user).key)
    return project.pk, tokens


class Labeler(threading.Thread):
    def __init__(self, port, project_id, token, budget, results):
        super().__init__(daemon=True)
        self.port, self.project_id, self.token = port, project_id, token
        self.budget, self.results = budget, results
        self.next_ms: list[float] = []
        self.submit_ms: list[float] = []
        self.errors: list[str] = []
        self.submitted: list[int] = []  # annotation ids acknowledged with a 2xx

    def request(self, conn, path, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else b""
        hdrs = {
            "Authorization": f"Token {self.token}",
            "Content-Type": "application/json",
            **(headers or {}),
        }
        start = time.perf_counter()
        conn.request("POST", path, body=data, headers=hdrs)
        response = conn.getresponse()
        payload = response.read()
        return response.status, payload, (time.perf_counter() - start) * 1000

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while self.budget.take():
            try:
                status, payload, ms = self.request(
                    conn, f"/api/v1/projects/{self.project_id}/tasks/next/"
                )
                self.next_ms.append(ms)
                if status == 204:
                    self.budget.give_back()
                    break
                if status != 200:
                    self.errors.append(f"next {status}: {payload[:200]!r}")
                    self.budget.give_back()
                    continue
                lease = json.loads(payload)
                ranking = [[i] for i in lease["shown_order"]]
                key = uuid.uuid4().hex
                status, payload, ms = self.request(
                    conn,
                    f"/api/v1/tasks/{lease['task']['id']}/annotations/",
                    {"payload": {"ranking": ranking}, "time_spent_ms": 1000},
                    {"Idempotency-Key": key},
                )
                self.submit_ms.append(ms)
                if status in (200, 201):
                    self.submitted.append(json.loads(payload)["id"])
                else:
                    self.errors.append(f"submit {status}: {payload[:200]!r}")
            except (OSError, http.client.HTTPException) as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.close()


class Budget:
    def __init__(self, n):
        self.n, self.lock = n, threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.n <= 0:
                return False
            self.n -= 1
            return True

    def give_back(self):
        with self.lock:
            self.n += 1


def server_cpu_seconds(pid: int) -> float:
    """User+system CPU of the gunicorn master and its workers, from /proc (Linux only)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        return float("nan")
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q / 100 * len(values)))], 1)


def violations(project_id: int, acknowledged: list[int], overlap: int) -> int:
    from django.db.models import Count

    from annotation.models import Annotation

    rows = Annotation.objects.filter(task__project_id=project_id)
    over = rows.values("task").annotate(n=Count("id")).filter(n__gt=overlap).count()
    twice = rows.values("task", "labeler").annotate(n=Count("id")).filter(n__gt=1).count()
    present = set(rows.filter(pk__in=acknowledged).values_list("pk", flat=True))
    missing = len(set(acknowledged) - present)
    duplicated_acks = len(acknowledged) - len(set(acknowledged))
    return over + twice + missing + duplicated_acks


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--count", type=int, default=3000, help="annotations per concurrency level")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn worker")
    args = parser.parse_args()

    var_dir = ROOT / "var" / "bench"
    var_dir.mkdir(parents=True, exist_ok=True)
    env = production_env(var_dir)
    setup_django(env)
    from django.db import connection

    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--pythonpath",
            "platform",
            "-k",
            "gthread",
            "-w",
            str(args.workers),
            "--threads",
            str(args.threads),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "config.wsgi:application",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        print(
            f"platform: gunicorn {args.workers}x{args.threads} threads, database {connection.vendor}, "
            f"{os.cpu_count()} CPUs; {args.tasks} tasks (K=4, overlap 3) per level"
        )
        print(
            f"{'C':>4} {'ann/s':>8} {'next p50/p95/p99 ms':>22} {'submit p50/p95/p99 ms':>24} {'errors':>7} {'violations':>10}"
        )
        for c in args.concurrency:
            project_id, tokens = build_level(c, args.tasks, 4, 3)
            connection.close()
            budget, results = Budget(args.count), []
            labelers = [Labeler(port, project_id, t, budget, results) for t in tokens]
            load_before = os.getloadavg()[0]
            cpu_server, cpu_client = server_cpu_seconds(server.pid), client_cpu_seconds()
            start = time.perf_counter()
            for labeler in labelers:
                labeler.start()
            for labeler in labelers:
                labeler.join()
            elapsed = time.perf_counter() - start
            cpu_server = server_cpu_seconds(server.pid) - cpu_server
            cpu_client = client_cpu_seconds() - cpu_client
            next_ms = [m for lab in labelers for m in lab.next_ms]
            submit_ms = [m for lab in labelers for m in lab.submit_ms]
            acknowledged = [i for lab in labelers for i in lab.submitted]
            errors = [e for lab in labelers for e in lab.errors]
            row = {
                "concurrency": c,
                "database": connection.vendor,
                "annotations": len(acknowledged),
                "seconds": round(elapsed, 2),
                "annotations_per_s": round(len(acknowledged) / elapsed, 1),
                "p50_ms_next": pct(next_ms, 50),
                "p95_ms_next": pct(next_ms, 95),
                "p99_ms_next": pct(next_ms, 99),
                "p50_ms_submit": pct(submit_ms, 50),
                "p95_ms_submit": pct(submit_ms, 95),
                "p99_ms_submit": pct(submit_ms, 99),
                "mean_ms_submit": round(statistics.fmean(submit_ms), 1) if submit_ms else None,
                "errors": len(errors),
                "database_locked_errors": sum("database is locked" in e for e in errors),
                "violations": violations(project_id, acknowledged, 3),
                # Both share the machine's cores: CPU per annotation shows where the time goes.
                "server_cpu_ms_per_annotation": round(
                    1000 * cpu_server / max(1, len(acknowledged)), 2
                ),
                "client_cpu_ms_per_annotation": round(
                    1000 * cpu_client / max(1, len(acknowledged)), 2
                ),
                "loadavg_1min_before": round(load_before, 2),
                "loadavg_1min_after": round(os.getloadavg()[0], 2),
            }
            print(
                f"{c:>4} {row['annotations_per_s']:>8} "
                f"{row['p50_ms_next']!s:>8}/{row['p95_ms_next']!s}/{row['p99_ms_next']!s} "
                f"{row['p50_ms_submit']!s:>10}/{row['p95_ms_submit']!s}/{row['p99_ms_submit']!s} "
                f"{row['errors']:>7} {row['violations']:>10}"
            )
            print(json.dumps(row))
            for error in errors[:3]:
                print("  error:", error)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
