"""Inserts many rows into a projection table, keeping the first row of a repeated key: COPY on PostgreSQL.

An adapter (it touches the database), used by the projector inside its batch transaction. Every way in here
has the meaning of `INSERT ... ON CONFLICT DO NOTHING` executed row by row in the given order: a row whose key
(any unique constraint) is already in the table, or came earlier in the same call, is skipped.

PostgreSQL, measured on the replay benchmark: psycopg's pipelined executemany sends one INSERT per row and
spends most of the batch in Python; a binary COPY sends the rows as one stream. COPY has no ON CONFLICT, so:
1. straight into the table inside a savepoint (no repeat in the rows nor in the table: the usual case), and
2. if that meets a unique violation, back to the savepoint, then COPY into a temporary staging table and
   `INSERT ... SELECT ... ORDER BY <copy order> ON CONFLICT DO NOTHING` into the table.
A table with a server-generated key (dead_letters.id, from a sequence) always takes step 2: a failed COPY would
use up sequence values, and the ids would then differ from a live projection's.
Both steps run in the caller's transaction, so the rows and the projector's offsets still commit together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import BigInteger, Connection, Double, Integer, LargeBinary, String, Table, insert
from sqlalchemy.exc import DBAPIError

Row = tuple[Any, ...]


def written_columns(table: Table) -> tuple[str, ...]:
    """The columns the projector writes, in table order: all but a server-generated key."""
    generated = table.autoincrement_column
    return tuple(c.name for c in table.columns if c is not generated)


def quote(name: str) -> str:
    """A name of ours as an SQL identifier, always quoted: `offset`, `time` and `rank` are keywords."""
    if '"' in name:
        raise ValueError(f"unexpected quote in the SQL name {name!r}")
    return f'"{name}"'


def insert_ignoring_repeats(conn: Connection, table: Table, rows: Sequence[Row]) -> None:
    """Insert `rows` (tuples in `written_columns(table)` order); a row whose key is already there is skipped."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        _copy_ignoring_repeats(conn, table, rows)
    elif dialect == "sqlite":
        conn.exec_driver_sql(_sqlite_insert_sql(table), list(rows))
    else:
        columns = written_columns(table)
        conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])


# --- SQLite ---------------------------------------------------------------------------------------------


@cache
def _sqlite_insert_sql(table: Table) -> str:
    columns = written_columns(table)
    return (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT DO NOTHING"
    )


# --- PostgreSQL -----------------------------------------------------------------------------------------

# Binary COPY needs each column's PostgreSQL type; the projection tables use only these (subclasses first).
_PG_BINARY_TYPES: tuple[tuple[type[Any], str], ...] = (
    (BigInteger, "int8"),
    (Integer, "int4"),
    (Double, "float8"),
    (LargeBinary, "bytea"),
    (String, "text"),  # Text and VARCHAR(n) too: the same binary format
)


@dataclass(frozen=True)
class _CopyPlan:
    """The SQL one table's rows go in by on PostgreSQL."""

    types: list[str]  # each written column's PostgreSQL type, for binary COPY
    direct: str | None  # COPY straight into the table; None when a failed COPY would use up sequence values
    create_staging: str
    copy_staging: str
    merge_staging: str


@cache
def _pg_plan(table: Table) -> _CopyPlan:
    columns = written_columns(table)
    names = ", ".join(quote(c) for c in columns)
    types = []
    for name in columns:
        sa_type = table.c[name].type
        found = next((pg for cls, pg in _PG_BINARY_TYPES if isinstance(sa_type, cls)), None)
        if found is None:
            raise TypeError(f"{table.name}.{name}: no binary COPY type for {sa_type!r}")
        types.append(found)
    target = quote(table.name)  # unqualified: the connection's search_path names the projection schema
    staging = f"pg_temp.{quote('staging_' + table.name)}"
    return _CopyPlan(
        types=types,
        direct=f"COPY {target} ({names}) FROM STDIN (FORMAT BINARY)" if table.autoincrement_column is None else None,
        # Private to the session, emptied at commit; the identity column numbers the staged rows in COPY order,
        # so the INSERT keeps the first of a repeat as a row-by-row insert would.
        create_staging=(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS AS "
            f"SELECT {names} FROM {target} WITH NO DATA; "
            f"ALTER TABLE {staging} ADD COLUMN IF NOT EXISTS copy_order bigint GENERATED ALWAYS AS IDENTITY"
        ),
        copy_staging=f"COPY {staging} ({names}) FROM STDIN (FORMAT BINARY)",
        merge_staging=(
            f"INSERT INTO {target} ({names}) SELECT {names} FROM {staging} ORDER BY copy_order "
            f"ON CONFLICT DO NOTHING; TRUNCATE {staging}"
        ),
    )


def _copy_ignoring_repeats(conn: Connection, table: Table, rows: Sequence[Row]) -> None:
    import psycopg

    plan = _pg_plan(table)
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection), "the PostgreSQL dialect of the projections is psycopg 3"
    with _as_sqlalchemy_errors(conn, plan.direct or plan.copy_staging), driver.cursor() as cur:
        if plan.direct is not None:
            cur.execute("SAVEPOINT projector_copy")
            try:
                _copy(cur, plan.direct, plan.types, rows)
            except psycopg.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT projector_copy")
            else:
                cur.execute("RELEASE SAVEPOINT projector_copy")
                return
        cur.execute(plan.create_staging)
        _copy(cur, plan.copy_staging, plan.types, rows)
        cur.execute(plan.merge_staging)


def _copy(cur: Any, statement: str, types: list[str], rows: Sequence[Row]) -> None:
    with cur.copy(statement) as copy:
        copy.set_types(types)
        write = copy.write_row
        for row in rows:
            write(row)


@contextlib.contextmanager
def _as_sqlalchemy_errors(conn: Connection, statement: str) -> Iterator[None]:
    """Driver errors as SQLAlchemy's (what callers catch: OperationalError means retry); a lost connection is
    invalidated, so the pool replaces it."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        error: Any = exc  # SQLAlchemy types it as its own DBAPI protocol
        lost = conn.dialect.is_disconnect(error, conn.connection.dbapi_connection, None)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            statement, None, exc, psycopg.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc
