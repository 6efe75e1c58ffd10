"""Settings validation: production refuses to start with unsafe configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STRONG_KEY = "k3y-" + "Zq8vR2mN7xW4pL9sT1cY6hB3jF5dG0aE" * 2


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True
    )


def test_it_refuses_production_without_secret_key():
    result = manage("check", DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="rlhf.example.org")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


def test_it_refuses_a_weak_secret_key():
    result = manage(
        "check", DJANGO_DEBUG="0", DJANGO_SECRET_KEY="changeme", DJANGO_ALLOWED_HOSTS="x.org"
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is too weak" in result.stderr


def test_it_refuses_production_without_allowed_hosts():
    result = manage("check", DJANGO_DEBUG="0", DJANGO_SECRET_KEY=STRONG_KEY)
    assert result.returncode != 0
    assert "DJANGO_ALLOWED_HOSTS is not set" in result.stderr


def test_it_names_a_bad_boolean():
    result = manage("check", DJANGO_DEBUG="maybe")
    assert result.returncode != 0
    assert "DJANGO_DEBUG='maybe' is not a boolean" in result.stderr


def test_it_names_a_bad_database_url():
    result = manage("check", DJANGO_DEBUG="1", DATABASE_URL="mysql://x/y")
    assert result.returncode != 0
    assert "unsupported scheme 'mysql'" in result.stderr


def test_it_passes_the_deploy_check_with_production_settings():
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=STRONG_KEY,
        DJANGO_ALLOWED_HOSTS="rlhf.example.org",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_it_reads_postgres_urls():
    from config.env import database_from_url

    db = database_from_url("postgres://alice:s%40cret@db.internal:6543/rlhf")
    assert db == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "rlhf",
        "USER": "alice",
        "PASSWORD": "s@cret",
        "HOST": "db.internal",
        "PORT": "6543",
    }


def test_it_limits_failed_log_ins(client, make_user):
    from django.core.cache import cache

    cache.clear()
    make_user("alice")
    for _ in range(5):
        response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200
    locked = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice"})
    assert locked.status_code == 429
    assert b"Too many failed log-ins" in locked.content
    # Another account from the same address is not locked out by alice's failures.
    make_user("bob")
    assert (
        client.post("/accounts/login/", {"username": "bob", "password": "pw-bob"}).status_code
        == 302
    )
    cache.clear()
