"""A Django database connection written back as a DATABASE_URL (the form settings read), for a
process started from this one (a demo worker, a test's worker or server) that must see its rows."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from django.db import connection


def database_url(alias_connection=connection) -> str:
    db = alias_connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve().as_posix()}"
    auth = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = f"{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}"
    return f"postgres://{auth}@{host}/{db['NAME']}"
