"""The labeling flow's SQL: every hand-written statement of the lease, the claim, the submit and
their scoping, each built together with its parameters, and the plumbing that runs them.

Why by hand: building a statement through the ORM costs about a millisecond and a half of CPU on
the project's 2-core machine, ten times what running it costs the database; the lease and the
submit ran 16 such statements per annotation. `leasing.next_task_for`,
`services.annotation_submit` and the selectors that scope them (`project_get`, `task_get`) run
the statements built here instead. Rows become model instances through the ORM's own converters
and `Model.from_db`, and inserts prepare their values with the fields' own methods (values those
would return unchanged are sent as they are), so callers get the same objects as from the ORM.
Statements go through Django's cursor wrapper: they are counted, logged and wrapped (errors are
`django.db` errors) like any other; the COPY of a bulk insert on PostgreSQL is wrapped, not
logged.

Each statement is a `Statement`: its text and its parameters, made by one function, so the two
cannot drift apart. Parameters are named (`%(now)s`; Django's SQLite cursor turns them into
`:now`), so a fragment embedded twice binds the same value twice, and a parameter missing from
the mapping is an error, never a value bound to the wrong place. Only the membership fragment
is positional: the ORM embeds it too (`RawSQL` in `selectors.projects_for`), and the ORM binds
positionally. A statement's text is built once per backend (and number of enabled kinds), its
parameters on every call.

On PostgreSQL the statements bind their parameters on the server, so that psycopg prepares each
of them after `DATABASE_PREPARE_THRESHOLD` runs on a connection and the database plans it once:
planning the claim of a lease cost PostgreSQL ~2 ms of CPU, running it ~0.5 ms. The ORM's own
statements keep Django's client-side binding, which never prepares.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import NamedTuple

from django.db import DEFAULT_DB_ALIAS, connections, models
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import Model

from annotation.models import (
    Assignment,
    Guideline,
    Membership,
    Project,
    Prompt,
    Response,
    Task,
)
from annotation.rules import COMPARED_KINDS


class Statement(NamedTuple):
    """SQL text and the parameters it binds: a mapping for named ones, a sequence otherwise."""

    sql: str
    params: Mapping[str, object] | Sequence[object] = ()


# --- Running statements --------------------------------------------------------------------

# `django.db.connection` is a proxy that looks the thread's connection up on every attribute
# access (asgiref Local: ~5 us each, dozens per statement); the functions here look it up once.


def _db():
    return connections[DEFAULT_DB_ALIAS]


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


def fetch(statement: Statement) -> list[tuple]:
    cursor = _cursor(_db())
    cursor.execute(*statement)
    return cursor.fetchall()


def execute(statement: Statement) -> None:
    """Run a write whose answer nobody reads."""
    _cursor(_db()).execute(*statement)


@cache
def _insert_statement(model: type[Model], vendor: str) -> tuple[str, list]:
    quote = _db().ops.quote_name
    fields = [f for f in model._meta.concrete_fields if f is not model._meta.pk]
    names = ", ".join(quote(f.column) for f in fields)
    # Prefixed, so that a condition's parameters (`now`, `task`, ...) never meet a column's.
    named = [(f"new_{f.column}", f) for f in fields]
    values = ", ".join(f"%({name})s" for name, _ in named)
    statement = (
        f"INSERT INTO {quote(model._meta.db_table)} ({names}) SELECT {values}"
        " {where} RETURNING " + quote(model._meta.pk.column)
    )
    return statement, named


def insert(obj: Model, *, where: Statement | None = None) -> bool:
    """INSERT `obj` as `save()` does for a new row (the same value preparation; no signals: the
    hot-path models have no receivers). With `where` (named parameters), the row is written only
    when that SQL condition holds, checked in the same statement. Sets the primary key; returns
    whether the row was written."""
    db = _db()
    statement, named = _insert_statement(type(obj), db.vendor)
    params = {name: f.get_db_prep_save(f.pre_save(obj, True), db) for name, f in named}
    if where is not None:
        params.update(where.params)
    cursor = _cursor(db)
    cursor.execute(statement.format(where=f"WHERE {where.sql}" if where else ""), params)
    rows = cursor.fetchall()
    if not rows:
        return False
    obj.pk = rows[0][0]
    obj._state.adding = False
    obj._state.db = db.alias
    return True


@cache
def _insert_many_statement(model: type[Model], vendor: str, rows: int) -> tuple[str, list]:
    quote = _db().ops.quote_name
    fields = [f for f in model._meta.concrete_fields if f is not model._meta.pk]
    names = ", ".join(quote(f.column) for f in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    statement = (
        f"INSERT INTO {quote(model._meta.db_table)} ({names}) VALUES {', '.join([row] * rows)}"
        f" RETURNING {quote(model._meta.pk.column)}"
    )
    return statement, fields


# Rows at which `insert_many` loads them with COPY on PostgreSQL: below it, one INSERT is one
# round trip where COPY takes two (the ids reserved, then the rows).
COPY_ROWS = 64

# Fields whose value goes to the database as it is when it has one of these types: what their
# `get_db_prep_save` returns for it (checked in tests/annotation/test_import_copy.py), without
# its half a dozen calls a value. Any other field or value takes the field's own method.
_AS_IS: dict[type, tuple[type, ...]] = {
    models.CharField: (str,),
    models.TextField: (str,),
    models.SlugField: (str,),
    models.BooleanField: (bool,),
    models.IntegerField: (int,),
    models.PositiveIntegerField: (int,),
    models.PositiveSmallIntegerField: (int,),
    models.SmallIntegerField: (int,),
    models.BigIntegerField: (int,),
    models.ForeignKey: (int,),
}
_INTEGERS = {models.IntegerField, models.PositiveIntegerField, models.PositiveSmallIntegerField,
             models.SmallIntegerField, models.BigIntegerField, models.ForeignKey}  # fmt: skip


@cache
def _preparers(model: type[Model], vendor: str, copy: bool) -> list[tuple]:
    """Per field of an insert: (attname, types sent as they are, is JSON, field). PostgreSQL's
    INSERT binds integers typed (`adapt_integerfield_value`); COPY reads them by the column's
    type, as SQLite does."""
    plan = []
    for f in model._meta.concrete_fields:
        if f is model._meta.pk:
            continue
        as_is: tuple[type, ...] = ()
        plain_pre_save = type(f).pre_save is models.Field.pre_save
        if plain_pre_save and not (vendor == "postgresql" and not copy and type(f) in _INTEGERS):
            as_is = _AS_IS.get(type(f), ())
            as_is += (type(None),) if as_is else ()  # NULL, as their get_db_prep_save sends it
            if isinstance(f, models.ForeignKey) and not isinstance(
                f.target_field, (models.AutoField, models.BigAutoField)
            ):
                as_is = ()
        json_field = plain_pre_save and type(f) is models.JSONField
        plan.append((f.attname, as_is, json_field, f))
    return plan


def _row_values(db, obj: Model, plan: list[tuple]) -> list:
    """The values `save()` would send for a new `obj` (its fields' `pre_save` and
    `get_db_prep_save`), sent as they are where that is what those return."""
    values = []
    state = obj.__dict__
    for attname, as_is, json_field, f in plan:
        value = state.get(attname, f)  # `f`: not loaded, the field's own path finds its value
        if type(value) in as_is:
            values.append(value)
        elif json_field and value is not f:
            values.append(None if value is None else db.ops.adapt_json_value(value, f.encoder))
        else:
            values.append(f.get_db_prep_save(f.pre_save(obj, True), db))
    return values


def insert_many(objs: Sequence[Model]) -> None:
    """INSERT new rows of one model as `bulk_create` does where the database returns the ids of
    a bulk insert (PostgreSQL, SQLite 3.35+): the same value preparation, the ids set, no
    signals. Without the ORM's statement building, which cost the importer more than the
    inserts themselves (a few milliseconds per statement of hundreds of rows, every value
    prepared through the compiler). On PostgreSQL, `COPY_ROWS` rows or more are loaded with COPY
    under ids reserved from the table's sequence first: a multi-row INSERT's thousands of
    placeholders are parsed again by psycopg for every statement (too long for its cache), which
    cost the importer a quarter of its time there."""
    if not objs:
        return
    db = _db()
    model = type(objs[0])
    if db.vendor == "postgresql" and len(objs) >= COPY_ROWS:
        _copy_in(db, model, objs)
        return
    plan = _preparers(model, db.vendor, False)
    fields = [f for *_, f in plan]
    size = max(1, db.ops.bulk_batch_size(fields, objs))
    cursor = _cursor(db)
    for start in range(0, len(objs), size):
        chunk = objs[start : start + size]
        statement, _ = _insert_many_statement(model, db.vendor, len(chunk))
        params = [value for obj in chunk for value in _row_values(db, obj, plan)]
        cursor.execute(statement, params)
        for obj, (pk,) in zip(chunk, cursor.fetchall(), strict=True):
            obj.pk = pk
            obj._state.adding = False
            obj._state.db = db.alias


def insert_rows(model: type[Model], columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    """INSERT rows of `model` given as tuples of database values for `columns` (ids, text,
    numbers: what the fields send as they are), the others at their database default; no ids
    read back. For the rows nobody needs as instances (an m2m link, an import record), whose
    `Model.__init__` cost more than their insert: COPY on PostgreSQL (`COPY_ROWS` rows or
    more), else one statement run for every row (`executemany`)."""
    if not rows:
        return
    db = _db()
    quote = db.ops.quote_name
    names = ", ".join(quote(column) for column in columns)
    table_name = quote(model._meta.db_table)
    cursor = _cursor(db)
    if db.vendor == "postgresql" and len(rows) >= COPY_ROWS:
        with (
            db.wrap_database_errors,
            cursor.cursor.copy(f"COPY {table_name} ({names}) FROM STDIN") as load,
        ):
            for row in rows:
                load.write_row(row)
        return
    values = ", ".join(["%s"] * len(columns))
    cursor.executemany(f"INSERT INTO {table_name} ({names}) VALUES ({values})", rows)


@cache
def _copy_statements(model: type[Model]) -> tuple[str, str]:
    quote = _db().ops.quote_name
    table_name, pk = model._meta.db_table, model._meta.pk.column
    names = ", ".join(quote(f.column) for f in model._meta.concrete_fields if f.column != pk)
    # nextval() in one statement: the ids are the sequence's, never another session's, and the
    # column's default never hands them out again.
    reserve = (
        f"SELECT nextval(pg_get_serial_sequence('{quote(table_name)}', '{pk}'))"
        " FROM generate_series(1, %s)"
    )
    copy = f"COPY {quote(table_name)} ({quote(pk)}, {names}) FROM STDIN"
    return reserve, copy


def _copy_in(db, model: type[Model], objs: Sequence[Model]) -> None:
    """insert_many on PostgreSQL by COPY: the ids reserved in one statement, then the rows with
    them. Constraints hold as for INSERT (checked per row; the foreign keys at commit, as
    Django declares them deferred); errors are Django's, as from its cursor."""
    reserve, copy = _copy_statements(model)
    cursor = _cursor(db)
    cursor.execute(reserve, [len(objs)])
    ids = sorted(pk for (pk,) in cursor.fetchall())  # in file order, as INSERT would number them
    plan = _preparers(model, db.vendor, True)
    with db.wrap_database_errors, cursor.cursor.copy(copy) as load:
        for pk, obj in zip(ids, objs, strict=True):
            load.write_row((pk, *_row_values(db, obj, plan)))
    for pk, obj in zip(ids, objs, strict=True):
        obj.pk = pk
        obj._state.adding = False
        obj._state.db = db.alias


