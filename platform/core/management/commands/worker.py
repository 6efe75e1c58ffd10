"""Start a Celery worker with platform/ on sys.path (manage.py puts it there).

The Celery app is the current one, made when Django loaded the settings (the project package
creates it), so this command needs no import of the project package."""

from __future__ import annotations

import os
import re
import sys

from django.core.management.base import BaseCommand, CommandError


def visible_gpus_set(spec: str) -> str:
    """Give this process (and the pool it forks) the GPUs `spec` names: `0`, `0,1` or GPU
    UUIDs, as CUDA_VISIBLE_DEVICES. It must happen before anything initialises CUDA, which
    reads the variable once; raises CommandError otherwise, or for a malformed spec."""
    items = [item.strip() for item in spec.split(",")]
    if not all(re.fullmatch(r"\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-fA-F-]+", i) for i in items):
        raise CommandError(
            f"--gpus: {spec!r} is not a GPU index or a comma-separated list of them (0 or 0,1)"
        )
    if len(set(items)) != len(items):
        raise CommandError(f"--gpus: {spec!r} names a GPU twice")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise CommandError("--gpus: CUDA is already initialised in this process; too late")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(items)
    return os.environ["CUDA_VISIBLE_DEVICES"]


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
        parser.add_argument(
            "--gpus",
            default=None,
            help="GPUs this worker's runs may use: an index (0) or a list (0,1) as nvidia-smi "
            "numbers them; sets CUDA_VISIBLE_DEVICES before torch is imported. Start one "
            "worker per GPU (-Q training -c 1 --gpus 0, then --gpus 1, ...); the default "
            "hostname is then gpu<list>@<host>. A run that does not ask for several processes "
            "trains on the first.",
        )

    def handle(self, *args, **options):
        # Before the Celery app imports anything: CUDA reads CUDA_VISIBLE_DEVICES once.
        if options["gpus"] is not None:
            gpus = visible_gpus_set(options["gpus"])
            if not options["hostname"]:
                options["hostname"] = f"gpu{gpus.replace(',', '-')}@%h"
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
