"""The README's Kafka walkthrough runs as written, on the secured broker and PostgreSQL.

The block that exports KAFKA_BOOTSTRAP_SERVERS is read from README.md and each of its `allocator` lines runs
through bash and the installed `allocator` entry point, unchanged: only the environment differs. The three
variables the README exports name the test's broker (its admin login) and a fresh database; HOME is a temporary
folder (`~/allocator-keys`); ALLOCATOR_TOPIC_PREFIX puts the book on topics of its own and ALLOCATOR_DB_PASSWORD
answers `db grant-reader`'s question. The working folder holds the repository's `examples/`. `serve` and
`project` run in the background until the test has seen what a user would (a decision, the halt, the
projection), then stop on SIGINT and SIGTERM with status 0.

The user names the README creates (alloc-main, alpha, alice, ...) are the broker's, not the book's, so one run at
a time holds them: a PostgreSQL advisory lock serialises runs on one set of services. Afterwards the test deletes
the ACLs it applied, locks the users out with random passwords (never deleting a SCRAM user: see
eventlog.kafka_scram.revoke_scram_user) and drops its database, its topics and the role it made.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from allocator.service.acl import acl_table
from eventlog.kafka_acl import PRIVATE_READER_GROUP_PREFIX, AclEntry
from eventlog.kafka_properties import CONFIG_FILE_ENV, client_config
from eventlog.kafka_scram import revoke_scram_user
from eventlog.port import Topics
from tests.readme import ROOT, Command, kafka_block

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

LONG_RUNNING = ("serve", "project")
README_LOCK = "capital-allocator: the README's Kafka walkthrough (its broker users)"


@dataclass
class Walkthrough:
    """What a user's shell would be: the environment, the working folder, the processes left running."""

    env: dict[str, str]
    cwd: Path
    database: Engine
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def run(self, command: Command) -> str:
        done = subprocess.run(["bash", "-c", command.line], env=self.env, cwd=self.cwd, capture_output=True,
                              text=True, timeout=180)  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"`{command.line}` exited {done.returncode}:\n{out}"
        return out

    def start(self, command: Command) -> None:
        log = self.cwd / f"{command.name}.out"
        with log.open("wb") as out:
            argv = ["bash", "-c", f"exec {command.line}"]  # exec: the signals reach allocator itself
            self.running[command.name] = subprocess.Popen(argv, env=self.env, cwd=self.cwd, stdout=out,
                                                          stderr=subprocess.STDOUT)  # fmt: skip
        self.logs[command.name] = log

    def output(self, name: str) -> str:
        return self.logs[name].read_text(encoding="utf-8", errors="replace")

    def cycles(self) -> list[tuple[int, int]]:
        """serve's cycle lines so far: (cycle, proposals decided)."""
        return [
            (int(m[1]), int(m[2])) for m in re.finditer(r"^cycle (\d+): .*?(\d+) decided", self.output("serve"), re.M)
        ]

    def wait_for(self, what: str, check: Callable[[], bool], timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            for name, proc in self.running.items():
                assert proc.poll() is None, f"{name} exited {proc.returncode} waiting for {what}:\n{self.output(name)}"
            assert time.monotonic() < deadline, f"no {what} in {timeout_s:g} s:\n" + "\n".join(
                f"--- {name}\n{self.output(name)[-3000:]}" for name in self.running
            )
            time.sleep(0.3)

    def projected(self, sql: str) -> int:
        try:
            with self.database.connect() as conn:
                return int(conn.execute(text(sql)).scalar_one())
        except Exception:
            return -1  # not migrated yet

    def stop(self, name: str, sig: signal.Signals) -> int:
        proc = self.running.pop(name)
        proc.send_signal(sig)
        return proc.wait(60)


@pytest.fixture
def readme_lock(database_url: str) -> Iterator[None]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        deadline = time.monotonic() + 900
        while not conn.execute(text("select pg_try_advisory_lock(hashtext(:k))"), {"k": README_LOCK}).scalar_one():
            assert time.monotonic() < deadline, "another run of the README walkthrough held the lock for 15 min"
            time.sleep(1.0)
        try:
            yield
        finally:
            conn.execute(text("select pg_advisory_unlock(hashtext(:k))"), {"k": README_LOCK})
    engine.dispose()


@pytest.fixture
def reader_role(database_url: str) -> Iterator[str]:
    """The role `db grant-reader` makes, dropped afterwards unless it was there before (after the test's database,
    where its rights are: `fresh_database` depends on this fixture, so it is dropped first)."""
    [role] = [c.argv[2] for c in kafka_block().commands if c.name == "db grant-reader"]
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    existed = _role_exists(engine, role)
    yield role
    if not existed:
        with engine.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    engine.dispose()


@pytest.fixture
def fresh_database(database_url: str, reader_role: str) -> Iterator[str]:
    """A database of its own: the README's projection goes to `public`, its replay to `replay_check`."""
    name = f"readme_{uuid.uuid4().hex[:10]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _delete_acls(bootstrap: str, admin: dict[str, str], entries: list[AclEntry]) -> None:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    filters = [
        AclBindingFilter(ResourceType[e.resource_type], e.name, ResourcePatternType[e.pattern], f"User:{e.principal}",
                         "*", AclOperation[e.operation], AclPermissionType.ALLOW)
        for e in entries
    ]  # fmt: skip
    client = AdminClient(client_config(bootstrap, admin))  # held until every answer is in
    for future in client.delete_acls(filters).values() if filters else ():
        future.result(timeout=30)