# --- Rows as model instances ---------------------------------------------------------------


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


def project_rows_by_key(
    model: type[Model], *, project_id: int, field: str, keys: Sequence[str]
) -> list[Model]:
    """The rows of `model` in the project whose `field` is one of `keys`, `(project, field)`
    being unique (a prompt's content hash, an import record's key): the importer's lookups of
    what a chunk already has.

    On PostgreSQL one probe of that unique index per key, forced by the query's shape: a
    lateral subquery per key, kept from being flattened into a join (which the planner may turn
    back into a scan of the project) by its LIMIT 1, a no-op on a unique key. The ORM's
    `project_id = X AND field IN (...)` was planned as a scan of every row of the project,
    filtered: an import fills its project in one transaction, which no statistics see, so the
    planner takes the project for a few rows, and each chunk's lookup read every row the import
    had written before it (the cost of a 160,000-line file grew with its square). SQLite probes
    the unique index for the IN list unless asked to order the rows: with the model's ordering
    (`id`) it walked the `project_id` index instead, which is in id order, reading the whole
    project too; asked unordered here (the key is unique)."""
    if not keys:
        return []
    db = _db()
    if db.vendor != "postgresql":
        lookup = {"project_id": project_id, f"{field}__in": keys}
        return list(model._default_manager.filter(**lookup).order_by())
    column = db.ops.quote_name(model._meta.get_field(field).column)
    statement = Statement(
        f"SELECT {columns(model, 'r')} FROM unnest(%(keys)s::text[]) AS k(key)"
        f" CROSS JOIN LATERAL (SELECT * FROM {table(model)} AS t"
        f" WHERE t.project_id = %(project)s AND t.{column} = k.key LIMIT 1) AS r",
        {"keys": list(keys), "project": project_id},
    )
    return [instance(model, row) for row in fetch(statement)]


