"""The allocator service on the embedded log: decides batches, publishes once, and rebuilds its state on restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocator.service.loop import AllocatorService, group_of
from book.config import AllocatorConfig
from book.portfolio import Funded
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import Topics
from schemas.codec import SingleObjectCodec
from schemas.events import (
    AllocationStatus,
    DeadLetter,
    Decision,
    Fill,
    FillStatus,
    GovernorEvent,
    GovernorState,
    PnlMark,
    Proposal,
    Side,
)

codec = SingleObjectCodec()
TOPICS = Topics("book1")
T = 1_790_000_000_000
# A generous time limit: these tests are about the sequence, not the clock, and the machine may be busy.
CONFIG = AllocatorConfig.from_mapping({"scenario_count": 300, "solver_time_limit_ms": 10_000})


def proposal(i: int, market: str = "m", side: Side = Side.BUY) -> Proposal:
    return Proposal(f"p{i}", "alpha", "s", f"{market}{i % 7}", side, 0.5, 0.04, 0.9, 800.0, 100.0, 0.05, 0.01,
                    f"k{i % 3}", T + i)  # fmt: skip


def service(path: Path) -> AllocatorService:
    log = EmbeddedEventLog(path, group=group_of(TOPICS, "book1"))
    reader = EmbeddedEventLog(path)
    svc = AllocatorService(log, reader, codec, "book1", CONFIG, TOPICS, say=lambda _: None)
    svc.start()
    return svc


def produce(path: Path, topic: str, payloads: list[tuple[bytes, int]]) -> None:
    with EmbeddedEventLog(path) as log:
        log.create_topics([topic])
        for value, ts in payloads:
            log.produce(topic, value, timestamp_ms=ts)
        log.flush()


def read(path: Path, topic: str) -> list[object]:
    with EmbeddedEventLog(path) as log:
        ends = log.end_offsets([topic])
        log.assign([topic])
        out: list[object] = []
        while any(log.position(tp) < end for tp, end in ends.items()):
            for r in log.poll(1_000, 0.2):
                assert r.value is not None
                out.append(codec.decode(r.value, r.topic, r.partition, r.offset))
        return out


def drain(svc: AllocatorService) -> list[Decision]:
    out = []
    while svc.poll(0.05):
        pass
    if svc.buffer:
        out.append(svc.cycle().decision)
    return out


def test_every_proposal_is_decided_once_and_bad_bytes_become_dead_letters(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    svc = service(db)
    good = [(codec.encode(proposal(i)), T + i) for i in range(30)]
    produce(db, TOPICS.proposals, [*good[:15], (b"garbage", T + 15), *good[15:]])
    produce(db, TOPICS.proposals, [(codec.encode(PnlMark("m1", 0.5, T)), T + 40)])  # wrong topic for a mark
    decisions = drain(svc)
    assert len(decisions) == 1
    decided = [a.proposal_id for a in decisions[0].allocations]
    assert sorted(decided) == sorted(f"p{i}" for i in range(30))
    dead = read(db, TOPICS.deadletter)
    assert len(dead) == 2 and all(isinstance(d, DeadLetter) for d in dead)
    assert {d.offset for d in dead if isinstance(d, DeadLetter)} == {15, 31}
    assert read(db, TOPICS.decisions) == decisions


def test_a_restart_rebuilds_the_state_the_last_decision_left(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    svc = service(db)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + i) for i in range(10)])
    first = drain(svc)[0]
    funded = [a for a in first.allocations if a.size > 0]
    assert funded
    fills = [
        Fill(
            f"f{i}",
            first.decision_id,
            a.proposal_id,
            a.market_id,
            Side.BUY,
            a.size,
            a.size,
            0.5,
            1.0,
            FillStatus.FILLED,
            None,
            T + 100 + i,
        )
        for i, a in enumerate(funded)
    ]
    produce(db, TOPICS.fills, [(codec.encode(f), f.time) for f in fills])
    produce(db, TOPICS.pnl, [(codec.encode(PnlMark(funded[0].market_id, 0.55, T + 200)), T + 200)])
    drain(svc)
    live = svc.state.portfolio

    restarted = service(db)
    rebuilt = restarted.state.portfolio
    assert rebuilt.cash == pytest.approx(live.cash) and rebuilt.equity == pytest.approx(live.equity)
    assert rebuilt.reservations == live.reservations and list(rebuilt.pending) == list(live.pending)
    assert restarted.state.cycle == svc.state.cycle
    assert restarted.poll(0.1) == 0  # nothing is read twice


def test_failed_executions_pause_the_book_and_the_change_is_published(tmp_path: Path) -> None:
    db = tmp_path / "log.sqlite"
    svc = service(db)
    fails = [
        Fill(f"f{i}", "d", f"x{i}", "m", Side.BUY, 10.0, 0.0, 0.5, 0.0, FillStatus.FAILED, "venue down", T + i)
        for i in range(20)
    ]
    for f in fails:  # reports of allocations a decision funded (rules.md §11.1): a report of nothing is refused
        svc.state.portfolio.funded[(f.decision_id, f.proposal_id)] = {"a": Funded("m", Side.BUY, 10.0)}
    produce(db, TOPICS.fills, [(codec.encode(f), f.time) for f in fails])
    produce(db, TOPICS.proposals, [(codec.encode(proposal(1)), T + 50)])
    decision = drain(svc)[0]
    assert decision.governor_state is GovernorState.PAUSED
    assert [a.status for a in decision.allocations] == [AllocationStatus.DEFERRED]
    changes = read(db, TOPICS.governor)
    assert [(e.governor.value, e.new_state) for e in changes if isinstance(e, GovernorEvent)] == [
        ("FAILURE_RATE", "PAUSED")
    ]


def test_a_second_instance_fences_the_first(tmp_path: Path) -> None:
    from eventlog.port import FencedError

    db = tmp_path / "log.sqlite"
    first = service(db)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(1)), T)])
    second = service(db)  # takes over the book
    while first.poll(0.05):
        pass
    with pytest.raises(FencedError):
        first.cycle()
    assert drain(second)  # the new instance decides
    assert len(read(db, TOPICS.decisions)) == 1


def test_audit_passes_on_an_honest_log_and_names_exactly_a_forged_decision(tmp_path: Path) -> None:
    import dataclasses

    from allocator.service.audit import audit_log

    db = tmp_path / "log.sqlite"
    svc = service(db)
    for batch in range(3):
        produce(db, TOPICS.proposals, [(codec.encode(proposal(10 * batch + i)), T + 10 * batch + i) for i in range(8)])
        drain(svc)
    with EmbeddedEventLog(db) as reader:
        honest = audit_log(reader, codec, TOPICS, CONFIG)
    assert [f.verdict for f in honest.findings] == ["MATCH"] * 3

    decisions = [d for d in read(db, TOPICS.decisions) if isinstance(d, Decision)]
    original = decisions[1]
    first = original.allocations[0]
    forged_allocation = dataclasses.replace(first, size=first.size + 1.0)  # one changed number
    forged = dataclasses.replace(original, allocations=(forged_allocation, *original.allocations[1:]))
    produce(db, TOPICS.decisions, [(codec.encode(forged), T + 999)])
    with EmbeddedEventLog(db) as reader:
        report = audit_log(reader, codec, TOPICS, CONFIG)
    assert [(f.cycle, f.verdict) for f in report.mismatches] == [(original.cycle, "MISMATCH")]
    assert report.mismatches[0].offset == 3  # the forged record, not the genuine one at offset 1
    assert sum(f.verdict == "MATCH" for f in report.findings) == 3


def test_every_message_in_is_accounted_for_once(tmp_path: Path) -> None:
    """Good, malformed and invalid messages: each ends in exactly one decision allocation or one dead letter."""
    import dataclasses
    import math

    db = tmp_path / "log.sqlite"
    svc = service(db)
    good = [proposal(i) for i in range(40)]
    invalid = [
        dataclasses.replace(proposal(100), proposal_id="bad-nan", expected_profit=math.nan),
        dataclasses.replace(proposal(101), proposal_id="bad-price", price=1.5),
        dataclasses.replace(proposal(102), proposal_id="bad-min", min_size=10_000.0),
        dataclasses.replace(proposal(103), proposal_id="bad-urgency", urgency=0.0),
    ]
    malformed = [b"", b"\xc3\x01" + b"\x00" * 8, codec.encode(proposal(104))[:-3], b'{"json": 1}']
    messages: list[tuple[bytes, int]] = [(codec.encode(p), T + i) for i, p in enumerate([*good, *invalid])]
    for j, junk in enumerate(malformed):
        messages.insert(7 * j + 3, (junk, T + 500 + j))
    produce(db, TOPICS.proposals, messages)
    decisions = drain(svc)
    while True:  # deferred proposals are decided again; keep going until nothing new arrives
        more = drain(svc)
        if not more:
            break
        decisions += more
    final = {AllocationStatus.FUNDED, AllocationStatus.CUT, AllocationStatus.REJECTED, AllocationStatus.NETTED,
             AllocationStatus.EXPIRED}  # fmt: skip
    named = [a.proposal_id for d in decisions for a in d.allocations if a.status in final or d is decisions[-1]]
    dead = [d for d in read(db, TOPICS.deadletter) if isinstance(d, DeadLetter)]
    assert len(named) == len(set(named)) == len(good) + len(invalid)
    assert sorted(d.offset for d in dead) == sorted(i for i, (v, _) in enumerate(messages) if v in malformed)
    assert len(named) + len(dead) == len(messages)
    rejected = {a.proposal_id: a for d in decisions for a in d.allocations if a.proposal_id.startswith("bad-")}
    assert all(a.status is AllocationStatus.REJECTED for a in rejected.values())
    assert {a.reasons[0].detail.split(":")[0] for a in rejected.values() if a.reasons[0].detail} == {
        "expected_profit", "price", "min_size", "urgency"
    }  # fmt: skip


def test_books_under_other_prefixes_never_share_a_group_or_transactional_id() -> None:
    from allocator.service.loop import transactional_id_of

    a, b = Topics("desk-a"), Topics("desk-b")
    assert group_of(a, "main") != group_of(b, "main")
    assert transactional_id_of(a) != transactional_id_of(b)


def test_one_book_has_one_spelling(tmp_path: Path) -> None:
    from eventlog.port import normalise_book_id

    assert normalise_book_id("Main") == normalise_book_id("main") == "main"
    assert group_of(TOPICS, "Main") == group_of(TOPICS, "main")
    for bad in ("", "ma in", "main\n\n", "../x", "a" * 65):
        with pytest.raises(ValueError):
            normalise_book_id(bad)
    from cli.main import main

    assert main(["serve", "--book", "ma in", "--log", str(tmp_path / "log.sqlite"), "--max-cycles", "1"]) == 2


def test_serve_uses_the_topics_init_made_whatever_their_partition_count(tmp_path: Path) -> None:
    from cli.main import main

    log = str(tmp_path / "book.sqlite")
    assert main(["init", "--log", log, "--partitions", "3"]) == 0
    assert main(["serve", "--book", "main", "--log", log, "--max-cycles", "1", "--duration", "3"]) == 0
    with EmbeddedEventLog(log) as reader:
        reader.assign([Topics("allocator").proposals])
        assert len(reader.assignment()) == 3


def test_a_restart_refuses_inputs_edited_after_a_decision_recorded_the_state_they_made(tmp_path: Path) -> None:
    """A mark tripped the kill switch and the next decision recorded the book HALTED; rewriting that mark in the log
    file (anyone who can write it can) made the restart rebuild an ACTIVE book and fund again, with no operator
    reset. The restart now refuses, naming the decision and what it records."""
    import sqlite3

    from allocator.service.loop import Contradicted

    db = tmp_path / "log.sqlite"
    config = CONFIG.replace(kill_switch_drawdown=0.005)

    def start() -> AllocatorService:
        svc = AllocatorService(EmbeddedEventLog(db, group=group_of(TOPICS, "book1")), EmbeddedEventLog(db), codec,
                               "book1", config, TOPICS, say=lambda _: None)  # fmt: skip
        svc.start()
        return svc

    svc = start()
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + i) for i in range(10)])
    first = drain(svc)[0]
    funded = [a for a in first.allocations if a.size > 0]
    assert funded
    fills = [Fill(f"f{i}", first.decision_id, a.proposal_id, a.market_id, Side.BUY, a.size, a.size, 0.5, 0.0,
                  FillStatus.FILLED, None, T + 100 + i) for i, a in enumerate(funded)]  # fmt: skip
    produce(db, TOPICS.fills, [(codec.encode(f), f.time) for f in fills])
    crash = PnlMark(funded[0].market_id, 0.0, T + 200)  # its loss alone is over 0.5% of equity
    assert funded[0].size > 0.005 * svc.state.portfolio.equity
    produce(db, TOPICS.pnl, [(codec.encode(crash), T + 200)])
    produce(db, TOPICS.proposals, [(codec.encode(proposal(20)), T + 300)])
    halted = drain(svc)[0]
    assert halted.governor_state is GovernorState.HALTED
    svc.log.close()
    svc.reader.close()
    assert start().state.portfolio.governor.state is GovernorState.HALTED  # the log as written rebuilds it

    with sqlite3.connect(db) as conn:  # the mark rewritten to the price it was bought at
        benign = codec.encode(PnlMark(crash.market_id, 0.5, crash.time))
        assert conn.execute("UPDATE records SET value = ? WHERE topic = ?", (benign, TOPICS.pnl)).rowcount == 1
    refused = rf"{halted.decision_id} \(cycle 2\) records governor HALTED \(rebuilt ACTIVE\)"
    with pytest.raises(Contradicted, match=refused):
        start()


@pytest.mark.parametrize(
    ("tamper", "refused"),
    [
        # An input's log time moved a day on: the book's clock jumped, a reservation was released unfilled.
        (
            "UPDATE records SET timestamp_ms = timestamp_ms + 86400000 WHERE topic = :proposals AND offset = 0",
            r"cycle 1\) records decided_at \d+ \(its inputs' log time is \d+\)",
        ),
        # A decision removed: the next one's cycle no longer follows the decisions folded before it.
        ("DELETE FROM records WHERE topic = :decisions AND offset = 0", r"records cycle 2 \(the next after"),
        # A decision forged on an unsigned book, claiming the largest cycle: the next cycle overflowed on every start.
        ("FORGE", r"records cycle 9223372036854775807 \(the next after the decisions before it is 3\)"),
    ],
    ids=["input-time", "decision-removed", "decision-forged"],
)
def test_a_restart_refuses_a_log_whose_decisions_no_longer_follow_from_it(
    tmp_path: Path, tamper: str, refused: str
) -> None:
    """An outside probe: moving one consumed input's log time a day on, deleting a decision, or appending a forged
    decision claiming cycle 2**63-1 to an unsigned book's log file: the restart rebuilt without a word (the last made
    the next cycle overflow, a crash on every start) and only the audit saw it. The restart now checks each
    decision's cycle and time against the log it rebuilds, as it checks the state it records."""
    import dataclasses
    import sqlite3

    from allocator.service.loop import Contradicted

    db = tmp_path / "log.sqlite"
    svc = service(db)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + i) for i in range(5)])
    assert len(drain(svc)) == 1
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + 100 + i) for i in range(5, 10)])
    assert len(drain(svc)) == 1
    svc.log.close()
    svc.reader.close()
    service(db).log.close()  # the log as written rebuilds
    with sqlite3.connect(db) as conn:
        if tamper == "FORGE":
            offset, value = conn.execute(
                "SELECT offset, value FROM records WHERE topic = ? ORDER BY offset DESC LIMIT 1", (TOPICS.decisions,)
            ).fetchone()
            last = codec.decode(value)
            assert isinstance(last, Decision)
            forged = codec.encode(dataclasses.replace(last, cycle=2**63 - 1, config=None))
            conn.execute(
                "INSERT INTO records (topic, partition, offset, key, value, timestamp_ms) VALUES (?, 0, ?, NULL, ?, ?)",
                (TOPICS.decisions, offset + 1, forged, T + 1000),
            )
        else:
            changed = conn.execute(tamper, {"proposals": TOPICS.proposals, "decisions": TOPICS.decisions}).rowcount
            assert changed == 1
    with pytest.raises(Contradicted, match=refused):
        service(db)


