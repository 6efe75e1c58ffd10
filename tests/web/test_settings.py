"""Settings validation: production refuses to start with unsafe configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


PRINT_SETTINGS = (
    "import json; from django.conf import settings as s; print(json.dumps({"
    "'upload': s.DATA_UPLOAD_MAX_MEMORY_SIZE, 'token_cache': s.API_TOKEN_CACHE_SECONDS, "
    "'options': s.DATABASES['default'].get('OPTIONS', {})}))"
)


def _settings_with(**env: str) -> dict:
    result = manage("shell", "-c", PRINT_SETTINGS, DJANGO_DEBUG="1", **env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_it_reads_the_request_token_and_prepare_settings_from_the_environment():
    """README, Configuration: UPLOAD_MAX_BYTES, API_TOKEN_CACHE_SECONDS=0 ("read on every
    request") and DATABASE_PREPARE_THRESHOLD=0 ("turns it off": psycopg's None; its 0 would
    prepare every statement at once). No connection is made: only the settings are read.

    Kills mutations: platform/config/settings.py `prepare_threshold or None` ->
    `prepare_threshold`; `env_int("API_TOKEN_CACHE_SECONDS", 10, minimum=0)` -> `minimum=1`;
    `env_int("UPLOAD_MAX_BYTES", ...)` -> `env_int("IMPORT_MAX_BYTES", ...)`."""
    postgres = "postgres://rlhf@127.0.0.1:5432/rlhf"
    off = _settings_with(DATABASE_URL=postgres, DATABASE_PREPARE_THRESHOLD="0",
                         API_TOKEN_CACHE_SECONDS="0", UPLOAD_MAX_BYTES="4096")  # fmt: skip
    assert off["options"]["prepare_threshold"] is None
    assert off["token_cache"] == 0 and off["upload"] == 4096
    default = _settings_with(DATABASE_URL=postgres)
    assert default["options"]["prepare_threshold"] == 2
    assert default["token_cache"] == 10 and default["upload"] == 50 * 1024 * 1024
    assert (
        _settings_with(DATABASE_URL=postgres, DATABASE_PREPARE_THRESHOLD="5")["options"][
            "prepare_threshold"
        ]
        == 5
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DATABASE_PREPARE_THRESHOLD", "-1", "DATABASE_PREPARE_THRESHOLD=-1 is below the minimum"),
        ("DATABASE_PREPARE_THRESHOLD", "off", "DATABASE_PREPARE_THRESHOLD='off' is not a whole"),
        ("API_TOKEN_CACHE_SECONDS", "-5", "API_TOKEN_CACHE_SECONDS=-5 is below the minimum of 0"),
        ("UPLOAD_MAX_BYTES", "10", "UPLOAD_MAX_BYTES=10 is below the minimum of 1024"),
    ],
)
def test_it_names_a_bad_request_token_or_prepare_setting(name, value, message):
    """Kills mutation: platform/config/settings.py `env_int("DATABASE_PREPARE_THRESHOLD", 2,
    minimum=0)` -> `env_int("DATABASE_PREPARE_THRESHOLD", 2)`."""
    result = manage(
        "check",
        DJANGO_DEBUG="1",
        DATABASE_URL="postgres://rlhf@127.0.0.1:5432/rlhf",
        **{name: value},
    )
    assert result.returncode != 0
    assert message in result.stderr


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


def test_it_reads_the_local_settings_file_below_the_environment(tmp_path, monkeypatch):
    """`.env` (written by make) fills in what the environment does not set; the environment
    wins; quotes and `export` are read as a shell would."""
    from config.env import local_env_load

    path = tmp_path / ".env"
    path.write_text(
        "# written by make\n\nexport RLHF_T_A=1\nRLHF_T_B='two words'\nRLHF_T_C=from-file\n"
    )
    monkeypatch.delenv("DJANGO_DEBUG", raising=False)
    for name in ("RLHF_T_A", "RLHF_T_B"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RLHF_T_C", "from-environment")
    applied = local_env_load(path)
    assert applied == {"RLHF_T_A": "1", "RLHF_T_B": "two words"}
    assert os.environ["RLHF_T_B"] == "two words"
    assert os.environ["RLHF_T_C"] == "from-environment"
    # Production (DJANGO_DEBUG=0 in the environment) reads nothing from it.
    monkeypatch.delenv("RLHF_T_A")
    monkeypatch.setenv("DJANGO_DEBUG", "0")
    assert local_env_load(path) == {} and "RLHF_T_A" not in os.environ


def test_it_names_the_line_of_a_bad_local_settings_file(tmp_path, monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    from config.env import local_env_load

    path = tmp_path / ".env"
    path.write_text("DJANGO_DEBUG=1\nnot a setting\n")
    monkeypatch.delenv("DJANGO_DEBUG", raising=False)
    with pytest.raises(ImproperlyConfigured, match=r"\.env, line 2: expected NAME=value"):
        local_env_load(path)