def datetime_param(value: datetime):
    """A datetime as a statement parameter, stored the way the ORM stores it (SQLite keeps naive
    UTC text, which compares correctly only against the same format)."""
    return _db().ops.adapt_datetimefield_value(value)


# --- Slots: the one definition of a live lease and of a taken slot -------------------------


def _live_params(now: datetime) -> dict:
    """The parameters of `_live_lease`."""
    return {"active": Assignment.State.ACTIVE, "now": datetime_param(now)}


def _slot_params(now: datetime) -> dict:
    """The parameters of `_holding_a_slot` and `_taken_slots`."""
    return {"submitted": Assignment.State.SUBMITTED, **_live_params(now)}


def _live_lease(alias: str) -> str:
    """SQL: the assignment `alias` is a live lease (active and not yet expired)."""
    return f"({alias}.state = %(active)s AND {alias}.expires_at > %(now)s)"


def _holding_a_slot(alias: str) -> str:
    """SQL: the assignment `alias` counts against its task's overlap: submitted, or a live lease.

    The one definition of a taken slot, used by the claim, the re-count that guards the insert,
    the late-submit check and the lease renewal.
    """
    return f"({alias}.state = %(submitted)s OR {_live_lease(alias)})"


def _taken_slots(task_id: str, *, except_id: str = "") -> str:
    """SQL: how many slots of task `task_id` (an SQL expression) are taken (by other assignments
    than `except_id`, when given)."""
    statement = (
        f"(SELECT COUNT(*) FROM {table(Assignment)} s"
        f" WHERE s.task_id = {task_id} AND {_holding_a_slot('s')}"
    )
    if except_id:
        statement += f" AND s.id <> {except_id}"
    return statement + ")"