@pytest.mark.parametrize("config", ["{", "[1]", '{"position_cap": 5}', '{"initial_cash": 1' + "0" * 5000 + "}"])
def test_a_decision_whose_configuration_cannot_be_read_is_skipped_and_named_not_a_crash(
    tmp_path: Path, config: str
) -> None:
    """An outside probe: a decision appended to an unsigned book's log with a recorded configuration that is not JSON,
    not an object, out of range or past Python's integer parsing made every restart (and every audit) stop on a
    traceback. Such a record is now refused like an undecodable one, named, and the book serves on."""
    import dataclasses
    import sqlite3

    db = tmp_path / "log.sqlite"
    svc = service(db)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(i)), T + i) for i in range(5)])
    (first,) = drain(svc)
    svc.log.close()
    svc.reader.close()
    rebuilt = service(db)
    rebuilt.log.close()
    with sqlite3.connect(db) as conn:
        forged = dataclasses.replace(first, cycle=2, decision_id=first.decision_id[:-1] + "2", config=config,
                                     available=rebuilt.state.portfolio.portfolio().available)  # fmt: skip
        conn.execute(
            "INSERT INTO records (topic, partition, offset, key, value, timestamp_ms) VALUES (?, 0, 1, NULL, ?, ?)",
            (TOPICS.decisions, codec.encode(forged), T + 1000),
        )
    said: list[str] = []
    again = AllocatorService(EmbeddedEventLog(db, group=group_of(TOPICS, "book1")), EmbeddedEventLog(db), codec,
                             "book1", CONFIG, TOPICS, say=said.append)  # fmt: skip
    again.start()
    assert again.state.cycle == 1  # the forged decision was not folded
    assert any("Decision.config is not a configuration" in line and "cycle 2" in line for line in said)
    produce(db, TOPICS.proposals, [(codec.encode(proposal(9)), T + 2000)])
    (next_decision,) = drain(again)
    assert next_decision.cycle == 2