def _principals(commands: tuple[Command, ...]) -> dict[str, list[str]]:
    """The principals by role that the block's `acl apply` names."""
    [apply] = [c for c in commands if c.name == "acl apply"]
    out: dict[str, list[str]] = {}
    args = list(apply.argv)
    for i, arg in enumerate(args[:-1]):
        role = arg.removeprefix("--")
        if role in ("agent", "executor", "market", "operator", "allocator", "projector", "auditor"):
            out.setdefault(role, []).append(args[i + 1])
    return out


def test_the_readme_kafka_walkthrough_runs_as_written(
    kafka_bootstrap: str,
    kafka_admin_properties: dict[str, str],
    kafka_prefix: str,
    readme_lock: None,
    reader_role: str,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    block = kafka_block()
    # The test sets exactly what the README tells the user to set.
    assert set(block.exports) == {"KAFKA_BOOTSTRAP_SERVERS", CONFIG_FILE_ENV, "DATABASE_URL"}
    names = [c.name for c in block.commands]
    for needed in ("init", "acl user", "acl apply", "serve", "propose", "project", "control", "status", "audit"):
        assert needed in names, f"the README's Kafka block has no `allocator {needed}`"
    assert "--partitions" in next(c for c in block.commands if c.name == "init").argv
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    (cwd / "examples").symlink_to(ROOT / "examples")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ALLOCATOR_", "KAFKA_"))}
    env.pop("DATABASE_URL", None)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # the installed entry point
        HOME=str(home),
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KAFKA_CONFIG_FILE=os.environ[CONFIG_FILE_ENV],
        DATABASE_URL=fresh_database,
        ALLOCATOR_TOPIC_PREFIX=kafka_prefix,
        ALLOCATOR_DB_PASSWORD=secrets.token_hex(16),
        PYTHONUNBUFFERED="1",
    )
    database = create_engine(fresh_database)
    shell = Walkthrough(env, cwd, database)
    principals = _principals(block.commands)
    users = sorted({name for names in principals.values() for name in names})
    engine = create_engine(fresh_database)
    auditor_before = _role_exists(engine, reader_role)
    engine.dispose()
    decisions = "select count(*) from decisions"
    proposals = len(json.loads((ROOT / "examples" / "proposals.json").read_text(encoding="utf-8")))
    try:
        for command in block.commands:
            if command.name in LONG_RUNNING:
                shell.start(command)
                if command.name == "serve":
                    shell.wait_for(
                        "serve's start", lambda: "allocator serve: signing decisions" in shell.output("serve")
                    )
                continue
            if command.name == "status":  # what status shows is the projection's: wait until it has the halt
                shell.wait_for("the halt in the projection", lambda: shell.projected(
                    "select count(*) from governor_events where new_state = 'PAUSED'") >= 1)  # fmt: skip
                shell.wait_for("every decision projected", lambda: shell.projected(decisions) >= len(shell.cycles()))
            out = shell.run(command)
            if command.name == "propose":  # serve decides them
                shell.wait_for("every proposal decided", lambda: sum(n for _, n in shell.cycles()) >= proposals)
            elif command.name == "control":
                shell.wait_for("the halt's decision", lambda: "governor PAUSED" in shell.output("serve"))
            elif command.name == "status":
                assert "governor PAUSED" in out and "alice: venue B misbehaving" in out, out
                assert "kill switch at 12%" in out, out  # examples/book.json's, read from the log
            elif command.name == "replay":  # its progress reaches the end of a transactional log
                assert "100% of the log" in out and "replayed " in out, out
            elif command.name == "audit":
                report = json.loads((cwd / "audit.json").read_text(encoding="utf-8"))
                verdicts = [f["verdict"] for f in report["findings"]]
                assert verdicts and set(verdicts) == {"MATCH"}, report
            elif command.name == "db grant-reader" and not auditor_before:  # it reads with its new password
                reader = make_url(fresh_database).set(username=reader_role, password=env["ALLOCATOR_DB_PASSWORD"])
                readonly = create_engine(reader)
                try:
                    with readonly.connect() as conn:
                        assert conn.execute(text(decisions)).scalar_one() == len(shell.cycles())
                finally:
                    readonly.dispose()
        assert not (set(LONG_RUNNING) - set(shell.running)), "serve and project run in the background"
        published = len(shell.cycles())
        assert shell.stop("serve", signal.SIGINT) == 0, shell.output("serve")
        decisions = "1 decision" if published == 1 else f"{published:,} decisions"
        assert f"allocator serve: stopped after {decisions} (cycle {published})" in shell.output("serve")
        assert shell.stop("project", signal.SIGTERM) == 0, shell.output("project")
        for name in ("serve", "project"):
            assert "Traceback" not in shell.output(name)
        # Each principal ran as itself: the allocator, the projector, the agent, the operator, the auditor.
        assert "client properties alloc-main.properties" in shell.output("serve")
        assert "client properties proj-1.properties" in shell.output("project")
        for name in users:  # their passwords were written to their files only (mode 600)
            assert (cwd / f"{name}.properties").stat().st_mode & 0o777 == 0o600
    finally:
        with ExitStack() as cleanup:  # every step runs, whichever fails
            for proc in shell.running.values():
                cleanup.callback(proc.wait, 30)
                cleanup.callback(proc.kill)
            cleanup.callback(database.dispose)
            mine = [e for e in acl_table(Topics(kafka_prefix), "main", principals)
                    if e.name != PRIVATE_READER_GROUP_PREFIX]  # fmt: skip
            cleanup.callback(_delete_acls, kafka_bootstrap, kafka_admin_properties, mine)
            for name in users:
                cleanup.callback(revoke_scram_user, kafka_bootstrap, kafka_admin_properties, name)


def _role_exists(engine: Engine, role: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("select count(*) from pg_roles where rolname = :r"), {"r": role}).scalar_one())