# --- The lease -----------------------------------------------------------------------------


def labeler_lock(*, project: Project, labeler, count_leases: bool) -> Statement:
    """Lock the labeler's membership of `project` and read whether they are paused, and why
    (read by `labeler_locked`); with `count_leases`, how many leases they ever took there too
    (the gold draw's position in their stream).

    Run before the claim, it serializes one labeler's own leases (two tabs, two API clients),
    so the claim sees a lease they took a moment ago: "once per prompt and round" cannot be
    beaten by asking twice at once. Other labelers lock other rows and never wait on it."""
    return Statement(
        _labeler_lock_sql(_db().vendor, count_leases),
        {"project": project.pk, "labeler": labeler.pk},
    )


@cache
def _labeler_lock_sql(vendor: str, count_leases: bool) -> str:
    lock = " FOR UPDATE OF m" if _db().features.has_select_for_update_of else ""
    count = (
        f", (SELECT COUNT(*) FROM {table(Assignment)} n JOIN {table(Task)} nt"
        " ON nt.id = n.task_id WHERE n.labeler_id = %(labeler)s AND nt.project_id = %(project)s)"
        if count_leases
        else ", 0"
    )
    return (
        f"SELECT m.paused, m.paused_reason{count} FROM {table(Membership)} m"
        f" WHERE m.project_id = %(project)s AND m.user_id = %(labeler)s{lock}"
    )


