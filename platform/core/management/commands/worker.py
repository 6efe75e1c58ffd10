"""Start a Celery worker with platform/ on sys.path (manage.py puts it there).

The Celery app is the current one, made when Django loaded the settings (the project package
creates it), so this command needs no import of the project package."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Start a Celery worker (default and training queues unless --queues is given)."

    def add_arguments(self, parser):
        parser.add_argument("--queues", "-Q", default="default,training")
        parser.add_argument("--concurrency", "-c", type=int, default=1)
        parser.add_argument("--loglevel", "-l", default="INFO")
        parser.add_argument("--hostname", "-n", default=None)
        parser.add_argument("--pool", "-P", default="prefork")
        parser.add_argument(
            "--torch-threads",
            type=int,
            default=None,
            help="CPU threads torch may use per task (default: TRAINING_TORCH_THREADS, or "
            "torch's own, one per core); 1 or 2 on a machine shared with the database.",
        )

    def handle(self, *args, **options):
        from celery import current_app
        from django.conf import settings

        if options["torch_threads"] is not None:
            if options["torch_threads"] < 0:
                raise CommandError("--torch-threads: give 0 (torch's default) or more.")
            settings.TRAINING_TORCH_THREADS = options["torch_threads"]  # the pool forks from here

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
        current_app.worker_main(argv)
