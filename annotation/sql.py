"""Hand-written statements for the labeling hot paths, on both backends.

Building a statement through the ORM costs about a millisecond and a half of CPU on the project's
2-core machine, ten times what running it costs the database; the lease and the submit ran 16
such statements per annotation. `services.next_task_for`, `services.annotation_submit` and the
selectors that scope them write their statements here instead. Rows become model instances
through the ORM's own converters, and inserts prepare their values with the fields' own
methods, so callers get the same objects as from the ORM. Statements go through Django's cursor:
they are counted, logged and wrapped (errors are `django.db` errors) like any other.

On PostgreSQL they bind their parameters on the server, so that psycopg prepares each of them
after `DATABASE_PREPARE_THRESHOLD` runs on a connection and the database plans it once: planning
the claim of a lease cost PostgreSQL ~2 ms of CPU, running it ~0.5 ms. The ORM's own statements
keep Django's client-side binding, which never prepares.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import Model

# `django.db.connection` is a proxy that looks the thread's connection up on every attribute
# access (asgiref Local: ~5 us each, dozens per statement); the functions here look it up once.


def _db():
    return connections[DEFAULT_DB_ALIAS]


@cache
def _table(model: type[Model], vendor: str) -> str:
    return _db().ops.quote_name(model._meta.db_table)


def table(model: type[Model]) -> str:
    return _table(model, _db().vendor)


@cache
def _columns(model: type[Model], alias: str, vendor: str) -> str:
    quote = _db().ops.quote_name
    return ", ".join(f"{alias}.{quote(f.column)}" for f in model._meta.concrete_fields)


def columns(model: type[Model], alias: str) -> str:
    """Every column of `model`, in the order `instance` expects them."""
    return _columns(model, alias, _db().vendor)


def width(model: type[Model]) -> int:
    return len(model._meta.concrete_fields)


@cache
def _converters(model: type[Model], vendor: str) -> list[tuple[int, object, list]]:
    db = _db()
    table_name = model._meta.db_table
    out = []
    for i, field in enumerate(model._meta.concrete_fields):
        col = field.get_col(table_name)
        functions = db.ops.get_db_converters(col) + col.get_db_converters(db)
        if functions:
            out.append((i, col, functions))
    return out


def instance(model: type[Model], values: Sequence):
    """A model instance from a row of `columns(model, ...)`, converted as the ORM converts it."""
    db = _db()
    values = list(values)
    for i, col, functions in _converters(model, db.vendor):
        for function in functions:
            values[i] = function(values[i], col, db)
    return model.from_db(db.alias, None, values)


class _StatementLoggingCursor(CursorDebugWrapper):
    """Django's query-logging cursor, logging the statement as written. Django's own reads the
    statement back from psycopg's record of the last client-bound query, which a server-binding
    cursor does not keep."""

    def execute(self, sql, params=None):
        with self.debug_sql(sql, params):
            return CursorWrapper.execute(self, sql, params)


# One psycopg cursor per thread, reused while its connection lives.
_server_binding = threading.local()


def _cursor(db) -> CursorWrapper:
    """Django's cursor; on PostgreSQL over a server-binding psycopg cursor (see above), with what
    `connection.cursor()` does around it: the health check, the thread check and query logging.
    The psycopg cursor is made once per connection and reused (a fresh one costs ~10 us more
    per statement)."""
    if db.vendor != "postgresql":
        return db.cursor()
    import psycopg

    db.close_if_health_check_failed()
    db.ensure_connection()
    raw = db.connection
    cursor = getattr(_server_binding, "cursor", None)
    if cursor is None or cursor.connection is not raw or cursor.closed:
        cursor = _server_binding.cursor = psycopg.Cursor(raw)
    db.validate_thread_sharing()
    return _StatementLoggingCursor(cursor, db) if db.queries_logged else db.make_cursor(cursor)


def fetch(statement: str, params: Sequence = ()) -> list[tuple]:
    cursor = _cursor(_db())
    cursor.execute(statement, params)
    return cursor.fetchall()


def execute(statement: str, params: Sequence = ()) -> None:
    """Run a write whose answer nobody reads."""
    _cursor(_db()).execute(statement, params)


@cache
def _insert_statement(model: type[Model], vendor: str) -> tuple[str, list]:
    quote = _db().ops.quote_name
    fields = [f for f in model._meta.concrete_fields if f is not model._meta.pk]
    names = ", ".join(quote(f.column) for f in fields)
    values = ", ".join(["%s"] * len(fields))
    statement = (
        f"INSERT INTO {quote(model._meta.db_table)} ({names}) SELECT {values}"
        " {where} RETURNING " + quote(model._meta.pk.column)
    )
    return statement, fields


def insert(obj: Model, *, where: str = "", params: Sequence = ()) -> bool:
    """INSERT `obj` as `save()` does for a new row (the same value preparation; no signals: the
    hot-path models have no receivers). With `where`, the row is written only when that SQL
    condition holds, checked in the same statement. Sets the primary key; returns whether the row
    was written."""
    db = _db()
    statement, fields = _insert_statement(type(obj), db.vendor)
    values = [f.get_db_prep_save(f.pre_save(obj, True), db) for f in fields]
    cursor = _cursor(db)
    cursor.execute(statement.format(where=f"WHERE {where}" if where else ""), [*values, *params])
    rows = cursor.fetchall()
    if not rows:
        return False
    obj.pk = rows[0][0]
    obj._state.adding = False
    obj._state.db = db.alias
    return True


def datetime_param(value):
    """A datetime as a statement parameter, stored the way the ORM stores it (SQLite keeps naive
    UTC text, which compares correctly only against the same format)."""
    return _db().ops.adapt_datetimefield_value(value)


def in_list(values: Sequence) -> str:
    return "(" + ", ".join(["%s"] * len(values)) + ")"
