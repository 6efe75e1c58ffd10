"""Load benchmark: C concurrent simulated labelers against the platform served as in production.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rlhf_bench CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \
        .venv/bin/python bench/labelers.py --concurrency 1 8 32 64 --count 3000

Starts gunicorn on loopback (production settings: DEBUG off), creates per concurrency level a
project with 5,000 ranking tasks (K=4, overlap 3) and C labeler accounts with API tokens, then
runs C threads that lease (`POST /api/v1/projects/{id}/tasks/next/`) and submit
(`POST /api/v1/tasks/{id}/annotations/` with an Idempotency-Key) until N annotations are in.
Prints a human row and one JSON line per level; `violations` comes from checks on the database:
no item with more than 3 annotations, no labeler twice on an item, every 2xx submission present
exactly once. Beside the rate it prints the CPU one annotation costs the server (gunicorn), the
database (PostgreSQL's backends, from /proc) and this client, and the rate all cores could give
at that cost (the machine is shared, so the rate measured depends on others' load). Without
DATABASE_URL it runs on the embedded SQLite default.
"""

from __future__ import annotations

import argparse
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
TARGET_PER_S, TARGET_P95_MS = 300, 150
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
    from django.db import connection, transaction
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
    if connection.vendor == "postgresql":
        # Fresh planner statistics for the rows just bulk-loaded, as autovacuum would gather
        # within a minute in production. Without them (autovacuum is off on the shared project
        # server) PostgreSQL planned the candidates join as a scan of every response: 24 ms a
        # lease, which the earlier figures of this benchmark paid.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    return project.pk, tokens