def labeler_locked(rows: list[tuple]) -> tuple[bool, str, int]:
    """The row of `labeler_lock` as (paused, why, leases taken); not a member: not paused."""
    if not rows:
        return False, "", 0
    paused, reason, leases = rows[0]
    return bool(paused), reason, leases


def _judging_kinds() -> list[str]:
    """Kinds that judge responses: a labeler judges a prompt at most once per round across
    them."""
    return list(COMPARED_KINDS)


def claim(*, project: Project, labeler, now: datetime, gold: bool = False) -> Statement:
    """The labeler's live lease in `project` if they hold one, else the next task for them,
    locked; either read with its prompt and candidates, in one statement (read by `claimed`).

    Four queries, tried in order by COALESCE (each runs only when the ones before it found
    nothing): the live lease; started items (few: bounded by the live leases), the item that has
    taken most slots first; the first fresh item of the top priority; any fresh item by
    priority. "ORDER BY priority DESC, id" mixes directions, so no index walk can serve it and
    the database would sort every fresh item: pinning the top priority first (a one-row backward
    walk of the (project, status, started, priority, id) index) leaves an "ORDER BY id" that the
    same index serves directly. The last query only runs when every item of that priority is
    locked by someone else at this instant.

    With `gold` (the labeler's gold draw came up, `gold.gold_drawn`), a gold task they have not
    seen comes right after the live lease; gold tasks are never claimed otherwise, and take no
    slot (every labeler judges them, whatever `required` says). Every query keeps to the tasks
    the labeler may judge (`_eligible`).

    On PostgreSQL the claimed item is locked with `FOR UPDATE SKIP LOCKED`, so concurrent
    labelers never wait on each other or claim the same slot; on SQLite the IMMEDIATE
    transaction serializes writers.
    """
    kinds = project.task_kinds
    params = {
        "labeler": labeler.pk,
        "project": project.pk,
        "open": Task.Status.OPEN,
        # Bound, not written as literals: the statement and its plan stay the ones measured.
        "true": True,
        "false": False,
        **_slot_params(now),
    }
    for i, kind in enumerate(kinds):
        params[f"kind{i}"] = kind
    repeats = project.repeats_allowed
    if not repeats:
        for i, kind in enumerate(_judging_kinds()):
            params[f"judging{i}"] = kind
    return Statement(_claim_sql(_db().vendor, len(kinds), gold, repeats), params)


def _eligible(alias: str, *, repeats: bool) -> str:
    """SQL: the labeler may judge task `alias`: not a prompt they wrote, no candidate they
    wrote, and (unless the project allows repeats) no judging task of the same prompt and
    round that they judged or hold a live lease on, of whatever kind.

    Reached from the task's prompt (its few tasks, each checked through the unique (task,
    labeler) index), never from the labeler's whole history."""
    statement = (
        f" AND NOT EXISTS (SELECT 1 FROM {table(Prompt)} ep WHERE ep.id = {alias}.prompt_id"
        " AND ep.created_by_id = %(labeler)s)"
        f" AND NOT EXISTS (SELECT 1 FROM {table(Task.candidates.through)} ec"
        f" JOIN {table(Response)} er ON er.id = ec.response_id"
        f" WHERE ec.task_id = {alias}.id AND er.created_by_id = %(labeler)s)"
    )
    if not repeats:
        judging = ", ".join(f"%(judging{i})s" for i in range(len(_judging_kinds())))
        statement += (
            f" AND ({alias}.kind NOT IN ({judging}) OR NOT EXISTS (SELECT 1 FROM {table(Task)} et"
            f" JOIN {table(Assignment)} ea ON ea.task_id = et.id AND ea.labeler_id = %(labeler)s"
            f" WHERE et.prompt_id = {alias}.prompt_id AND et.round = {alias}.round"
            f" AND et.kind IN ({judging}) AND {_holding_a_slot('ea')}))"
        )
    return statement


