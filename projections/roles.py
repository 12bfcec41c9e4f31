"""The two database roles: the projector's writer, and a read-only role for auditors (PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import Engine, text

from projections.database import check_identifier


def _ident(kind: str, value: str) -> str:
    return f'"{check_identifier(kind, value)}"'


def grant_reader(engine: Engine, role: str, schema: str = "public", password: str | None = None) -> None:
    """Make `role` able to read every projection in `schema`, now and after later migrations, and nothing more.

    Creates the role (LOGIN) when `password` is given and it does not exist yet. Run as the writer (the role
    that owns the tables), so its future tables are covered by the default privileges.
    """
    if engine.dialect.name != "postgresql":
        raise ValueError("roles exist on PostgreSQL only; an SQLite file is read-only by file permissions")
    r, s = _ident("role", role), _ident("schema", schema)
    with engine.begin() as conn:
        exists = conn.execute(text("select 1 from pg_roles where rolname = :r"), {"r": role}).first() is not None
        if not exists:
            if password is None:
                raise ValueError(f"role {role!r} does not exist: pass a password to create it")
            # DDL takes no bind parameters: a standard SQL literal, quotes doubled (standard_conforming_strings).
            literal = "'" + password.replace("'", "''") + "'"
            conn.execute(text(f"CREATE ROLE {r} LOGIN PASSWORD {literal}"))
        conn.execute(text(f"GRANT CONNECT ON DATABASE {_ident('database', conn.engine.url.database or '')} TO {r}"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA {s} TO {r}"))
        conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}"))
        conn.execute(text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {r}"))


def grant_projector(engine: Engine, role: str, schema: str = "public", password: str | None = None) -> None:
    """Make `role` the projector's writer in `schema`: SELECT, INSERT, UPDATE and DELETE on every projection table
    (its offsets included) and the sequences, now and after later migrations; no CREATE, so no DDL (the migrations
    stay the owner's, the DATABASE_URL user's: `allocator db upgrade`).

    Creates the role (LOGIN) when `password` is given and it does not exist yet; run as the tables' owner."""
    if engine.dialect.name != "postgresql":
        raise ValueError("roles exist on PostgreSQL only; an SQLite file is written by whoever can write the file")
    r, s = _ident("role", role), _ident("schema", schema)
    with engine.begin() as conn:
        exists = conn.execute(text("select 1 from pg_roles where rolname = :r"), {"r": role}).first() is not None
        if not exists:
            if password is None:
                raise ValueError(f"role {role!r} does not exist: give a password to create it")
            literal = "'" + password.replace("'", "''") + "'"
            conn.execute(text(f"CREATE ROLE {r} LOGIN PASSWORD {literal}"))
        conn.execute(text(f"GRANT CONNECT ON DATABASE {_ident('database', conn.engine.url.database or '')} TO {r}"))
        conn.execute(text(f"GRANT USAGE ON SCHEMA {s} TO {r}"))
        conn.execute(text(f"REVOKE CREATE ON SCHEMA {s} FROM {r}"))
        rights = "SELECT, INSERT, UPDATE, DELETE"
        conn.execute(text(f"GRANT {rights} ON ALL TABLES IN SCHEMA {s} TO {r}"))
        conn.execute(text(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {s} TO {r}"))
        conn.execute(text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT {rights} ON TABLES TO {r}"))
        conn.execute(text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {r}"))
