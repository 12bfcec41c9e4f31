"""Applies the Alembic migrations in `migrations/` to a database (an adapter: it touches the database)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection


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
    """Migrate the database at `url` (into `schema`, on PostgreSQL) up to `revision`."""
    command.upgrade(alembic_config(url, schema), revision)


def upgrade_connection(connection: Connection, schema: str | None = None, revision: str = "head") -> None:
    """Migrate through an open connection (the caller commits)."""
    config = alembic_config(schema=schema)
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