def _claimable(alias: str, kinds: int, *, started: bool, repeats: bool, gold: bool = False) -> str:
    """SQL: task `alias` is open in the project, started or not as asked (gold: a gold task,
    started or not), never assigned to the labeler, of an enabled kind (`kinds` of them) and
    one the labeler may judge."""
    statement = f"{alias}.project_id = %(project)s AND {alias}.status = %(open)s"
    if gold:
        statement += f" AND {alias}.is_gold = %(true)s"
    else:
        statement += (
            f" AND {alias}.started = %({'true' if started else 'false'})s"
            f" AND {alias}.is_gold = %(false)s"
        )
    statement += (
        f" AND NOT EXISTS (SELECT 1 FROM {table(Assignment)} o"
        f" WHERE o.task_id = {alias}.id AND o.labeler_id = %(labeler)s)"
    )
    if kinds:
        statement += f" AND {alias}.kind IN ({', '.join(f'%(kind{i})s' for i in range(kinds))})"
    return statement + _eligible(alias, repeats=repeats)


@cache
def _claim_sql(vendor: str, kinds: int, gold: bool = False, repeats: bool = False) -> str:
    """The text of `claim`, built once per backend, number of enabled kinds, gold draw and
    repeat rule."""
    skip_locked = _db().features.has_select_for_update_skip_locked
    lock = " FOR UPDATE OF c SKIP LOCKED" if skip_locked else ""
    tasks, assignments = table(Task), table(Assignment)
    live, taken = _live_lease("l"), _taken_slots("c.id")
    started = _claimable("c", kinds, started=True, repeats=repeats)
    fresh = _claimable("c", kinds, started=False, repeats=repeats)
    top = _claimable("f", kinds, started=False, repeats=repeats)
    golden = ""
    if gold:
        # No lock: a gold task takes no slot, so two labelers may claim it at once.
        gold_task = _claimable("c", kinds, started=False, repeats=repeats, gold=True)
        golden = f" (SELECT c.id FROM {tasks} c WHERE {gold_task} ORDER BY c.id LIMIT 1),"
    choice = (
        f"COALESCE((SELECT l.task_id FROM {assignments} l JOIN {tasks} lt ON lt.id = l.task_id"
        f" WHERE l.labeler_id = %(labeler)s AND lt.project_id = %(project)s AND {live}"
        f" ORDER BY l.leased_at LIMIT 1),{golden}"
        f" (SELECT c.id FROM {tasks} c WHERE {started} AND {taken} < c.required"
        f" ORDER BY {taken} DESC, c.priority DESC, c.id LIMIT 1{lock}),"
        f" (SELECT c.id FROM {tasks} c WHERE {fresh} AND c.priority = (SELECT f.priority"
        f" FROM {tasks} f WHERE {top} ORDER BY f.priority DESC LIMIT 1)"
        f" ORDER BY c.id LIMIT 1{lock}),"
        f" (SELECT c.id FROM {tasks} c WHERE {fresh} ORDER BY c.priority DESC, c.id LIMIT 1{lock}))"
    )
    # The labeler's own assignment of the chosen task, if any, is the live lease: claimed tasks
    # exclude any the labeler was ever assigned.
    return (
        f"SELECT {columns(Task, 't')}, {columns(Prompt, 'p')},"
        f" {columns(Response, 'r')}, {columns(Assignment, 'a')}"
        f" FROM {tasks} t LEFT JOIN {table(Prompt)} p ON p.id = t.prompt_id"
        f" LEFT JOIN {table(Task.candidates.through)} tc ON tc.task_id = t.id"
        f" LEFT JOIN {table(Response)} r ON r.id = tc.response_id"
        f" LEFT JOIN {assignments} a ON a.task_id = t.id AND a.labeler_id = %(labeler)s"
        f" WHERE t.id = {choice} ORDER BY r.id"
    )


