"""Typed readers for environment variables.

Each raises ImproperlyConfigured with the variable's name, so a bad deployment fails at start-up
with a message that says what to fix, not later with a confusing traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def local_env_load(path: Path) -> dict[str, str]:
    """Set the variables of a local settings file that the environment does not already set.

    The file is what the first `make run`, `make test` or `make setup` writes (`.env` at the
    repository root: DJANGO_DEBUG=1 and a generated DJANGO_SECRET_KEY), so that the README's
    `.venv/bin/python manage.py ...` commands run as written. It is a development file: a real
    environment variable always wins over it, and an environment that sets DJANGO_DEBUG to a
    false value (production) reads nothing from it, so production still refuses to start
    without its own DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS. Returns what it set.

    Lines are `NAME=value` (an `export ` prefix, blank lines and `#` comments allowed; a value
    in matching single or double quotes is taken inside them, as it is); anything else is
    refused naming the file and line.
    """
    debug = os.environ.get("DJANGO_DEBUG")
    if debug is not None and debug.strip().lower() in _FALSE:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise ImproperlyConfigured(
            f"{path}: cannot read the local settings file: {error}"
        ) from error
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name.isidentifier():
            raise ImproperlyConfigured(
                f"{path}, line {number}: expected NAME=value, got {line[:80]!r}. "
                "Fix the line or delete the file (make setup writes a new one)."
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[name] = value
    applied = {name: value for name, value in found.items() if name not in os.environ}
    os.environ.update(applied)
    return applied


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={raw!r} is not a boolean: use 1/0, true/false, yes/no, on/off."
    )


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def database_from_url(url: str, *, name: str = "DATABASE_URL") -> dict:
    """Django DATABASES entry from `sqlite:///path` or `postgres://user:pass@host:port/db`."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///rel/path is relative to the working directory, sqlite:////abs/path absolute.
        path = unquote(parts.netloc + parts.path)[1:]
        if not path:
            raise ImproperlyConfigured(
                f"{name}={url!r}: give a file, e.g. sqlite:///var/db.sqlite3"
            )
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": path}
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        db_name = unquote(parts.path.lstrip("/"))
        if not db_name:
            raise ImproperlyConfigured(
                f"{name}={url!r}: the database name is missing after the host."
            )
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": db_name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    raise ImproperlyConfigured(
        f"{name}={url!r}: unsupported scheme {parts.scheme!r}; use sqlite:/// or postgres://."
    )


def check_secret_key(key: str) -> str:
    """Refuse a missing or guessable SECRET_KEY (the same rule as Django's deploy check)."""
    if not key:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. In production set it to 50 or more random characters "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(64))'); "
            "for local development run `make setup` (it writes .env with DJANGO_DEBUG=1 and a "
            "key) or set DJANGO_DEBUG=1."
        )
    if len(key) < 50 or len(set(key)) < 5 or key.startswith("django-insecure-"):
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is too weak: use 50 or more random characters with at least "
            "5 distinct ones, not starting with 'django-insecure-'."
        )
    return key
