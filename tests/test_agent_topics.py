"""Per-agent proposals topics (rules.md §11.1): with configured agents, each has `<prefix>.proposals.<agent>`; a
proposal read from one agent's topic naming another agent is rejected UNAUTHORIZED without claiming its id. On the
embedded log (the broker's side is tests/test_roles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocator.service.acl import acl_table
from allocator.service.audit import audit_log
from allocator.service.clients import BookClient, agents_with_topics
from allocator.service.loop import AllocatorService, group_of
from book.config import AllocatorConfig, ConfigError
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import Topics
from schemas.codec import SingleObjectCodec
from schemas.events import AllocationStatus, Decision, Proposal, ReasonCode, Side

codec = SingleObjectCodec()
TOPICS = Topics("ids")
T = 1_790_000_000_000
CONFIG = AllocatorConfig.from_mapping(
    {"scenario_count": 300, "solver_time_limit_ms": 10_000, "agents": ["alpha", "beta"]}
)


def proposal(pid: str, agent: str, at: int) -> Proposal:
    return Proposal(pid, agent, "s", "m1", Side.BUY, 0.5, 0.04, 0.9, 800.0, 100.0, 0.05, 0.01, "k1", at)


def service(path: Path, config: AllocatorConfig = CONFIG) -> AllocatorService:
    log = EmbeddedEventLog(path, group=group_of(TOPICS, "book1"))
    reader = EmbeddedEventLog(path)
    svc = AllocatorService(log, reader, codec, "book1", config, TOPICS, say=lambda _: None, log_append_time=False)
    svc.start()
    return svc


def produce(path: Path, topic: str, p: Proposal) -> None:
    with EmbeddedEventLog(path) as log:
        log.produce(topic, codec.encode(p), timestamp_ms=p.created_at)
        log.flush()


def cycle(svc: AllocatorService) -> Decision:
    while svc.poll(0.05):
        pass
    assert svc.buffer
    return svc.cycle().decision


def test_topics_name_each_agent_s_own_proposals_topic() -> None:
    topics = Topics("p", agents=("alpha", "beta"))
    assert topics.proposals_of("alpha") == "p.proposals.alpha"
    assert topics.inputs == ("p.proposals", "p.proposals.alpha", "p.proposals.beta", "p.fills", "p.pnl", "p.control")
    assert topics.agent_of("p.proposals.alpha") == "alpha" and topics.agent_of("p.proposals") is None
    assert Topics("p").agent_of("p.proposals.gamma") == "gamma"  # by name: a replay needs no configuration
    assert Topics("p").accepts("p.proposals.gamma") == (Proposal,) and Topics("p").accepts("p.other") == ()
    with pytest.raises(ValueError, match="agent id"):
        Topics("p", agents=("a.b",))
    with pytest.raises(ConfigError, match="agents"):
        AllocatorConfig.from_mapping({"agents": ["alpha", "no spaces"]})


def test_the_acl_grants_an_agent_its_own_topic_only() -> None:
    rows = acl_table(TOPICS, "book1", {"agent": ["alpha"], "allocator": ["alloc"]})
    writes = {(r.name, r.pattern) for r in rows if r.principal == "alpha" and r.operation == "WRITE"}
    assert writes == {("ids.proposals.alpha", "LITERAL")}
    reads = {(r.name, r.pattern) for r in rows if r.principal == "alloc" and r.operation == "READ"}
    assert ("ids.proposals.", "PREFIXED") in reads and ("ids.proposals", "LITERAL") in reads
    with pytest.raises(ValueError, match="agent id"):
        acl_table(TOPICS, "book1", {"agent": ["agent.one"]})


def test_a_proposal_under_another_agent_s_id_is_unauthorized_and_claims_nothing(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    svc = service(db)
    assert svc.topics.inputs[1:3] == ("ids.proposals.alpha", "ids.proposals.beta")  # serve reads (and made) both
    produce(db, TOPICS.proposals_of("alpha"), proposal("a1", "alpha", T + 1))
    produce(db, TOPICS.proposals_of("alpha"), proposal("b1", "beta", T + 2))  # alpha claims to be beta
    first = {a.proposal_id: a for a in cycle(svc).allocations}
    assert first["a1"].status is AllocationStatus.FUNDED
    forged = first["b1"]
    assert forged.status is AllocationStatus.REJECTED
    assert [r.code for r in forged.reasons] == [ReasonCode.UNAUTHORIZED]
    detail = forged.reasons[0].detail or ""
    assert "'alpha'" in detail and "ids.proposals.alpha" in detail

    produce(db, TOPICS.proposals_of("beta"), proposal("b1", "beta", T + 3))  # the genuine one, same id
    second = {a.proposal_id: a for a in cycle(svc).allocations}
    assert list(second) == ["b1"] and second["b1"].status is AllocationStatus.FUNDED

    produce(db, TOPICS.proposals, proposal("a2", "alpha", T + 4))  # the shared topic: accepted as before
    third = {a.proposal_id: a for a in cycle(svc).allocations}
    assert third["a2"].status is AllocationStatus.FUNDED

    with EmbeddedEventLog(db) as reader:
        report = audit_log(reader, codec, Topics("ids"), None)  # no agents known: the decisions name the topics
    assert [f.verdict for f in report.findings] == ["MATCH"] * 3
    svc.log.close()
    svc.reader.close()
    again = service(db)  # a restart rebuilds the same book
    assert again.state.cycle == 3 and not again.state.portfolio.refused
    assert ("beta", "b1") in again.state.portfolio.keys


def test_the_book_client_sends_to_the_agent_s_own_topic_when_it_exists(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    service(db).log.close()  # creates the configured agents' topics
    with EmbeddedEventLog(db) as log:
        topics = agents_with_topics(log, TOPICS, ["alpha", "gamma", "bad id"])
        assert topics.agents == ("alpha",)
        client = BookClient(log, codec, topics)
        client.propose(proposal("x1", "alpha", T))
        client.propose(proposal("x2", "gamma", T))
        client.flush()
        ends = log.end_offsets([TOPICS.proposals, TOPICS.proposals_of("alpha")])
    assert {tp.topic: end for tp, end in ends.items()} == {"ids.proposals": 1, "ids.proposals.alpha": 1}


def test_without_configured_agents_nothing_changes(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    svc = service(db, AllocatorConfig.from_mapping({"scenario_count": 300, "solver_time_limit_ms": 10_000}))
    assert svc.topics.inputs == Topics("ids").inputs


def test_the_forged_and_the_genuine_proposal_in_one_batch(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    svc = service(db)
    produce(db, TOPICS.proposals_of("alpha"), proposal("b7", "beta", T + 1))  # first: it must not claim b7
    produce(db, TOPICS.proposals_of("beta"), proposal("b7", "beta", T + 2))
    decided = [(a.proposal_id, a.status) for a in cycle(svc).allocations]
    assert sorted(decided) == [("b7", AllocationStatus.FUNDED), ("b7", AllocationStatus.REJECTED)]
    assert not svc.state.portfolio.refused and not svc.state.portfolio.pending


def test_an_agent_s_own_topic_is_never_taken_for_another_book() -> None:
    from allocator.service.discovery import book_prefixes

    names = [*Topics("ids", agents=("decisions", "alpha")).inputs, *Topics("ids").outputs]
    assert list(book_prefixes(names)) == ["ids"]


def test_allocator_replay_projects_the_proposals_of_every_agent_s_own_topic(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from cli.main import main

    db = tmp_path / "log.sqlite"
    svc = service(db)
    produce(db, TOPICS.proposals_of("alpha"), proposal("a1", "alpha", T + 1))
    produce(db, TOPICS.proposals_of("beta"), proposal("b1", "beta", T + 2))
    produce(db, TOPICS.proposals, proposal("s1", "alpha", T + 3))
    cycle(svc)
    svc.log.close()
    svc.reader.close()
    target = tmp_path / "projection.sqlite"
    assert main(["replay", "--log", str(db), "--database", f"sqlite:///{target}"]) == 0
    with create_engine(f"sqlite:///{target}").connect() as conn:
        ids = {row[0] for row in conn.execute(text("select proposal_id from proposals"))}
    assert ids == {"a1", "b1", "s1"}


def test_two_agents_may_use_one_proposal_id_and_each_fill_counts_for_its_own(tmp_path: Path) -> None:
    """rules.md §2.2: ids are unique per agent, not across agents. alpha's and beta's "p-1" are both decided
    (neither is a DUPLICATE of the other), a fill names its agent, and a restart and the audit agree."""
    from schemas.events import Fill, FillStatus

    db = tmp_path / "log.sqlite"
    svc = service(db)
    produce(db, TOPICS.proposals_of("alpha"), proposal("p-1", "alpha", T + 1))
    produce(db, TOPICS.proposals_of("beta"), proposal("p-1", "beta", T + 2))
    decision = cycle(svc)
    by_agent = {a.agent_id: a for a in decision.allocations}
    assert sorted(by_agent) == ["alpha", "beta"]
    assert all(a.proposal_id == "p-1" and a.status is AllocationStatus.FUNDED for a in by_agent.values())
    cash = svc.state.portfolio.cash
    size = by_agent["beta"].size
    with EmbeddedEventLog(db) as log:
        fill = Fill("f-beta", decision.decision_id, "p-1", "m1", Side.BUY, size, size, 0.5, 0.0, FillStatus.FILLED,
                    None, T + 3, "beta")  # fmt: skip
        log.produce(TOPICS.fills, codec.encode(fill), timestamp_ms=T + 3)
        log.produce(TOPICS.proposals_of("alpha"), codec.encode(proposal("p-2", "alpha", T + 4)), timestamp_ms=T + 4)
        log.flush()
    cycle(svc)
    assert svc.state.portfolio.cash == cash - size
    held = svc.state.portfolio.reservations
    assert (decision.decision_id, "alpha", "p-1") in held and (decision.decision_id, "beta", "p-1") not in held
    with EmbeddedEventLog(db) as reader:
        report = audit_log(reader, codec, TOPICS, None)
    assert [f.verdict for f in report.findings] == ["MATCH", "MATCH"]
    svc.log.close()
    svc.reader.close()
    again = service(db)
    assert again.state.portfolio.cash == cash - size
    assert set(again.state.portfolio.reservations) == set(svc.state.portfolio.reservations)
