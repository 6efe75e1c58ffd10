"""Start a Celery worker with platform/ on sys.path (manage.py puts it there)."""

from __future__ import annotations

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Start a Celery worker (default and training queues unless --queues is given)."

    def add_arguments(self, parser):
        parser.add_argument("--queues", "-Q", default="default,training")
        parser.add_argument("--concurrency", "-c", type=int, default=1)
        parser.add_argument("--loglevel", "-l", default="INFO")
        parser.add_argument("--hostname", "-n", default=None)
        parser.add_argument("--pool", "-P", default="prefork")

    def handle(self, *args, **options):
        from config.celery import app

        argv = [
            "worker",
            f"--queues={options['queues']}",
            f"--concurrency={options['concurrency']}",
            f"--loglevel={options['loglevel']}",
            f"--pool={options['pool']}",
            "--without-gossip",
            "--without-mingle",
        ]
        if options["hostname"]:
            argv.append(f"--hostname={options['hostname']}")
        app.worker_main(argv)
