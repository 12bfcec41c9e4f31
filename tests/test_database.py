"""The projection schema: Alembic migrations on a real PostgreSQL (and SQLite), rows written and read back."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, insert, inspect, select, text

from projections import tables
from projections.migrate import current_revision, newest_revision, upgrade, upgrade_connection
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
        assert conn.execute(text("select version_num from alembic_version")).scalar_one() == "0009"


def test_two_migrations_of_one_new_sqlite_file_at_once_both_end_at_head(tmp_path: Path) -> None:
    """An outside probe: two `allocator project` started at once on one new SQLite projection; the later one
    failed with "cannot migrate the projection database (table consumed_offsets already exists)", for each of
    Alembic's CREATE TABLEs was committed on its own. The race, made deterministic: the first migration stops
    after it created consumed_offsets until the second has started; the second waits for the file's write lock,
    then finds the schema at head."""
    url = f"sqlite:///{tmp_path / 'projection.sqlite'}"
    half_way, go_on, second_locking = threading.Event(), threading.Event(), threading.Event()
    errors: dict[str, BaseException] = {}

    def migrate(name: str) -> None:
        try:
            upgrade(url)
        except BaseException as exc:  # said by the assertion below
            errors[name] = exc

    first = threading.Thread(target=migrate, args=("first",))
    second = threading.Thread(target=migrate, args=("second",))

    def pause_the_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.current_thread() is first and statement.lstrip().startswith("CREATE TABLE consumed_offsets"):
            half_way.set()
            go_on.wait(30)

    def see_the_second_lock(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.current_thread() is second and statement == "BEGIN IMMEDIATE":
            second_locking.set()

    event.listen(Engine, "after_cursor_execute", pause_the_first)
    event.listen(Engine, "before_cursor_execute", see_the_second_lock)
    try:
        first.start()
        assert half_way.wait(30)
        second.start()
        # The second either asks for the write lock the first holds, or (as before) runs its migration now.
        while second.is_alive() and not second_locking.is_set():
            second.join(0.01)
        go_on.set()
        first.join(90)
        second.join(90)
    finally:
        go_on.set()
        event.remove(Engine, "after_cursor_execute", pause_the_first)
        event.remove(Engine, "before_cursor_execute", see_the_second_lock)
    assert errors == {}
    assert second_locking.is_set()
    assert current_revision(url) == newest_revision()


def test_an_sqlite_migration_that_fails_half_way_leaves_no_table(tmp_path: Path) -> None:
    """The whole migration is one SQLite transaction: a failure after some CREATE TABLEs leaves none of them (they
    used to stay, committed one by one, and the next migration failed on the first)."""
    url = f"sqlite:///{tmp_path / 'projection.sqlite'}"
    created: list[str] = []

    def fail_at_the_third(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith("CREATE TABLE"):
            created.append(statement)
            if len(created) == 3:
                raise RuntimeError("the disk went away")

    event.listen(Engine, "after_cursor_execute", fail_at_the_third)
    try:
        with pytest.raises(RuntimeError, match="the disk went away"):
            upgrade(url)
    finally:
        event.remove(Engine, "after_cursor_execute", fail_at_the_third)
    engine = create_engine(url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
    upgrade(url)  # and a second try migrates it
    assert current_revision(url) == newest_revision()


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


def test_0009_keeps_the_resolutions_projected_before_it_and_goes_back(database: ProjectionDatabase) -> None:
    """Migration 0009 gives resolutions a row per log position. A row projected before it has no position: it is
    kept (at partition -1) and still resolves its market, until a replay; the downgrade keeps one row a market."""
    from alembic import command

    from projections.migrate import alembic_config

    with database.engine.begin() as conn:
        upgrade_connection(conn, schema=database.schema, revision="0008")
        conn.execute(text("INSERT INTO resolutions (market_id, outcome, \"time\") VALUES ('m1', 'NO', 5), "
                          "('m2', 'YES', 6)"))  # fmt: skip
        upgrade_connection(conn, schema=database.schema)
        rows = sorted(tuple(r) for r in conn.execute(text(
            "SELECT log_topic, log_partition, log_offset, market_id, outcome, \"time\" FROM resolutions")))  # fmt: skip
        assert rows == [("", -1, -2, "m2", "YES", 6), ("", -1, -1, "m1", "NO", 5)]
        conn.execute(text("SELECT * FROM positions")).all()  # the views read the new table
        config = alembic_config(schema=database.schema)
        config.attributes["connection"] = conn
        command.downgrade(config, "0008")
        rows = sorted(tuple(r) for r in conn.execute(text('SELECT market_id, outcome, "time" FROM resolutions')))
        assert rows == [("m1", "NO", 5), ("m2", "YES", 6)]
