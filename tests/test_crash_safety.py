"""Crash safety on the real broker and database: SIGKILLed services, a fenced zombie, a restarted PostgreSQL.

These run `allocator serve` and `allocator project` as real processes against Kafka and PostgreSQL, kill them
with SIGKILL at seeded random moments, and then check what a user would: every proposal decided exactly once,
no decision published twice, capital never over-committed, the audit clean, the projection equal to a replay.
The book's topics are made by `allocator init --partitions N`, once with 1 and once with 3 input partitions:
proposals, fills and marks are keyed by market, so they spread over the partitions, and serve reads whatever
count the topics have.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from allocator.service.audit import audit_log
from allocator.service.sequencer import read_decisions
from benchmarks.instances import live_proposal
from book.config import AllocatorConfig
from eventlog.kafka import KafkaEventLog
from eventlog.kafka_properties import client_config
from eventlog.port import Topics
from projections import tables
from projections.database import engine_for, fresh_schema
from projections.projector import Projector
from schemas.codec import SingleObjectCodec
from schemas.events import AllocationStatus, Decision, Fill, FillStatus, PnlMark, Proposal, Side
from tests.conftest import DbSchema
from tests.projection_compare import differences, dump

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
codec = SingleObjectCodec()
CONFIG = {"scenario_count": 300, "cycle_interval_s": 0.2, "max_pending": 300, "fill_timeout_s": 5.0}
FINAL = {AllocationStatus.FUNDED, AllocationStatus.CUT, AllocationStatus.REJECTED, AllocationStatus.NETTED,
         AllocationStatus.EXPIRED}  # fmt: skip


@dataclass
class Process:
    """A service run as a real process; its output goes to a file the test prints on failure."""

    args: list[str]
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", *self.args], stdout=out,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.exits.append(self.proc.wait(30))

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.exits.append(code)
        return code


@pytest.fixture
def prefix(kafka_bootstrap: str) -> Iterator[str]:
    name = f"crash{uuid.uuid4().hex[:10]}"
    yield name
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(kafka_bootstrap))
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(name + ".")]
    if mine:
        for future in admin.delete_topics(mine, operation_timeout=30).values():
            future.result(timeout=60)


def _env(kafka_bootstrap: str) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PYTHONUNBUFFERED": "1"}


def _init(prefix: str, partitions: int, env: dict[str, str]) -> None:
    """The book's topics as a user makes them: `allocator init --partitions N` (inputs N, outputs 1)."""
    argv = [sys.executable, "-m", "cli.main", "init", "--topic-prefix", prefix, "--partitions", str(partitions)]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


PARTITIONS = [pytest.param(1, id="1-partition"), pytest.param(3, id="3-partitions")]


def _proposal(i: int, now_ms: int, rng: random.Random) -> Proposal:
    # a 2 s lifetime: deferred proposals expire soon, so every one reaches a final status
    return live_proposal(f"p{i:05d}", now_ms, rng, urgency=0.5, strategy_tag="crash-test")


def _decisions(kafka_bootstrap: str, topics: Topics) -> list[tuple[Any, Decision]]:
    with KafkaEventLog(kafka_bootstrap) as reader:
        return read_decisions(reader, codec, topics)


def _final_status(decisions: list[Decision]) -> dict[str, list[AllocationStatus]]:
    finals: dict[str, list[AllocationStatus]] = {}
    for d in decisions:
        for a in d.allocations:
            if a.status in FINAL:
                finals.setdefault(a.proposal_id, []).append(a.status)
    return finals


def _wait_until_projected(kafka_bootstrap: str, db_schema: DbSchema, topics: Topics, timeout_s: float = 90) -> None:
    """Until the projector's stored offsets reach the end of every topic."""
    with KafkaEventLog(kafka_bootstrap) as log:
        ends = {(tp.topic, tp.partition): end for tp, end in log.end_offsets([*topics.inputs, *topics.outputs]).items()}
    t = tables.consumed_offsets
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db_schema.engine.connect() as conn:
            stored = {(r.topic, r.partition): r.next_offset for r in conn.execute(select(t))}
        # the last record of a topic may be followed by a transaction marker: within one offset is caught up
        if all(stored.get(key, 0) >= end - 1 for key, end in ends.items() if end > 0):
            time.sleep(1.0)
            return
        time.sleep(0.5)
    raise AssertionError(f"the projector did not catch up: stored {stored}, ends {ends}")


