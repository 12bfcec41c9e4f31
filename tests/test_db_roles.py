"""The PostgreSQL roles: the migration owner (the DATABASE_URL user) does DDL; the projector's role writes rows
and offsets but no DDL (`allocator db grant-projector`); an auditor's role reads only (`grant-reader`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from cli.main import main
from projections import tables
from projections.database import engine_for
from projections.migrate import upgrade
from projections.roles import grant_reader
from tests.conftest import DbSchema

pytestmark = pytest.mark.postgres
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"

ROW = {
    "proposal_id": "p-1", "agent_id": "alpha", "strategy_tag": "arb", "market_id": "m-1", "side": "BUY",
    "price": 0.42, "expected_profit": 0.04, "confidence": 0.9, "requested_size": 1000.0, "min_size": 100.0,
    "execution_risk": 0.05, "urgency": 0.1, "correlation_key": "election", "created_at": 1_790_000_000_000,
    "log_topic": "allocator.proposals", "log_partition": 0, "log_offset": 7,
}  # fmt: skip
OFFSET = {"consumer": "projector", "topic": "allocator.proposals", "partition": 0, "next_offset": 8}
DDL = ("CREATE TABLE intruder (x int)", "DROP TABLE proposals", "ALTER TABLE proposals ADD COLUMN x int")


@contextmanager
def _login(db: DbSchema, role: str, password: str) -> Iterator[Engine]:
    url = make_url(db.url).set(username=role, password=password).render_as_string(hide_password=False)
    engine = engine_for(url, db.name)
    try:
        yield engine
    finally:
        engine.dispose()
        s, r = f'"{db.name}"', f'"{role}"'
        with db.engine.begin() as conn:
            for kind in ("TABLES", "SEQUENCES"):
                conn.execute(text(f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} REVOKE ALL ON {kind} FROM {r}"))
                conn.execute(text(f"REVOKE ALL ON ALL {kind} IN SCHEMA {s} FROM {r}"))
            conn.execute(text(f"REVOKE ALL ON SCHEMA {s} FROM {r}"))
            conn.execute(text(f'REVOKE ALL ON DATABASE "{make_url(db.url).database}" FROM {r}'))
            conn.execute(text(f"DROP ROLE {r}"))


def _refused(engine: Engine, statement: object) -> None:
    with pytest.raises(ProgrammingError, match=r"permission denied|must be owner"), engine.begin() as conn:
        conn.execute(text(statement) if isinstance(statement, str) else statement)  # type: ignore[call-overload]


def test_the_projector_role_writes_rows_and_offsets_but_no_ddl(
    db_schema: DbSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    upgrade(db_schema.url, schema=db_schema.name)
    role, password = f"projector_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}'x"
    monkeypatch.setenv("ALLOCATOR_DB_PASSWORD", password)
    assert main(["db", "grant-projector", role, "--database", db_schema.url, "--schema", db_schema.name]) == 0
    assert password not in capsys.readouterr().out
    with _login(db_schema, role, password) as projector:
        with projector.begin() as conn:
            conn.execute(insert(tables.proposals), [ROW])
            conn.execute(insert(tables.consumed_offsets), [OFFSET])
            conn.execute(update(tables.consumed_offsets).values(next_offset=9))
            conn.execute(update(tables.proposals).values(urgency=0.2))
        with projector.connect() as conn:
            assert conn.execute(select(tables.consumed_offsets.c.next_offset)).scalar_one() == 9
        for statement in DDL:
            _refused(projector, statement)
        # `project` runs as that role: it failed with "cannot migrate the projection database (permission denied
        # for database ...)" on a schema already at the newest revision (an outside probe)
        with db_schema.engine.begin() as conn:  # the rows above are no log's
            conn.execute(delete(tables.consumed_offsets))
            conn.execute(delete(tables.proposals))
        log = ["--log", str(tmp_path / "log.sqlite")]
        assert main(["init", *log]) == 0 and main(["propose", str(EXAMPLES), *log]) == 0
        url = make_url(db_schema.url).set(username=role, password=password).render_as_string(hide_password=False)
        capsys.readouterr()
        project = ["project", *log, "--database", url, "--schema", db_schema.name, "--once"]
        assert main(project) == 0, capsys.readouterr()
        with projector.connect() as conn:
            assert conn.execute(select(tables.proposals.c.proposal_id)).first() is not None


@pytest.mark.parametrize("command", ["grant-projector", "grant-reader"])
def test_granting_a_new_role_without_a_password_or_a_terminal_fails_clearly(
    command: str, db_schema: DbSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.delenv("ALLOCATOR_DB_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    role = f"role_{uuid.uuid4().hex[:8]}"
    assert main(["db", command, role, "--database", db_schema.url, "--schema", db_schema.name]) == 2
    assert "set ALLOCATOR_DB_PASSWORD" in capsys.readouterr().err


def test_grant_reader_takes_a_new_roles_password_from_the_environment_never_the_command_line(
    db_schema: DbSchema, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upgrade(db_schema.url, schema=db_schema.name)
    role, password = f"auditor_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    monkeypatch.setenv("ALLOCATOR_DB_PASSWORD", password)
    assert main(["db", "grant-reader", role, "--database", db_schema.url, "--schema", db_schema.name]) == 0
    assert password not in capsys.readouterr().out
    with _login(db_schema, role, password) as auditor, auditor.connect() as conn:
        assert conn.execute(text("select count(*) from proposals")).scalar_one() == 0
    with pytest.raises(SystemExit):
        main(["db", "grant-reader", role, "--password", password])


def test_the_auditor_role_selects_only(db_schema: DbSchema) -> None:
    upgrade(db_schema.url, schema=db_schema.name)
    with db_schema.engine.begin() as conn:
        conn.execute(insert(tables.proposals), [ROW])
    role, password = f"auditor_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    grant_reader(db_schema.engine, role, db_schema.name, password=password)
    with _login(db_schema, role, password) as auditor:
        with auditor.connect() as conn:
            assert conn.execute(select(tables.proposals.c.proposal_id)).scalars().all() == ["p-1"]
        _refused(auditor, insert(tables.consumed_offsets).values(**OFFSET))
        _refused(auditor, update(tables.proposals).values(urgency=0.2))
        _refused(auditor, tables.proposals.delete())
        for statement in DDL:
            _refused(auditor, statement)
