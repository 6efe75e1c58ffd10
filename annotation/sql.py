"""Hand-written statements for the labeling hot paths, on both backends.

Building a statement through the ORM costs about a millisecond and a half of CPU on the project's
2-core machine, ten times what running it costs the database; the lease and the submit ran 16
such statements per annotation. `services.next_task_for`, `services.annotation_submit` and the
selectors that scope them write their statements here instead. Rows become model instances
through the ORM's own converters, and inserts prepare their values with the fields' own
methods, so callers get the same objects as from the ORM. Statements go through Django's cursor:
they are counted, logged and wrapped (errors are `django.db` errors) like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from django.db import connection
from django.db.models import Model


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


@cache
def _columns(model: type[Model], alias: str, vendor: str) -> str:
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(f.column)}" for f in model._meta.concrete_fields)


def columns(model: type[Model], alias: str) -> str:
    """Every column of `model`, in the order `instance` expects them."""
    return _columns(model, alias, connection.vendor)


def width(model: type[Model]) -> int:
    return len(model._meta.concrete_fields)


@cache
def _converters(model: type[Model], vendor: str) -> list[tuple[int, object, list]]:
    table_name = model._meta.db_table
    out = []
    for i, field in enumerate(model._meta.concrete_fields):
        col = field.get_col(table_name)
        functions = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if functions:
            out.append((i, col, functions))
    return out


def instance(model: type[Model], values: Sequence):
    """A model instance from a row of `columns(model, ...)`, converted as the ORM converts it."""
    values = list(values)
    for i, col, functions in _converters(model, connection.vendor):
        for function in functions:
            values[i] = function(values[i], col, connection)
    return model.from_db(connection.alias, None, values)


def fetch(statement: str, params: Sequence = ()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall()


def execute(statement: str, params: Sequence = ()) -> int:
    """Run a write; returns the number of rows it touched."""
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.rowcount


@cache
def _insert_statement(model: type[Model], vendor: str) -> tuple[str, list]:
    quote = connection.ops.quote_name
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
    statement, fields = _insert_statement(type(obj), connection.vendor)
    values = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    rows = fetch(statement.format(where=f"WHERE {where}" if where else ""), [*values, *params])
    if not rows:
        return False
    obj.pk = rows[0][0]
    obj._state.adding = False
    obj._state.db = connection.alias
    return True


def datetime_param(value):
    """A datetime as a statement parameter, stored the way the ORM stores it (SQLite keeps naive
    UTC text, which compares correctly only against the same format)."""
    return connection.ops.adapt_datetimefield_value(value)


def in_list(values: Sequence) -> str:
    return "(" + ", ".join(["%s"] * len(values)) + ")"