@pytest.mark.parametrize("partitions", PARTITIONS)
def test_sigkilled_services_lose_nothing_and_repeat_nothing(
    kafka_bootstrap: str, db_schema: DbSchema, prefix: str, tmp_path: Path, partitions: int
) -> None:
    rng = random.Random(20261125)
    topics = Topics(prefix)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(CONFIG))
    env = _env(kafka_bootstrap)
    _init(prefix, partitions, env)
    serve = Process(["serve", "--book", "crash", "--topic-prefix", prefix, "--config", str(config_path)],
                    tmp_path / "serve.log", env)  # fmt: skip
    project = Process(["project", "--topic-prefix", prefix, "--database", db_schema.url, "--schema", db_schema.name],
                      tmp_path / "project.log", env)  # fmt: skip
    total, chunk = 2_000, 40
    kill_serve_after = set(rng.sample(range(1, total // chunk), 7))
    kill_project_after = set(rng.sample(range(1, total // chunk), 4))
    try:
        serve.start()
        project.start()
        filled: set[tuple[str, str]] = set()
        seen_decisions = 0
        with KafkaEventLog(kafka_bootstrap) as agents, KafkaEventLog(kafka_bootstrap) as executor_view:
            executor_view.assign([topics.decisions])
            sent = 0
            deadline = time.monotonic() + 240
            next_check = 0.0
            while time.monotonic() < deadline:
                now = int(time.time() * 1000)
                if sent < total:
                    for _ in range(chunk):
                        p = _proposal(sent, now, rng)
                        agents.produce(topics.proposals, codec.encode(p), key=p.market_id.encode())
                        sent += 1
                # marks keep the log's time moving, so deferred proposals expire even after the last one
                for m in range(0, 40, 8):
                    agents.produce(topics.pnl, codec.encode(PnlMark(f"m{m}", round(rng.uniform(0.3, 0.7), 3), now)),
                                   key=f"m{m}".encode())  # fmt: skip
                # a toy executor: fill what was funded (one in ten fails)
                for record in executor_view.poll(max_records=1_000, timeout_s=0.3):
                    assert record.value is not None
                    d = codec.decode(record.value)
                    assert isinstance(d, Decision)
                    seen_decisions += 1
                    for a in d.allocations:
                        if a.size > 0 and (d.decision_id, a.proposal_id) not in filled:
                            filled.add((d.decision_id, a.proposal_id))
                            failed = rng.random() < 0.1
                            fill = Fill(f"f-{d.decision_id}-{a.proposal_id}", d.decision_id, a.proposal_id,
                                        a.market_id, a.side or Side.BUY, a.size, 0.0 if failed else a.size, 0.5,
                                        0.0, FillStatus.FAILED if failed else FillStatus.FILLED, None, now)  # fmt: skip
                            agents.produce(topics.fills, codec.encode(fill), key=a.market_id.encode())
                agents.flush()
                done_chunks = sent // chunk
                if done_chunks in kill_serve_after:
                    kill_serve_after.discard(done_chunks)
                    time.sleep(rng.uniform(0.0, 0.6))  # a random moment: mid-cycle, mid-transaction or idle
                    serve.kill()
                    serve.start()
                if done_chunks in kill_project_after:
                    kill_project_after.discard(done_chunks)
                    time.sleep(rng.uniform(0.0, 0.3))
                    project.kill()
                    project.start()
                if sent >= total and not kill_serve_after and time.monotonic() >= next_check:
                    next_check = time.monotonic() + 2.0
                    finals = _final_status([d for _, d in _decisions(kafka_bootstrap, topics)])
                    if len(finals) >= total:
                        break
                time.sleep(0.05)
        assert serve.stop() == 0
        _wait_until_projected(kafka_bootstrap, db_schema, topics)
        assert project.stop() == 0
    except BaseException:
        for running in (serve, project):
            if running.proc is not None and running.proc.poll() is None:
                running.proc.kill()
        print(serve.log_path.read_text()[-3_000:], project.log_path.read_text()[-3_000:], sep="\n---\n")
        raise

    assert serve.starts >= 6 and project.starts >= 3  # at least 5 SIGKILLs of serve happened
    with KafkaEventLog(kafka_bootstrap) as log:
        ends = log.end_offsets(topics.inputs)
    for name in (topics.proposals, topics.fills, topics.pnl):  # every partition of each keyed input was written
        assert sorted(tp.partition for tp, end in ends.items() if tp.topic == name and end > 0) == list(
            range(partitions)
        )
    decisions = [d for _, d in _decisions(kafka_bootstrap, topics)]
    ids = Counter(d.decision_id for d in decisions)
    assert all(n == 1 for n in ids.values()), "a decision was published twice"
    assert [d.cycle for d in decisions] == list(range(1, len(decisions) + 1))
    finals = _final_status(decisions)
    assert sorted(finals) == [f"p{i:05d}" for i in range(total)], "a proposal was lost"
    assert all(len(statuses) == 1 for statuses in finals.values()), "a proposal was decided twice"
    for d in decisions:
        assert sum(a.size for a in d.allocations) <= max(d.available, 0.0) + 1e-6, f"{d.decision_id} over-committed"

    with KafkaEventLog(kafka_bootstrap) as reader:
        report = audit_log(reader, codec, topics, AllocatorConfig.from_mapping(CONFIG))
    assert report.mismatches == [], report.mismatches[:3]

    live = engine_for(db_schema.url, db_schema.name)
    replay_schema = db_schema.name + "_replay"
    replayed = fresh_schema(db_schema.url, replay_schema)
    try:
        with KafkaEventLog(kafka_bootstrap) as log:
            projector = Projector(log, replayed, codec, [*topics.inputs, *topics.outputs], say=lambda _: None)
            projector.start()
            projector.catch_up(log.end_offsets([*topics.inputs, *topics.outputs]))
        assert differences(dump(live), dump(replayed)) == []
    finally:
        replayed.dispose()
        live.dispose()
        with db_schema.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{replay_schema}" CASCADE'))
    print(
        f"crash test, {partitions} input partition(s): {total} proposals, {len(decisions)} decisions, serve killed "
        f"{serve.starts - 1} times, projector killed {project.starts - 1} times, {len(filled)} fills, "
        f"audit {len(report.findings)} decisions"
    )


@pytest.mark.parametrize("partitions", PARTITIONS)
def test_a_second_serve_for_the_same_book_fences_the_first(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, partitions: int
) -> None:
    topics = Topics(prefix)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(CONFIG))
    env = _env(kafka_bootstrap)
    _init(prefix, partitions, env)
    args = ["serve", "--book", "fenced", "--topic-prefix", prefix, "--config", str(config_path)]
    first = Process(args, tmp_path / "first.log", env)
    second = Process(args, tmp_path / "second.log", env)
    rng = random.Random(7)
    with KafkaEventLog(kafka_bootstrap) as agents:
        first.start()

        def send(start: int, n: int) -> None:
            now = int(time.time() * 1000)
            for i in range(start, start + n):
                p = _proposal(i, now, rng)
                agents.produce(topics.proposals, codec.encode(p), key=p.market_id.encode())
            agents.flush()

        def wait_for(count: int) -> list[Decision]:
            for _ in range(300):
                found = [d for _, d in _decisions(kafka_bootstrap, topics)]
                if len({a.proposal_id for d in found for a in d.allocations}) >= count:
                    return found
                time.sleep(0.2)
            raise AssertionError("decisions did not arrive")

        try:
            send(0, 20)
            wait_for(20)
            second.start()
            time.sleep(4)  # the second instance is up (init_transactions fenced the first)
            send(20, 20)
            decisions = wait_for(40)
            first_exit = first.proc.wait(60) if first.proc else None
        finally:
            for p in (first, second):
                if p.proc is not None and p.proc.poll() is None:
                    p.proc.send_signal(signal.SIGTERM)
                    p.proc.wait(60)
    assert first_exit == 3, first.log_path.read_text()
    assert "another instance took over" in first.log_path.read_text()
    ids = [d.decision_id for d in decisions]
    assert len(ids) == len(set(ids))
    assert [d.cycle for d in decisions] == list(range(1, len(decisions) + 1))


def _infra_postgres() -> bool:
    return subprocess.run([str(ROOT / "infra" / "postgres.sh"), "status"], capture_output=True).returncode == 0


def test_the_projector_rides_out_a_postgres_restart(kafka_bootstrap: str, db_schema: DbSchema, prefix: str,
                                                   tmp_path: Path) -> None:  # fmt: skip
    if not _infra_postgres():
        pytest.skip("restarting PostgreSQL needs the cluster started by infra/postgres.sh")
    topics = Topics(prefix)
    env = _env(kafka_bootstrap)
    project = Process(["project", "--topic-prefix", prefix, "--database", db_schema.url, "--schema", db_schema.name],
                      tmp_path / "project.log", env)  # fmt: skip
    rng = random.Random(3)
    t = tables.proposals
    with KafkaEventLog(kafka_bootstrap) as agents:
        agents.create_topics([*topics.inputs, *topics.outputs])

        def send(start: int, n: int) -> None:
            now = int(time.time() * 1000)
            for i in range(start, start + n):
                agents.produce(topics.proposals, codec.encode(_proposal(i, now, rng)))
            agents.flush()

        def projected() -> int:
            """Proposals in the projection; -1 while the tables are not there or the server is away."""
            try:
                with db_schema.engine.connect() as conn:
                    return len(conn.execute(select(t.c.proposal_id)).all())
            except Exception:
                db_schema.engine.dispose()  # connections died with the server: the next call reconnects
                return -1

        project.start()
        try:
            send(0, 100)
            for _ in range(120):
                if projected() == 100:
                    break
                time.sleep(0.25)
            assert projected() == 100
            subprocess.run([str(ROOT / "infra" / "postgres.sh"), "stop"], check=True, capture_output=True)
            send(100, 100)
            time.sleep(3)  # the projector meets the closed database and backs off
            subprocess.run([str(ROOT / "infra" / "postgres.sh"), "start"], check=True, capture_output=True)
            for _ in range(240):
                if projected() == 200:
                    break
                time.sleep(0.25)
            assert projected() == 200
        finally:
            if not _infra_postgres():
                subprocess.run([str(ROOT / "infra" / "postgres.sh"), "start"], capture_output=True)
            assert project.stop() == 0, project.log_path.read_text()
    assert "database unavailable" in project.log_path.read_text()