class Connection:
    """Just enough HTTP/1.1 for this benchmark: keep-alive POSTs, Content-Length or chunked
    bodies. The client shares the machine's cores with the server, so it must be cheap:
    http.client parses every response's headers with the email package, which cost ~0.8 ms of
    CPU per request on the 2-core machine; this costs a tenth of it."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.closed = False

    def post(self, path: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n%s"
            % (path.encode(), head, len(body), body)
        )
        status_line = self.file.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            parts = []
            while size := int(self.file.readline().split(b";")[0], 16):
                parts.append(self.file.read(size))
                self.file.readline()
            self.file.readline()
            payload = b"".join(parts)
        else:
            payload = self.file.read(length)
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        self.closed = True
        self.file.close()
        self.sock.close()


class Labeler(threading.Thread):
    def __init__(self, port, project_id, token, budget, results):
        super().__init__(daemon=True)
        self.port, self.project_id, self.token = port, project_id, token
        self.budget, self.results = budget, results
        self.next_ms: list[float] = []
        self.submit_ms: list[float] = []
        self.errors: list[str] = []
        self.submitted: list[int] = []  # annotation ids acknowledged with a 2xx
        self.head = b"Authorization: Token %s\r\nContent-Type: application/json\r\n" % (
            token.encode()
        )

    def request(self, conn, path, body=b"", head=b""):
        start = time.perf_counter()
        status, payload = conn.post(path, self.head + head, body)
        return status, payload, (time.perf_counter() - start) * 1000

    def run(self):
        conn = None
        next_path = f"/api/v1/projects/{self.project_id}/tasks/next/"
        while self.budget.take():
            try:
                if conn is None or conn.closed:
                    conn = Connection(self.port)
                status, payload, ms = self.request(conn, next_path)
                self.next_ms.append(ms)
                if status == 204:
                    self.budget.give_back()
                    break
                if status != 200:
                    self.errors.append(f"next {status}: {payload[:200]!r}")
                    self.budget.give_back()
                    continue
                lease = json.loads(payload)
                if conn.closed:
                    conn = Connection(self.port)
                ranking = [[i] for i in lease["shown_order"]]
                body = json.dumps({"payload": {"ranking": ranking}, "time_spent_ms": 1000})
                status, payload, ms = self.request(
                    conn,
                    f"/api/v1/tasks/{lease['task']['id']}/annotations/",
                    body.encode(),
                    b"Idempotency-Key: %s\r\n" % uuid.uuid4().hex.encode(),
                )
                self.submit_ms.append(ms)
                if status in (200, 201):
                    self.submitted.append(json.loads(payload)["id"])
                else:
                    self.errors.append(f"submit {status}: {payload[:200]!r}")
            except (OSError, ValueError, IndexError) as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
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
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return float("nan")
    return sum(process_cpu_seconds(p) or 0.0 for p in [pid, *map(int, children)])


def process_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DatabaseCpu(threading.Thread):
    """CPU of the PostgreSQL backends serving this benchmark's database (the gunicorn workers'
    connections), sampled twice a second from /proc while a level runs, so a connection that
    closes in the middle (DATABASE_CONN_MAX_AGE) loses at most half a second of it. Needs the
    server on this machine; None elsewhere and on SQLite (in-process: the server's own CPU)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.stopped = threading.Event()
        from django.db import connections

        self.conn = connections.create_connection("default")  # its own, shared with the caller
        self.conn.inc_thread_sharing()

    def sample(self) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            pids = [row[0] for row in cursor.fetchall()]
        for pid in pids:
            cpu = process_cpu_seconds(pid)
            if cpu is not None:
                self.first.setdefault(pid, cpu)
                self.last[pid] = cpu

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.sample()

    def stop(self) -> float | None:
        self.stopped.set()
        self.join()
        self.sample()
        self.conn.close()
        if not self.first:
            return None
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


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
    # One worker process per core, a few threads each: on the 2-core machine 2x4 spent the least
    # CPU per annotation of 2x4, 2x8, 2x16, 3x4, 4x8 and 8 sync workers (bench/README.md).
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument(
        "--worker-class", default="gthread", choices=["gthread", "sync"], help="gunicorn -k"
    )
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
            args.worker_class,
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
            f"platform: gunicorn {args.worker_class} {args.workers}x{args.threads} threads, "
            f"database {connection.vendor}, "
            f"{os.cpu_count()} CPUs; {args.tasks} tasks (K=4, overlap 3) per level"
        )
        print(
            f"target (issue #8): C=32 on PostgreSQL >= {TARGET_PER_S} annotations/s, p95 of both calls"
            f" < {TARGET_P95_MS} ms; on {os.cpu_count()} cores that is a CPU budget of"
            f" {os.cpu_count() * 1000 / TARGET_PER_S:.1f} ms per annotation, all processes together"
        )
        print(
            f"{'C':>4} {'ann/s':>8} {'next p50/p95/p99 ms':>22} {'submit p50/p95/p99 ms':>24} {'errors':>7} {'violations':>10}"
            f" {'CPU ms/ann server+db+client':>28} {'ceiling/s':>9}"
        )
        for c in args.concurrency:
            project_id, tokens = build_level(c, args.tasks, 4, 3)
            connection.close()
            budget, results = Budget(args.count), []
            labelers = [Labeler(port, project_id, t, budget, results) for t in tokens]
            load_before = os.getloadavg()[0]
            database_cpu = DatabaseCpu() if connection.vendor == "postgresql" else None
            if database_cpu is not None:
                database_cpu.sample()
                database_cpu.start()
            cpu_server, cpu_client = server_cpu_seconds(server.pid), client_cpu_seconds()
            start = time.perf_counter()
            for labeler in labelers:
                labeler.start()
            for labeler in labelers:
                labeler.join()
            elapsed = time.perf_counter() - start
            cpu_server = server_cpu_seconds(server.pid) - cpu_server
            cpu_client = client_cpu_seconds() - cpu_client
            cpu_database = database_cpu.stop() if database_cpu is not None else None
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
                "database_cpu_ms_per_annotation": (
                    round(1000 * cpu_database / max(1, len(acknowledged)), 2)
                    if cpu_database is not None
                    else None
                ),
                "client_cpu_ms_per_annotation": round(
                    1000 * cpu_client / max(1, len(acknowledged)), 2
                ),
                "loadavg_1min_before": round(load_before, 2),
                "loadavg_1min_after": round(os.getloadavg()[0], 2),
            }
            # The machine is shared, so the rate measured depends on the others' load; the CPU
            # one annotation costs does much less. The ceiling: what all cores could do if they
            # did nothing else.
            cpu_ms = (
                row["server_cpu_ms_per_annotation"]
                + (row["database_cpu_ms_per_annotation"] or 0)
                + row["client_cpu_ms_per_annotation"]
            )
            row["cpu_ms_per_annotation"] = round(cpu_ms, 2)
            row["cpu_ceiling_annotations_per_s"] = round(os.cpu_count() * 1000 / max(cpu_ms, 1e-9))
            print(
                f"{c:>4} {row['annotations_per_s']:>8} "
                f"{row['p50_ms_next']!s:>8}/{row['p95_ms_next']!s}/{row['p99_ms_next']!s} "
                f"{row['p50_ms_submit']!s:>10}/{row['p95_ms_submit']!s}/{row['p99_ms_submit']!s} "
                f"{row['errors']:>7} {row['violations']:>10}"
                f" {row['server_cpu_ms_per_annotation']:>12}+{row['database_cpu_ms_per_annotation']}"
                f"+{row['client_cpu_ms_per_annotation']}"
                f" {row['cpu_ceiling_annotations_per_s']:>9}"
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
