"""Alembic environment: where the projection schema is migrated (a URL, and a PostgreSQL schema if named)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine, text

from projections.database import check_schema
from projections.tables import metadata


def _option(name: str) -> str | None:
    # Precedence: a value set in code (allocator db upgrade, tests), then `-x name=...`, then the ini file.
    config = context.config
    value = config.attributes.get(name) or context.get_x_argument(as_dictionary=True).get(name)
    if value is None and name == "url":
        value = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    return None if value is None else str(value)


def _run(connection: Connection, schema: str | None) -> None:
    if schema is not None and connection.dialect.name == "postgresql":
        check_schema(schema)
        # Created only where it is missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
        # schema exists, which the projector's role (`allocator db grant-projector`, no DDL) does not have, so
        # `project` could not run as it at all (an outside probe).
        found = connection.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": schema}).first()
        if found is None:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        connection.execute(text(f'SET search_path TO "{schema}"'))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=schema if connection.dialect.name == "postgresql" else None,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    schema = _option("schema")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection, schema)
        return
    url = _option("url")
    if not url:
        raise SystemExit("no database: set DATABASE_URL or pass -x url=postgresql+psycopg://...")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn, schema)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database")
run_migrations_online()
