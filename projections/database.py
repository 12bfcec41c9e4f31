"""Database engines for the projections: a URL, and on PostgreSQL an optional schema every connection uses."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from projections.migrate import upgrade

DEFAULT_EMBEDDED_DATABASE = "sqlite:///allocator-projections.sqlite"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_identifier(kind: str, name: str) -> str:
    """A PostgreSQL name we put in SQL text ourselves (schemas, roles): lower-case, no quoting games."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{kind} name {name!r} must match {_IDENTIFIER.pattern}")
    return name


def check_schema(schema: str) -> str:
    return check_identifier("schema", schema)


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
                name = check_schema(schema)
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        finally:
            admin.dispose()
    upgrade(url, schema=schema)
    return engine_for(url, schema)
