from __future__ import annotations

from django.core.management.base import BaseCommand

from annotation.demo import DEMO_USERS, demo_password, demo_seed


class Command(BaseCommand):
    help = "Create the demo accounts and demo project (idempotent) and print how to log in."

    def handle(self, *args, **options):
        result = demo_seed()
        project = result["project"]
        self.stdout.write(f"Demo project: {project.name} ({project.tasks.count()} tasks)")
        self.stdout.write("Demo accounts (username / password / role):")
        for username, role, _, _ in DEMO_USERS:
            self.stdout.write(f"  {username:<10} {demo_password(username):<22} {role}")
