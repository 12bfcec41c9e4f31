"""Fixtures for the real services: Kafka and PostgreSQL from the environment, testcontainers, or a clear skip.

Where the services come from, in order:
1. `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` (what `make test` sets after `infra/services.sh up`), with
   `KAFKA_CONFIG_FILE` naming the client properties (SASL_SSL login, CA) of the secured broker: every Kafka
   client of the tests takes its settings from there (`client_config`);
2. testcontainers, when a Docker engine answers;
3. neither: the tests that need them skip with a message saying how to start them — unless
   `REQUIRE_SERVICES=1` (set by `make test` and CI), where a missing service is a failure, never a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine, create_engine, text

from eventlog.kafka_properties import CONFIG_FILE_ENV, client_config, client_properties_from_env
from eventlog.port import EventLog, Topics
from projections.database import engine_for, fresh_schema
from projections.migrate import upgrade

if TYPE_CHECKING:
    from allocator.service.loop import AllocatorService
    from schemas.events import Decision

HOW_TO_START = (
    "start the services with `infra/services.sh up` and export what `infra/services.sh env` prints "
    "(or run `make test`, which does both), or install a Docker engine for testcontainers"
)


def _services_required() -> bool:
    return os.environ.get("REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def _missing(what: str, why: str) -> None:
    message = f"{what} is not available ({why}); {HOW_TO_START}"
    if _services_required():
        pytest.fail(f"REQUIRE_SERVICES is set and {message}", pytrace=False)
    pytest.skip(message)


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def _containers() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def kafka_bootstrap(_containers: ExitStack) -> str:
    """Bootstrap servers of a real Apache Kafka broker that answers."""
    from confluent_kafka.admin import AdminClient

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        if not _docker_available():
            _missing("Kafka", "KAFKA_BOOTSTRAP_SERVERS is unset and no Docker engine answers")
        from testcontainers.kafka import KafkaContainer

        container = _containers.enter_context(KafkaContainer().with_kraft())
        bootstrap = str(container.get_bootstrap_server())
    errors: list[str] = []
    config: dict[str, Any] = {**client_config(bootstrap), "error_cb": lambda err: errors.append(str(err))}
    admin = AdminClient(config)
    try:
        admin.list_topics(timeout=15)
    except Exception as exc:
        admin.poll(0)  # serves error_cb, where a refused login (wrong KAFKA_CONFIG_FILE?) is reported
        # A configured broker that does not answer is a broken setup, not a reason to skip.
        why = f"; last client error: {errors[-1]}" if errors else ""
        pytest.fail(f"Kafka at {bootstrap} does not answer: {exc}{why}", pytrace=False)
    return bootstrap


@pytest.fixture(scope="session")
def kafka_admin_properties(kafka_bootstrap: str) -> dict[str, str]:
    """The admin's client properties on the secured broker (SASL_SSL, SCRAM-SHA-512): a super user."""
    properties = client_properties_from_env()
    if properties.get("security.protocol", "").upper() != "SASL_SSL" or "sasl.username" not in properties:
        _missing("A secured Kafka broker (SASL_SSL)", f"{CONFIG_FILE_ENV} names no SASL_SSL login")
    return properties


@pytest.fixture
def make_scram_user(
    kafka_bootstrap: str, kafka_admin_properties: dict[str, str]
) -> Iterator[Callable[[str], dict[str, str]]]:
    """Creates SCRAM users private to this test (no ACLs) and returns their client properties; revokes them after."""
    from eventlog.kafka_scram import new_password, revoke_scram_user, set_scram_password, user_client_properties

    created: list[str] = []

    def make(role: str) -> dict[str, str]:
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        password = new_password()
        set_scram_password(kafka_bootstrap, kafka_admin_properties, name, password)
        created.append(name)
        return user_client_properties(kafka_admin_properties, name, password)

    yield make
    for name in created:
        # Revoked, not deleted: a deletion can wipe every SCRAM user at the broker's next restart (see
        # revoke_scram_user).
        revoke_scram_user(kafka_bootstrap, kafka_admin_properties, name)