def test_a_rejection_for_a_huge_id_stays_small(tmp_path: Path) -> None:
    """The reason quoted a bad proposal_id whole: 20 proposals with 1 MB ids made every decision 20 MB, over what
    Kafka takes. The id is named by a cut plus a digest and the reason quotes a cut."""
    import dataclasses

    db = tmp_path / "log.sqlite"
    svc = service(db)
    huge = dataclasses.replace(proposal(1), proposal_id="L" * 100_000)
    produce(db, TOPICS.proposals, [(codec.encode(huge), T)])
    decision = drain(svc)[0]
    (rejected,) = decision.allocations
    assert rejected.status is AllocationStatus.REJECTED and len(rejected.proposal_id) <= 128
    assert [r.code.value for r in rejected.reasons] == ["INVALID_FIELD"]
    detail = rejected.reasons[0].detail or ""
    assert "proposal_id" in detail and "100000 chars" in detail
    assert len(codec.encode(decision)) < 2_000


def test_a_proposal_with_a_bad_id_is_rejected_once_under_a_name_a_projection_can_store(tmp_path: Path) -> None:
    """An outside probe: a proposal with an empty or 100,000-character id was rejected again in every later cycle
    (the rejection named it by a cut, which never matched the pending id), and one with a NUL in its id was funded,
    so its decision, every agent's allocations in it, was a dead letter to the projector. Under proposal_id_rules 2
    each is rejected once, named without control characters in at most 128; rules 1 (a log recorded before the key)
    keeps the old behaviour, so such logs still re-derive."""
    import dataclasses

    bad = [
        dataclasses.replace(proposal(1), proposal_id=""),
        dataclasses.replace(proposal(2), proposal_id="L" * 100_000),
        dataclasses.replace(proposal(3), proposal_id="a\x00b"),
        dataclasses.replace(proposal(4), agent_id="x\x00y"),
        dataclasses.replace(proposal(5), market_id="m\n5"),
    ]

    def run(rules: int, db: Path) -> list[Decision]:
        config = CONFIG.replace(proposal_id_rules=rules)
        svc = AllocatorService(EmbeddedEventLog(db, group=group_of(TOPICS, "book1")), EmbeddedEventLog(db), codec,
                               "book1", config, TOPICS, say=lambda _: None)  # fmt: skip
        svc.start()
        produce(db, TOPICS.proposals, [(codec.encode(p), T + i) for i, p in enumerate(bad)])
        first = drain(svc)
        produce(db, TOPICS.proposals, [(codec.encode(proposal(9)), T + 10)])
        return first + drain(svc)

    first, second = run(2, tmp_path / "rules2.sqlite")
    assert all(a.status is AllocationStatus.REJECTED for a in first.allocations) and len(first.allocations) == 5
    assert all(r.code.value == "INVALID_FIELD" for a in first.allocations for r in a.reasons)
    for a in first.allocations:
        for text in (a.proposal_id, a.agent_id, a.market_id):
            assert len(text) <= 128 and not any(ch < " " for ch in text), a
    assert [a.proposal_id for a in second.allocations] == ["p9"]  # the rejected ones are settled

    old_first, old_second = run(1, tmp_path / "rules1.sqlite")
    assert {a.proposal_id: a.status for a in old_first.allocations}["a\x00b"] is AllocationStatus.FUNDED
    assert {a.proposal_id for a in old_second.allocations} >= {"p9", "<empty proposal_id>"}
