"""A worker started by the demo or a test is told this process's database as a DATABASE_URL; the
settings must read it back as the same database, whatever the password holds."""

from __future__ import annotations

from types import SimpleNamespace

from config.env import database_from_url
from core.databases import database_url


def test_it_writes_a_postgres_connection_that_settings_read_back_the_same():
    db = {"ENGINE": "django.db.backends.postgresql", "NAME": "rlhf", "USER": "me@corp",
          "PASSWORD": "p:a/s@s#w?rd", "HOST": "db.internal", "PORT": "6543"}  # fmt: skip
    url = database_url(SimpleNamespace(settings_dict=db))

    back = database_from_url(url)
    assert {k: str(back[k]) for k in ("NAME", "USER", "PASSWORD", "HOST", "PORT")} == {
        k: db[k] for k in ("NAME", "USER", "PASSWORD", "HOST", "PORT")
    }


def test_it_writes_a_sqlite_file_that_settings_read_back_the_same(tmp_path):
    db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "a b" / "db.sqlite3")}
    url = database_url(SimpleNamespace(settings_dict=db))

    assert database_from_url(url)["NAME"] == db["NAME"]