@pytest.fixture(scope="session")
def database_url(_containers: ExitStack) -> str:
    """SQLAlchemy URL (psycopg 3 driver) of a real PostgreSQL database that answers."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        if not _docker_available():
            _missing("PostgreSQL", "DATABASE_URL is unset and no Docker engine answers")
        from testcontainers.postgres import PostgresContainer

        container = _containers.enter_context(PostgresContainer("postgres:16", driver="psycopg"))
        url = str(container.get_connection_url())
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {engine.url.render_as_string()} does not answer: {exc}", pytrace=False)
    finally:
        engine.dispose()
    return url


def _test_slug(request: pytest.FixtureRequest) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:30]
    return f"{slug}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Creates topics private to this test (unique names) and deletes them afterwards."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient(client_config(kafka_bootstrap))
    created: list[str] = []

    def make(base: str = "t", partitions: int = 1) -> str:
        name = f"test.{_test_slug(request)}.{base}"
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        for future in admin.delete_topics(created, operation_timeout=30).values():
            future.result(timeout=60)


@pytest.fixture
def kafka_prefix(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A topic prefix private to this test (a book of its own); every topic under it is deleted afterwards."""
    from confluent_kafka.admin import AdminClient

    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    admin = AdminClient(client_config(kafka_bootstrap))
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{prefix}.")]
    if mine:
        for future in admin.delete_topics(mine, operation_timeout=30).values():
            future.result(timeout=60)


@dataclass(frozen=True)
class DbSchema:
    """A PostgreSQL schema private to one test, and an engine whose connections use it."""

    name: str
    engine: Engine
    url: str


@pytest.fixture
def db_schema(database_url: str, request: pytest.FixtureRequest) -> Iterator[DbSchema]:
    """A fresh schema for this test (dropped afterwards), so tests never see each other's rows."""
    name = f"t_{_test_slug(request)}"
    # pre_ping: a test may restart the server, which kills pooled connections
    admin = create_engine(database_url, pool_pre_ping=True)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    engine = engine_for(database_url, name)  # the projections' own engine: same search path, pre-ping

    try:
        yield DbSchema(name=name, engine=engine, url=database_url)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


@dataclass
class ProjectionDatabase:
    """One kind of projection database for one test: its main database, empty, and fresh ones on request.

    SQLite: files in the test's directory. PostgreSQL: schemas private to the test, dropped afterwards.
    """

    kind: str
    url: str
    schema: str | None
    engine: Engine
    _place: Callable[[str], tuple[str, str | None]]
    _opened: list[Engine] = field(default_factory=list)
    _schemas: list[str] = field(default_factory=list)

    def migrate(self) -> Engine:
        """The main database migrated to head, as `allocator db upgrade` leaves it."""
        upgrade(self.url, schema=self.schema)
        return self.engine

    def fresh(self, label: str) -> Engine:
        """Another database of the same kind, made as `allocator replay` makes its target (`fresh_schema`)."""
        url, schema = self._place(label)
        engine = fresh_schema(url, schema)
        self._opened.append(engine)
        if schema is not None:
            self._schemas.append(schema)
        return engine


@pytest.fixture(
    params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgres", marks=pytest.mark.postgres)]
)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProjectionDatabase]:
    """The projection database, once on SQLite and once on PostgreSQL: a test using it is a contract of both."""
    if request.param == "sqlite":
        folder = tmp_path / "databases"
        folder.mkdir()

        def sqlite_place(label: str) -> tuple[str, str | None]:
            return f"sqlite:///{folder / label}.sqlite", None

        url, _ = sqlite_place("main")
        found = ProjectionDatabase("sqlite", url, None, engine_for(url), sqlite_place)
    else:
        base: DbSchema = request.getfixturevalue("db_schema")

        def postgres_place(label: str) -> tuple[str, str | None]:
            return base.url, f"{base.name}_{label}"

        found = ProjectionDatabase("postgresql", base.url, base.name, base.engine, postgres_place)
    try:
        yield found
    finally:
        for engine in found._opened:
            engine.dispose()
        if found.kind == "sqlite":
            found.engine.dispose()
        elif found._schemas:
            with found.engine.begin() as conn:
                for name in found._schemas:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


Open = Callable[..., EventLog]
"""Opens a book's log: `open_log(group=None)`."""


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def log_kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Open, Topics]]:
    """How to open a book's log (group optional) and the book's topics: a fresh file, or a fresh prefix on the
    broker."""
    if request.param == "embedded":
        from eventlog.embedded import EmbeddedEventLog

        path = tmp_path / "log.sqlite"
        yield (lambda group=None: EmbeddedEventLog(path, group)), Topics("live")
        return
    from eventlog.kafka import KafkaEventLog

    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    prefix: str = request.getfixturevalue("kafka_prefix")
    yield (lambda group=None: KafkaEventLog(bootstrap, group)), Topics(prefix)


def cycle(svc: AllocatorService, records: int) -> Decision:
    """Poll until exactly `records` input records are buffered, then decide and publish them."""
    deadline = time.monotonic() + 60
    while len(svc.buffer) < records:
        assert time.monotonic() < deadline, f"{len(svc.buffer)} of {records} records in 60 s"
        svc.poll(0.2)
    svc.poll(0.2)
    assert len(svc.buffer) == records
    return svc.cycle().decision
