"""The projection schema: Alembic migrations on a real PostgreSQL (and SQLite), rows written and read back."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, insert, inspect, select, text

from projections import tables
from projections.migrate import upgrade, upgrade_connection
from tests.conftest import DbSchema, ProjectionDatabase


def _write_and_read(engine: Engine) -> None:
    row = {
        "proposal_id": "p-1", "agent_id": "alpha", "strategy_tag": "arb", "market_id": "m-1", "side": "BUY",
        "price": 0.42, "expected_profit": 0.04, "confidence": 0.9, "requested_size": 1000.0, "min_size": 100.0,
        "execution_risk": 0.05, "urgency": 0.1, "correlation_key": "election", "created_at": 1_790_000_000_000,
        "log_topic": "allocator.proposals", "log_partition": 0, "log_offset": 7,
    }  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(tables.proposals), [row])
        conn.execute(
            insert(tables.consumed_offsets),
            [{"consumer": "projector", "topic": "allocator.proposals", "partition": 0, "next_offset": 8}],
        )
        conn.execute(
            insert(tables.dead_letters),
            [{"topic": "allocator.proposals", "partition": 0, "offset": 3, "error": "bad", "payload": b"\xc3\x01\x00"}],
        )
    with engine.connect() as conn:
        assert dict(conn.execute(select(tables.proposals)).mappings().one()) == row
        assert conn.execute(select(tables.consumed_offsets.c.next_offset)).scalar_one() == 8
        assert conn.execute(select(tables.dead_letters.c.payload)).scalar_one() == b"\xc3\x01\x00"


def _no_drift(engine: Engine) -> None:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), tables.metadata)
    assert diffs == [], "projections/tables.py and migrations/ disagree: add a revision"


def test_migrate_then_write_and_read_rows(database: ProjectionDatabase) -> None:
    engine = database.migrate()
    names = set(inspect(engine).get_table_names(schema=database.schema))
    assert {t.name for t in tables.metadata.sorted_tables} | {"alembic_version"} == names
    _write_and_read(engine)
    _no_drift(engine)


def test_migration_is_idempotent(database: ProjectionDatabase) -> None:
    with database.engine.begin() as conn:
        upgrade_connection(conn, schema=database.schema)
        upgrade_connection(conn, schema=database.schema)  # already at head: nothing to do
        assert conn.execute(text("select version_num from alembic_version")).scalar_one() == "0008"


@pytest.mark.postgres
def test_a_migration_is_private_to_its_schema(db_schema: DbSchema) -> None:
    with db_schema.engine.begin() as conn:
        upgrade_connection(conn, schema=db_schema.name)
    public = create_engine(db_schema.url)
    try:
        assert "proposals" not in inspect(public).get_table_names(schema="public")
    finally:
        public.dispose()


@pytest.mark.postgres
def test_the_auditor_role_reads_and_cannot_write(db_schema: DbSchema) -> None:
    import uuid

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ProgrammingError

    from projections.database import engine_for
    from projections.roles import grant_reader

    upgrade(db_schema.url, schema=db_schema.name)
    _write_and_read(db_schema.engine)
    role = f"auditor_{uuid.uuid4().hex[:8]}"
    grant_reader(db_schema.engine, role, db_schema.name, password="read-only 'secret'")
    url = (
        make_url(db_schema.url).set(username=role, password="read-only 'secret'").render_as_string(hide_password=False)
    )
    auditor = engine_for(url, db_schema.name)
    try:
        with auditor.connect() as conn:
            assert conn.execute(select(tables.proposals.c.proposal_id)).scalars().all() == ["p-1"]
        with pytest.raises(ProgrammingError, match="permission denied"), auditor.begin() as conn:
            conn.execute(tables.proposals.delete())
    finally:
        auditor.dispose()
        with db_schema.engine.begin() as conn:
            s, r = f'"{db_schema.name}"', f'"{role}"'
            conn.execute(text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} REVOKE SELECT ON TABLES FROM {r}"))
            conn.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}"))
            conn.execute(text(f"REVOKE ALL ON SCHEMA {s} FROM {r}"))
            database = make_url(db_schema.url).database
            conn.execute(text(f'REVOKE ALL ON DATABASE "{database}" FROM {r}'))
            conn.execute(text(f"DROP ROLE {r}"))
