"""Database engines for the projections: a URL, and on PostgreSQL an optional schema every connection uses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError

from eventlog.embedded import some_names, sqlite_tables
from projections.migrate import upgrade

DEFAULT_EMBEDDED_DATABASE = "sqlite:///allocator-projections.sqlite"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_identifier(kind: str, name: str) -> str:
    """A PostgreSQL name we put in SQL text ourselves (schemas, roles): lower-case, no quoting games.

    The whole name must match: a trailing newline or anything after the name is refused."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} must be {_IDENTIFIER.pattern} (the whole name)")
    return name


def check_schema(schema: str) -> str:
    return check_identifier("schema", schema)


def check_rebuildable_schema(schema: str) -> str:
    """A schema a replay may drop and recreate: never PostgreSQL's own (`public`, `pg_*`, `information_schema`)."""
    name = check_schema(schema)
    if name in ("public", "information_schema") or name.startswith("pg_"):
        raise ValueError(f"schema {name!r} is reserved by PostgreSQL; a replay drops its schema, so name another")
    return name


def sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL names (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def sqlite_memory(url: str) -> str | None:
    """Why an SQLite URL names no file (a phrase), or None (a file, or another database). Such a database lives in
    one connection and is gone when it closes: `project` and `replay` migrated one connection's and wrote through
    another (a traceback, "no such table"), and `db upgrade` said "at None; already there". An empty name is what
    `sqlite:///$VAR` becomes when VAR is unset."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database:
        return "names no file (an unset variable in sqlite:///$VAR?)"
    if parsed.database == ":memory:" or parsed.query.get("mode") == "memory":
        return "an in-memory database, gone when the command ends"
    return None


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def is_projection_file(path: Path) -> bool:
    """Whether an existing file is an SQLite database this project migrated (so a replay may replace it)."""
    names = sqlite_tables(path) if _sqlite_header(path) else None
    return names is not None and "alembic_version" in names and "decisions" in names


def not_a_projection(path: Path) -> str | None:
    """Why an existing file cannot hold a projection (a phrase), or None: an empty file, an empty SQLite database
    and one this project migrated can. Any other file is someone else's: projecting into it would add tables to
    it (an event log, say), or fail on it half-way. A database that cannot be read now (locked, busy) is not judged
    here: the migration says what is wrong with it."""
    try:
        with path.open("rb") as f:
            header = f.read(16)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not header:
        return None
    if header != SQLITE_HEADER:
        return "is not an SQLite database"
    names = sqlite_tables(path)
    if not names or "alembic_version" in names:
        return None
    return f"holds tables that are no projection's ({some_names(names)}: an event log?)"


def _sqlite_header(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == SQLITE_HEADER
    except OSError:
        return False


class DatabaseUrlError(ValueError):
    """A database URL this release cannot open: not a SQLAlchemy URL, or no driver installed for it."""


def check_database_url(url: str) -> None:
    """Raise DatabaseUrlError when `url` is not one an engine can be made for (nothing connects), or is an SQLite
    URL that names no file (`sqlite_memory`). The message shows the URL without its password, or not at all when it
    does not parse."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(
            "not a SQLAlchemy database URL (e.g. postgresql+psycopg://user@host/db, sqlite:///file.sqlite)"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    memory = sqlite_memory(url)
    if memory is not None:  # shown as typed (rendering encodes `:memory:`), unless it carries a password
        typed = url if parsed.password is None else shown
        raise DatabaseUrlError(f"{typed}: {memory}; a projection needs a file, e.g. sqlite:///projection.sqlite")
    try:
        create_engine(url).dispose()
    except (ArgumentError, ImportError) as exc:
        raise DatabaseUrlError(
            f"{shown}: this release cannot open it ({type(exc).__name__}: {exc}); it opens postgresql+psycopg and "
            "sqlite URLs"
        ) from None


def engine_for(url: str, schema: str | None = None) -> Engine:
    """An engine whose connections read and write `schema` (PostgreSQL); SQLite files have no schemas."""
    engine = create_engine(url, pool_pre_ping=True)
    if schema is None or engine.dialect.name != "postgresql":
        return engine
    name = check_schema(schema)

    @event.listens_for(engine, "connect")
    def _use_schema(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f'SET search_path TO "{name}"')
        cursor.close()
        dbapi_connection.commit()

    return engine


def fresh_schema(url: str, schema: str | None) -> Engine:
    """Drop and recreate `schema` (PostgreSQL) and migrate it to head: the target of a replay."""
    if schema is not None:
        admin = create_engine(url)
        try:
            if admin.dialect.name == "postgresql":
                name = check_rebuildable_schema(schema)
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        finally:
            admin.dispose()
    upgrade(url, schema=schema)
    return engine_for(url, schema)