def claimed(rows: list[tuple]) -> tuple[Task, list[Response], Assignment | None] | None:
    """The rows of `claim` as (task with its prompt, candidates, the live lease or None), or
    None when no task is left for the labeler."""
    if not rows:
        return None
    prompt_at = width(Task)
    response_at = prompt_at + width(Prompt)
    assignment_at = response_at + width(Response)
    first = rows[0]
    task = instance(Task, first[:prompt_at])
    task.prompt = (
        instance(Prompt, first[prompt_at:response_at]) if task.prompt_id is not None else None
    )
    candidates = [
        instance(Response, row[response_at:assignment_at]) for row in rows if row[response_at]
    ]
    live = instance(Assignment, first[assignment_at:]) if first[assignment_at] else None
    return task, candidates, live


def slot_free(*, task: Task, now: datetime) -> Statement:
    """SQL condition: `task` still has a slot free. Guards the insert of a lease: counted again
    in the insert's own statement, since a lease committed by someone else after the claim's
    snapshot would not have been seen by the claim (READ COMMITTED: a fresh snapshot per
    statement)."""
    return Statement(
        _slot_free_sql(_db().vendor),
        {"task": task.pk, "required": task.required, **_slot_params(now)},
    )


@cache
def _slot_free_sql(vendor: str) -> str:
    return f"{_taken_slots('%(task)s')} < %(required)s"


def task_started(*, task: Task) -> Statement:
    """Mark `task` started, at its first lease: the claim finds the few started items without
    scanning the fresh ones."""
    return Statement(
        f"UPDATE {table(Task)} SET started = %(true)s WHERE id = %(task)s",
        {"true": True, "task": task.pk},
    )


def live_lease_of(*, project: Project, labeler, now: datetime) -> Statement:
    """The id of the labeler's live lease in `project`, if any (the earliest)."""
    return Statement(
        f"SELECT a.id FROM {table(Assignment)} a JOIN {table(Task)} t ON t.id = a.task_id"
        f" WHERE a.labeler_id = %(labeler)s AND t.project_id = %(project)s"
        f" AND {_live_lease('a')} ORDER BY a.leased_at LIMIT 1",
        {"labeler": labeler.pk, "project": project.pk, **_live_params(now)},
    )


def slots_taken_by_others(*, assignment: Assignment, now: datetime) -> Statement:
    """How many slots of the assignment's task the other assignments take."""
    return Statement(
        f"SELECT {_taken_slots('%(task)s', except_id='%(assignment)s')}",
        {"task": assignment.task_id, "assignment": assignment.pk, **_slot_params(now)},
    )


def still_eligible(*, task_id: int, project: Project, labeler, now: datetime) -> Statement:
    """One row when the labeler may still judge the task (`_eligible`, the claim's rule, as
    things stand at `now`); none otherwise. Asked by a late submit, whose expired lease no
    longer kept the labeler from leasing another task of the same prompt and round."""
    params = {"task": task_id, "labeler": labeler.pk, **_slot_params(now)}
    repeats = project.repeats_allowed
    if not repeats:
        for i, kind in enumerate(_judging_kinds()):
            params[f"judging{i}"] = kind
    return Statement(_still_eligible_sql(_db().vendor, repeats), params)


@cache
def _still_eligible_sql(vendor: str, repeats: bool) -> str:
    return f"SELECT 1 FROM {table(Task)} t WHERE t.id = %(task)s" + _eligible("t", repeats=repeats)


# --- The submit ----------------------------------------------------------------------------


def task_lock(*, task_id: int) -> Statement:
    """Lock the task row, reading with it the current guideline version and the candidates (for
    validation); read by `task_locked`. Only the task row is locked (`OF t`): locking its
    project too would serialize every submission of a project."""
    return Statement(_task_lock_sql(_db().vendor), {"task": task_id})


