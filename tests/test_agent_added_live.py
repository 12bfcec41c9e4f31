"""An agent a SET_LIMITS adds is read without a restart (rules.md §7.7, §11.1): `serve` creates its own proposals
topic and reads it from its start as soon as the cycle that folded the command is committed; the next decision's
inputs record what was read of it, so the audit re-derives every decision across the change and a restart
rebuilds the same book. On the embedded log and on the secured broker."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from allocator.service.audit import audit_log
from allocator.service.clients import BookClient, agents_with_topics
from allocator.service.loop import AllocatorService, group_of
from book.config import AllocatorConfig
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import TopicPartition, Topics
from schemas.codec import SingleObjectCodec
from schemas.events import AllocationStatus, Command, ControlCommand, Decision, Proposal, ReasonCode, Side
from tests.conftest import Open, cycle

codec = SingleObjectCodec()
CONFIG = AllocatorConfig.from_mapping({"scenario_count": 300, "solver_time_limit_ms": 10_000, "agents": ["alpha"]})


def proposal(pid: str, agent: str, market: str) -> Proposal:
    now = int(time.time() * 1000)
    return Proposal(pid, agent, "s", market, Side.BUY, 0.5, 0.04, 0.9, 800.0, 100.0, 0.05, 0.01, "k1", now)


def set_limits(limits: dict[str, float]) -> ControlCommand:
    return ControlCommand(f"cmd-{uuid.uuid4().hex[:8]}", "ops", Command.SET_LIMITS, "onboard gamma", limits,
                          int(time.time() * 1000))  # fmt: skip


def service(open_log: Open, topics: Topics, config: AllocatorConfig | None = CONFIG) -> AllocatorService:
    svc = AllocatorService(open_log(group_of(topics, "book1")), open_log(), codec, "book1", config, topics,
                           say=lambda _: None)  # fmt: skip
    svc.start()
    return svc


def stop(svc: AllocatorService) -> None:
    svc.log.close()
    svc.reader.close()


def send(open_log: Open, topics: Topics, *events: Proposal | ControlCommand) -> None:
    with open_log() as log:
        agents = [e.agent_id for e in events if isinstance(e, Proposal)]
        client = BookClient(log, codec, agents_with_topics(log, topics, agents))
        for event in events:
            if isinstance(event, Proposal):
                client.propose(event)
            else:
                client.command(event)
        client.flush()


def by_id(decision: Decision) -> dict[str, AllocationStatus]:
    return {a.proposal_id: a.status for a in decision.allocations}


def test_an_agent_added_by_set_limits_is_read_without_a_restart(log_kind: tuple[Open, Topics]) -> None:
    open_log, topics = log_kind
    gamma_topic = topics.proposals_of("gamma")
    svc = service(open_log, topics)
    try:
        send(open_log, topics, proposal("a1", "alpha", "m1"))
        assert by_id(cycle(svc, 1)) == {"a1": AllocationStatus.FUNDED}
        assert gamma_topic not in svc.topics.inputs
        send(open_log, topics, set_limits({"agent:gamma": 1.0}))
        added = cycle(svc, 1)  # the cycle that folds the command reads nothing of gamma yet
        assert svc.state.portfolio.config.agents == ("alpha", "gamma")
        assert gamma_topic not in {i.topic for i in added.inputs}
        assert TopicPartition(gamma_topic, 0) in svc.log.assignment()  # created and read, no restart
        # gamma's own topic, and a forged proposal there naming alpha: rejected, as on any agent's own topic
        send(open_log, topics, proposal("g1", "gamma", "m2"))
        with open_log() as log:
            log.produce(gamma_topic, codec.encode(proposal("g2", "alpha", "m3")), key=b"m3")
            log.flush()
            assert sum(log.end_offsets([gamma_topic]).values()) == 2
        third = cycle(svc, 2)
        assert by_id(third) == {"g1": AllocationStatus.FUNDED, "g2": AllocationStatus.REJECTED}
        assert [r.code for a in third.allocations if a.proposal_id == "g2" for r in a.reasons] == [
            ReasonCode.UNAUTHORIZED
        ]
        assert {(i.topic, i.offset) for i in third.inputs if i.topic == gamma_topic} == {(gamma_topic, 2)}
        state = svc.state
    finally:
        stop(svc)

    with open_log() as reader:  # the audit knows no agents: the decisions name what they read
        report = audit_log(reader, codec, Topics(topics.prefix), None)
    assert [f.verdict for f in report.findings] == ["MATCH"] * 3

    again = service(open_log, topics, None)  # a restart, with the log's configuration, rebuilds the same book
    try:
        assert again.state.cycle == 3 and again.state.portfolio.config.agents == ("alpha", "gamma")
        read = {tp: offset for tp, offset in again.state.positions.items() if offset}
        assert read == {tp: offset for tp, offset in state.positions.items() if offset}
        assert {tp: again.log.position(tp) for tp in again.log.assignment() if tp.topic == gamma_topic} == {
            TopicPartition(gamma_topic, 0): 2
        }
        # gamma removed: its topic is still read (after a restart too), and its proposals are rejected with why
        send(open_log, topics, set_limits({"agent:gamma": 0.0}))
        cycle(again, 1)
        send(open_log, topics, proposal("g3", "gamma", "m4"))
        removed = cycle(again, 1)
        assert by_id(removed) == {"g3": AllocationStatus.REJECTED}
        assert [r.code for a in removed.allocations for r in a.reasons] == [ReasonCode.UNKNOWN_AGENT]
    finally:
        stop(again)
    restarted = service(open_log, topics, None)
    try:
        assert TopicPartition(gamma_topic, 0) in restarted.log.assignment()
    finally:
        stop(restarted)
    with open_log() as reader:
        report = audit_log(reader, codec, Topics(topics.prefix), None)
    assert [f.verdict for f in report.findings] == ["MATCH"] * 5


def test_set_limits_on_agents_is_refused_with_a_reason_when_the_book_accepts_every_agent(tmp_path: Path) -> None:
    open_log: Open = lambda group=None: EmbeddedEventLog(tmp_path / "log.sqlite", group)  # noqa: E731
    topics = Topics("open")
    svc = service(open_log, topics, AllocatorConfig.from_mapping({"scenario_count": 300}))
    try:
        send(open_log, topics, set_limits({"agent:gamma": 1.0, "position_cap": 0.01}))
        cycle(svc, 1)
        assert svc.state.portfolio.config.agents is None and svc.state.portfolio.config.position_cap == 0.02
        assert svc.topics.inputs == topics.inputs
    finally:
        stop(svc)


def test_control_set_limits_adds_an_agent_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from cli.main import main

    log = ["--log", str(tmp_path / "log.sqlite"), "--topic-prefix", "cli"]
    config = tmp_path / "book.json"
    config.write_text(json.dumps({"agents": ["alpha"], "scenario_count": 300}), encoding="utf-8")
    assert main(["init", *log, "--config", str(config)]) == 0
    for bad in (["--set", "position_cap"], ["--set", "position_cap=lots"], ["--set", "a=1", "--set", "a=2"], []):
        assert main(["control", "set-limits", *bad, "--reason", "r", "--operator", "ops", *log]) == 2
    assert main(["control", "halt", "--set", "agent:gamma=1", "--reason", "r", "--operator", "ops", *log]) == 2
    assert "--set" in capsys.readouterr().err
    set_gamma = ["--set", "agent:gamma=1", "--set", "position_cap=0.03", "--reason", "onboard", "--operator", "ops"]
    assert main(["control", "set-limits", *set_gamma, *log]) == 0
    assert "sent SET_LIMITS" in capsys.readouterr().out
    assert main(["serve", "--book", "b", *log, "--config", str(config), "--max-cycles", "1", "--duration", "30"]) == 0
    proposals = tmp_path / "gamma.json"
    raw = {"proposal_id": "g1", "agent_id": "gamma", "strategy_tag": "s", "market_id": "m1", "side": "BUY",
           "price": 0.5, "expected_profit": 0.04, "confidence": 0.9, "requested_size": 800, "min_size": 100,
           "execution_risk": 0.05, "urgency": 0.5, "correlation_key": "k1"}  # fmt: skip
    proposals.write_text(json.dumps(raw), encoding="utf-8")
    capsys.readouterr()
    assert main(["propose", str(proposals), "--agent", "gamma", *log]) == 0
    assert "cli.proposals.gamma" in capsys.readouterr().out  # serve made gamma's own topic
    assert main(["serve", "--book", "b", *log, "--max-cycles", "2", "--duration", "30"]) == 0
    with EmbeddedEventLog(tmp_path / "log.sqlite") as reader:
        from allocator.service.sequencer import read_decisions

        decided = [(d.cycle, a.proposal_id, a.status) for _, d in read_decisions(reader, codec, Topics("cli"))
                   for a in d.allocations]  # fmt: skip
    assert decided == [(2, "g1", AllocationStatus.FUNDED)]
    assert main(["audit", *log, "--report", str(tmp_path / "audit.json")]) == 0


def test_a_running_projector_reads_an_agent_s_topic_made_after_it_started(tmp_path: Path) -> None:
    import json
    import signal
    import subprocess
    import sys

    from sqlalchemy import create_engine, text

    from cli.main import main

    root = Path(__file__).resolve().parent.parent
    log = ["--log", str(tmp_path / "log.sqlite"), "--topic-prefix", "pj"]
    config = tmp_path / "book.json"
    config.write_text(json.dumps({"agents": ["alpha"], "scenario_count": 300}), encoding="utf-8")
    assert main(["init", *log, "--config", str(config)]) == 0
    database = f"sqlite:///{tmp_path / 'projection.sqlite'}"
    out = (tmp_path / "project.out").open("wb")
    project = subprocess.Popen([sys.executable, "-m", "cli.main", "project", *log, "--database", database],
                               cwd=root, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        gamma = ["--set", "agent:gamma=1", "--reason", "onboard", "--operator", "ops"]
        assert main(["control", "set-limits", *gamma, *log]) == 0
        assert main(["serve", "--book", "b", *log, "--config", str(config), "--max-cycles", "1"]) == 0
        send(lambda group=None: EmbeddedEventLog(tmp_path / "log.sqlite", group), Topics("pj"),
             proposal("g1", "gamma", "m1"))  # fmt: skip
        engine = create_engine(database)
        deadline = time.monotonic() + 60
        while True:
            # g1 went to the shared topic (this client knows no agents), so it can be projected before the projector
            # looks for new topics (every 5 s): wait for both, or the SIGTERM below races the discovery.
            found = "reading pj.proposals.gamma as well" in (tmp_path / "project.out").read_text()
            try:
                with engine.connect() as conn:
                    projected = conn.execute(text("select count(*) from proposals where proposal_id = 'g1'"))
                    if projected.scalar_one() and found:
                        break
            except Exception:
                pass  # not migrated yet
            assert project.poll() is None and time.monotonic() < deadline, (tmp_path / "project.out").read_text()
            time.sleep(0.3)
        engine.dispose()
    finally:
        project.send_signal(signal.SIGTERM)
        assert project.wait(60) == 0
        out.close()
    assert "reading pj.proposals.gamma as well" in (tmp_path / "project.out").read_text()
