"""Applies the Alembic migrations in `migrations/` to a database (an adapter: it touches the database)."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, event, make_url

SQLITE_MIGRATION_WAIT_S = 60.0
"""How long a migration of an SQLite file waits for another process's migration or write to end (a whole migration
from nothing takes ~0.2 s; a projector's batch about as long)."""


def alembic_config(url: str | None = None, schema: str | None = None) -> Config:
    """An Alembic configuration for the packaged migrations; no alembic.ini needed."""
    config = Config()
    # A package resource, resolved by Alembic: the revisions ship inside the installed `migrations` package.
    config.set_main_option("script_location", "migrations:")
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if schema is not None:
        config.attributes["schema"] = schema
    return config


def upgrade(url: str, schema: str | None = None, revision: str = "head") -> None:
    """Migrate the database at `url` (into `schema`, on PostgreSQL) up to `revision`.

    An SQLite file is migrated in one transaction that holds its write lock (`_upgrade_sqlite`): two processes
    migrating one new file at once (two `allocator project` started together) interleaved their CREATE TABLEs, and
    the later one failed half-way with "table consumed_offsets already exists"."""
    if make_url(url).get_backend_name() == "sqlite":
        _upgrade_sqlite(url, revision)
    else:
        command.upgrade(alembic_config(url, schema), revision)


def _upgrade_sqlite(url: str, revision: str) -> None:
    """Migrate an SQLite database inside BEGIN IMMEDIATE: a second migrator waits (up to `SQLITE_MIGRATION_WAIT_S`)
    for the first to commit, then finds the schema at its revision and does nothing.

    Python's sqlite3 opens a transaction before INSERT, UPDATE and DELETE only, so Alembic's CREATE TABLEs ran
    committed one by one; with the driver's own transactions off, SQLAlchemy's BEGIN holds them all. A database
    already at the revision is left unlocked: nothing to write, and a file only readable here stays usable."""
    target = known_revision(revision)
    if target is not None and current_revision(url) == target:
        return
    engine = create_engine(url, connect_args={"timeout": SQLITE_MIGRATION_WAIT_S})

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _write_lock(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with engine.begin() as connection:
            upgrade_connection(connection, revision=revision)
    finally:
        engine.dispose()


def newest_revision() -> str:
    """The packaged migrations' newest revision id."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships its revisions
        raise RuntimeError("no migrations packaged")
    return head


def known_revision(revision: str) -> str | None:
    """The full id of `revision` (an id, a unique prefix of one, or `head`), or None if there is no such one."""
    if revision == "head":
        return newest_revision()
    try:
        script = ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    except Exception:  # alembic raises several kinds for a bad or ambiguous id
        return None
    return None if script is None else str(script.revision)


def is_ancestor(older: str, newer: str) -> bool:
    """Whether revision `older` is `newer` or comes before it."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return any(s.revision == older for s in scripts.walk_revisions(base="base", head=newer))


def current_revision(url: str, schema: str | None = None) -> str | None:
    """The revision the database at `url` (its `schema` on PostgreSQL) is at; None before the first migration."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            options = {"version_table_schema": schema} if schema and connection.dialect.name == "postgresql" else {}
            return MigrationContext.configure(connection, opts=options).get_current_revision()
    finally:
        engine.dispose()


def upgrade_connection(connection: Connection, schema: str | None = None, revision: str = "head") -> None:
    """Migrate through an open connection (the caller commits)."""
    config = alembic_config(schema=schema)
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