@cache
def _task_lock_sql(vendor: str) -> str:
    lock = " FOR UPDATE OF t" if _db().features.has_select_for_update_of else ""
    return (
        f"SELECT {columns(Task, 't')}, (SELECT g.version FROM {table(Guideline)} g"
        " WHERE g.project_id = t.project_id ORDER BY g.version DESC LIMIT 1), tc.response_id"
        f" FROM {table(Task)} t LEFT JOIN {table(Task.candidates.through)} tc"
        f" ON tc.task_id = t.id WHERE t.id = %(task)s{lock}"
    )


def task_locked(rows: list[tuple]) -> tuple[Task, int | None, list[int]]:
    """The rows of `task_lock` as (task, current guideline version, candidate ids)."""
    end = width(Task)
    task = instance(Task, rows[0][:end])
    return task, rows[0][end], [row[end + 1] for row in rows if row[end + 1] is not None]


def assignment_of(*, task_id: int, labeler) -> Statement:
    """The labeler's assignment of the task (at most one, ever), as `columns(Assignment)`."""
    return Statement(
        f"SELECT {columns(Assignment, 'a')} FROM {table(Assignment)} a"
        " WHERE a.task_id = %(task)s AND a.labeler_id = %(labeler)s",
        {"task": task_id, "labeler": labeler.pk},
    )


def assignment_submitted(*, assignment: Assignment, now: datetime) -> Statement:
    return Statement(
        f"UPDATE {table(Assignment)} SET state = %(submitted)s, finished_at = %(now)s"
        " WHERE id = %(assignment)s",
        {
            "submitted": Assignment.State.SUBMITTED,
            "now": datetime_param(now),
            "assignment": assignment.pk,
        },
    )


def task_counted(*, task: Task) -> Statement:
    """Count one more judgment of `task` and close the item when it was the last one needed, in
    one UPDATE; the right-hand side sees the row before the update, hence `required - 1`. A gold
    task never closes (every labeler judges it) and counts up to `required` only."""
    return Statement(
        f"UPDATE {table(Task)} SET done = CASE WHEN done < required THEN done + 1 ELSE done END,"
        " status = CASE WHEN is_gold = %(false)s AND done >= required - 1 THEN %(complete)s"
        " ELSE status END WHERE id = %(task)s",
        {"complete": Task.Status.COMPLETE, "task": task.pk, "false": False},
    )


# --- Scoping -------------------------------------------------------------------------------


def member_of(user, roles: Sequence[str] | None = None) -> Statement:
    """SQL: ids of the projects `user` belongs to (with one of `roles`, when given).

    The one definition of membership: `selectors.projects_for` filters with it through the ORM
    (`RawSQL`, hence positional parameters), and `project_row` and `task_row` embed it.
    """
    statement = f"SELECT m.project_id FROM {table(Membership)} m WHERE m.user_id = %s"
    params = [user.pk]
    if roles:
        statement += f" AND m.role IN ({', '.join(['%s'] * len(roles))})"
        params += list(roles)
    return Statement(statement, params)


def _row_within(
    model: type[Model], alias: str, project_column: str, where: str, key, within
) -> Statement:
    """The row of `model` matching `where` (one positional parameter, `key`), as
    `columns(model)`; when `within` (`member_of`) is given, only if it lies in those projects."""
    statement = f"SELECT {columns(model, alias)} FROM {table(model)} {alias} WHERE {where}"
    params = [key]
    if within is not None:
        statement += f" AND {alias}.{project_column} IN ({within.sql})"
        params += within.params
    return Statement(statement, params)


def project_row(*, pk: int | None = None, slug: str = "", within: Statement | None) -> Statement:
    """The project with this `pk` (else `slug`), among the projects `within` (None: any)."""
    if pk is not None:
        return _row_within(Project, "p", "id", "p.id = %s", pk, within)
    return _row_within(Project, "p", "id", "p.slug = %s", slug, within)


def task_row(*, pk: int, within: Statement | None) -> Statement:
    """The task with this `pk`, if it lies in the projects `within` (None: any)."""
    return _row_within(Task, "t", "project_id", "t.id = %s", pk, within)
