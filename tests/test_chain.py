"""The decision chain end to end (docs/security.md, rules.md §9, §11): serve signs and links, restarts fold only
verified decisions, the decision feed hands executors only verified decisions, the audit names every record that
does not verify; and the operator keyring in the fold."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from allocator.service.chain import (
    FORGED,
    ChainSettings,
    DecisionSigner,
    Rejection,
    UnverifiedBook,
)
from allocator.service.clients import DecisionFeed
from allocator.service.keys import load_signing_key, new_key_pair
from allocator.service.loop import AllocatorService, group_of
from book.config import AllocatorConfig, ConfigError
from book.portfolio import PortfolioState
from cli.main import main
from eventlog.embedded import EmbeddedEventLog
from eventlog.kafka_properties import client_config
from eventlog.port import EventLog, Record, TopicPartition, Topics
from schemas.codec import SingleObjectCodec
from schemas.events import (
    AllocationStatus,
    Command,
    ControlCommand,
    Decision,
    Fill,
    FillStatus,
    Governor,
    GovernorEvent,
    GovernorState,
    InputPosition,
    Proposal,
    Side,
)
from schemas.signing import GENESIS, decision_hash, key_id_of, sign

codec = SingleObjectCodec()
T = 1_790_000_000_000
CONFIG = AllocatorConfig.from_mapping({"scenario_count": 300, "solver_time_limit_ms": 10_000})
BOOK = "book1"


def proposal(i: int) -> Proposal:
    return Proposal(f"p{i}", "alpha", "s", f"m{i % 7}", Side.BUY, 0.5, 0.04, 0.9, 800.0, 100.0, 0.05, 0.01,
                    f"k{i % 3}", T + i)  # fmt: skip


def service(
    log: EventLog, reader: EventLog, topics: Topics, chain: ChainSettings, say: list[str],
    config: AllocatorConfig = CONFIG,
) -> AllocatorService:  # fmt: skip
    svc = AllocatorService(log, reader, codec, BOOK, config, topics, say=say.append, chain=chain)
    svc.start()
    return svc


def embedded(
    db: Path, topics: Topics, chain: ChainSettings, say: list[str] | None = None, config: AllocatorConfig = CONFIG
) -> AllocatorService:
    return service(EmbeddedEventLog(db, group=group_of(topics, BOOK)), EmbeddedEventLog(db), topics, chain,
                   [] if say is None else say, config)  # fmt: skip


def write(log: EventLog, topic: str, values: list[bytes], ts: int) -> None:
    """Raw values onto `topic` (created if missing) at log time `ts`, on any log; closes it."""
    with log:
        log.create_topics([topic])
        for v in values:
            log.produce(topic, v, timestamp_ms=ts)
        log.flush()


def produce(db: Path, topic: str, values: list[bytes], ts: int) -> None:
    write(EmbeddedEventLog(db), topic, values, ts)


def cycle(svc: AllocatorService) -> Decision:
    while svc.poll(0.05):
        pass
    return svc.cycle().decision


def close(svc: AllocatorService) -> None:
    svc.log.close()
    svc.reader.close()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, DecisionSigner]:
    """The allocator's key pair in a folder: (key file, folder of trusted public keys, its signer)."""
    _, private, _public = new_key_pair(tmp_path / "keys")
    return private, tmp_path / "keys", DecisionSigner(load_signing_key(private))


def signed_log(db: Path, topics: Topics, signer: DecisionSigner, cycles: int = 3) -> list[Decision]:
    svc = embedded(db, topics, ChainSettings(signer))
    out = []
    try:
        for c in range(cycles):
            produce(db, topics.proposals, [codec.encode(proposal(10 * c + i)) for i in range(6)], T + 10 * c)
            out.append(cycle(svc))
    finally:
        close(svc)
    return out


def audit(db: Path, topics: Topics, tmp_path: Path, *extra: str) -> tuple[int, dict[str, object], str]:
    report = tmp_path / f"audit-{uuid.uuid4().hex[:6]}.json"
    code = main(["audit", "--log", str(db), "--topic-prefix", topics.prefix, "--report", str(report),
                 "--config", str(config_file(tmp_path)), *extra])  # fmt: skip
    return code, json.loads(report.read_text(encoding="utf-8")), str(report)


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG.to_mapping()), encoding="utf-8")
    return path


# --- serve signs, links and keeps the head -------------------------------------------------------------------


def test_serve_signs_and_links_every_decision_and_keeps_the_head_across_a_restart(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner]
) -> None:
    _, _, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    first = signed_log(db, topics, signer, cycles=2)
    again = signed_log(db, topics, DecisionSigner(signer.key), cycles=1)  # a restart: the head is read back
    decisions = [*first, *again]
    assert [d.previous_hash for d in decisions] == [GENESIS, decision_hash(decisions[0]), decision_hash(decisions[1])]
    assert all(d.key_id == signer.key_id and d.signature for d in decisions)


def test_a_signed_book_that_recovers_from_a_failed_cycle_keeps_its_own_decisions(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner]
) -> None:
    """After a cycle fails even on the halted book, the service rebuilds from its last commit: with its own key
    trusted, so the signed decisions it published are folded again and the chain goes on from their head."""
    _, _, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("recover")
    svc = embedded(db, topics, ChainSettings(signer))
    try:
        for c in range(2):
            produce(db, topics.proposals, [codec.encode(proposal(10 * c + i)) for i in range(4)], T + 10 * c)
            cycle(svc)
        before = (svc.state.cycle, svc.state.portfolio.equity, dict(svc.state.portfolio.reservations))
        svc._recover()
        assert (svc.state.cycle, svc.state.portfolio.equity, dict(svc.state.portfolio.reservations)) == before
        head = signer.head
        produce(db, topics.proposals, [codec.encode(proposal(30))], T + 30)
        third = cycle(svc)
        assert third.cycle == 3 and third.previous_hash == head != GENESIS
    finally:
        close(svc)


def test_the_first_chained_decision_links_to_the_last_decision_before_the_chain(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner]
) -> None:
    _, folder, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    unsigned = signed_log(db, topics, signer, cycles=0)
    svc = embedded(db, topics, ChainSettings())  # unsigned: before the chain
    produce(db, topics.proposals, [codec.encode(proposal(i)) for i in range(4)], T)
    unsigned = [cycle(svc)]
    close(svc)
    assert unsigned[0].previous_hash is None and unsigned[0].signature is None
    chained = signed_log(db, topics, DecisionSigner(signer.key), cycles=1)[0]
    assert chained.previous_hash == decision_hash(unsigned[0]) and chained.cycle == 2
    code, report, _ = audit(db, topics, tmp_path, "--trusted-keys", str(folder))
    assert code == 0, report
    assert report["chain_head"] == decision_hash(chained)


def test_an_audit_of_a_signed_log_without_trusted_keys_says_which_flag_it_lacks(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner], capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    signed_log(db, topics, signer, cycles=1)
    capsys.readouterr()
    code, report, _ = audit(db, topics, tmp_path)
    assert code == 1 and report["mismatches"] == 1
    assert "pass --trusted-keys" in capsys.readouterr().err
    code, _, _ = audit(db, topics, tmp_path, "--trusted-keys", str(folder))
    assert code == 0 and "--trusted-keys" not in capsys.readouterr().err


# --- the audit names every record that does not verify --------------------------------------------------------


def test_audit_names_forged_altered_unsigned_and_undecodable_records_and_exits_1(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner], capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    _d1, d2, d3 = signed_log(db, topics, signer)
    code, report, _ = audit(db, topics, tmp_path, "--trusted-keys", str(folder))
    assert code == 0 and report["mismatches"] == 0, report

    intruder = DecisionSigner(Ed25519PrivateKey.generate(), head=decision_hash(d3))
    _, forged = intruder.seal(dataclasses.replace(d3, cycle=4, decision_id="chain.book1-0000000004"), codec, "t")
    altered_decision = dataclasses.replace(d2, objective=d2.objective + 1.0)  # the signature of the original
    unsigned = dataclasses.replace(d3, cycle=4, previous_hash=None, key_id=None, signature=None)
    produce(db, topics.decisions, [forged, codec.encode(altered_decision), b"\xc3\x01garbage", codec.encode(unsigned)],
            T + 999)  # fmt: skip
    capsys.readouterr()
    code, report, _ = audit(db, topics, tmp_path, "--trusted-keys", str(folder))
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in out + err
    findings = report["findings"]
    assert isinstance(findings, list)
    by_offset = {f["offset"]: f for f in findings}
    assert [by_offset[o]["verdict"] for o in (3, 4, 5, 6)] == ["FORGED", "ALTERED", "UNDECODABLE",
                                                               "UNSIGNED_AFTER_THE_CHAIN_BEGAN"]  # fmt: skip
    assert all("chain.decisions/0/" in by_offset[o]["problems"][0] for o in (3, 4, 5, 6))  # the position, named
    assert [f["verdict"] for f in findings if f["offset"] < 3] == ["MATCH"] * 3  # the genuine ones
    assert not any("a second decision" in p for f in findings for p in f["problems"])
    assert report["chain_head"] == decision_hash(d3)
    assert "FORGED" in out and "ALTERED" in out


def test_audit_names_a_reordered_pair(tmp_path: Path, keys: tuple[Path, Path, DecisionSigner]) -> None:
    _, folder, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    _d1, d2 = signed_log(db, topics, signer, cycles=2)
    # Two later decisions, genuinely signed, written in the wrong order: the second links to one not yet seen.
    replay = DecisionSigner(signer.key, head=decision_hash(d2))
    third, m3 = replay.seal(dataclasses.replace(d2, cycle=3, decision_id="chain.book1-0000000003"), codec, "t")
    _, m4 = replay.seal(dataclasses.replace(d2, cycle=4, decision_id="chain.book1-0000000004"), codec, "t")
    produce(db, topics.decisions, [m4, m3], T + 999)
    code, report, _ = audit(db, topics, tmp_path, "--trusted-keys", str(folder))
    assert code == 1
    verdicts = {f["offset"]: f["verdict"] for f in report["findings"]}  # type: ignore[attr-defined]
    assert verdicts[2] == "REORDERED"
    assert verdicts[3] != "REORDERED"  # it links to the previous verified decision
    assert report["chain_head"] == decision_hash(third)


def test_audit_head_catches_a_deleted_newest_decision(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner], capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    _d1, d2 = signed_log(db, topics, signer, cycles=2)
    # The allocator's third decision, as if published and then deleted from the log: its hash is the head an
    # executor or the projection last saw.
    follow = DecisionSigner(signer.key, head=decision_hash(d2))
    follow.seal(dataclasses.replace(d2, cycle=3), codec, "t")
    code, report, _ = audit(db, topics, tmp_path, "--trusted-keys", str(folder), "--head", follow.head)
    assert code == 1
    findings = report["findings"]
    assert isinstance(findings, list) and findings[-1]["verdict"] == "HEAD_NOT_REACHED"
    assert follow.head in capsys.readouterr().out
    code, report, _ = audit(db, topics, tmp_path, "--trusted-keys", str(folder), "--head", decision_hash(d2))
    assert code == 0, report
    # An older head, still in the chain (the log grew since it was taken): an outside probe found it refused as
    # HEAD_NOT_REACHED, a false alarm for every executor that keeps the head it last acted on.
    code, report, _ = audit(db, topics, tmp_path, "--trusted-keys", str(folder), "--head", decision_hash(_d1))
    assert code == 0, report


def test_audit_head_on_an_unsigned_book_passes_a_decision_still_on_the_log(tmp_path: Path) -> None:
    """An outside probe: on a book that does not sign, `--head` with the hash of any decision but the newest was
    HEAD_NOT_REACHED (exit 1), though the log had only grown since the head was taken: unsigned decisions link to
    nothing, and only a link counted. The head passes when a decision on the log has that hash (it pins that
    decision, not the history before it); a deleted newest decision, or a changed one, is still caught."""
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    svc = embedded(db, topics, ChainSettings())
    made = []
    try:
        for c in range(3):
            produce(db, topics.proposals, [codec.encode(proposal(10 * c + i)) for i in range(6)], T + 10 * c)
            made.append(cycle(svc))
    finally:
        close(svc)
    for d in made:
        code, report, _ = audit(db, topics, tmp_path, "--head", decision_hash(d))
        assert code == 0, report
        assert [f["verdict"] for f in report["findings"]] == ["MATCH"] * 3  # type: ignore[attr-defined]
    _tamper(db, topics.decisions, 2, "delete")
    code, report, _ = audit(db, topics, tmp_path, "--head", decision_hash(made[2]))
    assert code == 1
    assert [f["verdict"] for f in report["findings"]] == ["MATCH", "MATCH", "HEAD_NOT_REACHED"]  # type: ignore[attr-defined]
    code, report, _ = audit(db, topics, tmp_path, "--head", decision_hash(made[1]))
    assert code == 0, report
    _tamper(db, topics.decisions, 0, "flip")
    code, report, _ = audit(db, topics, tmp_path, "--head", decision_hash(made[0]))
    assert code == 1
    assert "HEAD_NOT_REACHED" in [f["verdict"] for f in report["findings"]]  # type: ignore[attr-defined]


def test_audit_without_the_allocator_key_trusts_no_signed_decision(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner]
) -> None:
    _, _, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    signed_log(db, topics, signer, cycles=1)
    code, report, _ = audit(db, topics, tmp_path)
    assert code == 1
    assert [f["verdict"] for f in report["findings"]] == ["FORGED"]  # type: ignore[attr-defined]


# --- serve never folds what does not verify -------------------------------------------------------------------


def test_serve_restart_ignores_a_forged_decision(tmp_path: Path, keys: tuple[Path, Path, DecisionSigner]) -> None:
    _, _, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    (d1,) = signed_log(db, topics, signer, cycles=1)
    honest = proposal(500)
    produce(db, topics.proposals, [codec.encode(honest)], T + 500)
    # A forgery claiming cycle 99 that "decided" the honest proposal (funded: capital reserved) — another key.
    with EmbeddedEventLog(db) as log:
        end = log.end_offsets([topics.proposals])
    inputs = tuple(InputPosition(tp.topic, tp.partition, offset) for tp, offset in end.items())
    funded = dataclasses.replace(d1.allocations[0], proposal_id=honest.proposal_id, size=honest.requested_size,
                                 status=AllocationStatus.FUNDED, reasons=())  # fmt: skip
    fake = dataclasses.replace(d1, cycle=99, decision_id="chain.book1-0000000099", inputs=inputs, allocations=(funded,))
    _, forged = DecisionSigner(Ed25519PrivateKey.generate(), head=decision_hash(d1)).seal(fake, codec, "t")
    produce(db, topics.decisions, [forged], T + 501)

    said: list[str] = []
    svc = embedded(db, topics, ChainSettings(DecisionSigner(signer.key)), said)
    try:
        assert svc.state.cycle == 1  # not 99
        assert not any(r.decision_id == fake.decision_id for r in svc.state.portfolio.reservations.values())
        assert any("forged" in line and "chain.decisions/0/1" in line for line in said), said
        decision = cycle(svc)
    finally:
        close(svc)
    assert decision.cycle == 2 and decision.previous_hash == decision_hash(d1)
    mine = [a for a in decision.allocations if a.proposal_id == honest.proposal_id]
    assert mine and mine[0].size > 0  # funded (CUT by the tail-risk limit at most): nothing was reserved for it


# --- the decision feed, on Kafka ------------------------------------------------------------------------------


@pytest.fixture
def prefix(kafka_bootstrap: str) -> Iterator[str]:
    name = f"chain{uuid.uuid4().hex[:10]}"
    yield name
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(client_config(kafka_bootstrap))
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(name + ".")]
    if mine:
        for future in admin.delete_topics(mine, operation_timeout=30).values():
            future.result(timeout=60)


def test_decision_feed_never_returns_a_forged_decision_and_audit_names_it_on_kafka(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, keys: tuple[Path, Path, DecisionSigner]
) -> None:
    from eventlog.kafka import KafkaEventLog

    _, folder, signer = keys
    topics = Topics(prefix)
    svc = service(KafkaEventLog(kafka_bootstrap, group=group_of(topics, BOOK)), KafkaEventLog(kafka_bootstrap),
                  topics, ChainSettings(signer), [])  # fmt: skip
    try:
        with KafkaEventLog(kafka_bootstrap) as agents:
            agents.produce(topics.proposals, codec.encode(proposal(1)), timestamp_ms=T + 1)
            agents.flush()
        genuine = cycle(svc)
        # Straight onto the decisions topic, signed with a key nobody trusts; then bytes that are no decision.
        _, forged = DecisionSigner(Ed25519PrivateKey.generate(), head=decision_hash(genuine)).seal(
            dataclasses.replace(genuine, cycle=2, decision_id=f"{prefix}.{BOOK}-0000000002"), codec, "t"
        )
        with KafkaEventLog(kafka_bootstrap) as intruder:
            intruder.produce(topics.decisions, forged, timestamp_ms=T + 2)
            intruder.produce(topics.decisions, b"\x00not a decision", timestamp_ms=T + 3)
            intruder.flush()
        with KafkaEventLog(kafka_bootstrap) as agents:
            agents.produce(topics.proposals, codec.encode(proposal(2)), timestamp_ms=T + 4)
            agents.flush()
        second = cycle(svc)
        assert second.cycle == 2 and second.previous_hash == decision_hash(genuine)
    finally:
        close(svc)

    seen: list[Rejection] = []
    trusted = {signer.key_id: signer.public_key}
    with KafkaEventLog(kafka_bootstrap) as feed_log:
        feed = DecisionFeed(feed_log, codec, topics, trusted=trusted, on_rejected=seen.append)
        delivered = feed.drain()
    assert [d.decision_id for d in delivered] == [genuine.decision_id, second.decision_id]
    assert [r.kind for r in seen] == [FORGED, "undecodable"] and feed.rejections == seen
    assert seen[0].where == f"{topics.decisions}/0/{seen[0].offset}"
    with KafkaEventLog(kafka_bootstrap) as feed_log:  # trusting nothing: not one signed decision is executed
        assert DecisionFeed(feed_log, codec, topics).drain() == []

    report = tmp_path / "audit.json"
    code = main(["audit", "--kafka", kafka_bootstrap, "--topic-prefix", prefix, "--report", str(report),
                 "--config", str(config_file(tmp_path)), "--trusted-keys", str(folder)])  # fmt: skip
    findings = json.loads(report.read_text(encoding="utf-8"))["findings"]
    assert code == 1
    assert sorted(f["verdict"] for f in findings) == ["FORGED", "MATCH", "MATCH", "UNDECODABLE"]


# --- status takes the configuration it shows from verified decisions only ------------------------------------

# Another configuration: each key status shows against (the caps, the kill-switch line, the window) differs.
OTHER = CONFIG.replace(market_cap=0.05, kill_switch_drawdown=0.25, opportunity_window_s=120.0)


def forge_config(topics: Topics, last: Decision, config: AllocatorConfig) -> tuple[Decision, bytes]:
    """A decision for the next cycle carrying `config`, linked to `last`, signed with a key nobody trusts."""
    from allocator.service.sequencer import canonical_config

    fake = dataclasses.replace(last, cycle=last.cycle + 1, decision_id=f"{topics.prefix}.{BOOK}-{last.cycle + 1:010d}",
                               config=canonical_config(config), config_hash=config.config_hash)  # fmt: skip
    return DecisionSigner(Ed25519PrivateKey.generate(), head=decision_hash(last)).seal(fake, codec, "t")


def a_fill(decision: Decision) -> Fill:
    """A fill of the decision's first funded allocation: a market with exposure, so status shows its cap."""
    a = next(a for a in decision.allocations if a.size > 0 and a.side is not None)
    return Fill(f"fill-{decision.cycle}", decision.decision_id, a.proposal_id, a.market_id, a.side or Side.BUY,
                a.size, a.size, 0.5, 0.0, FillStatus.FILLED, None, decision.decided_at + 1)  # fmt: skip


def status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], str]:
    """`allocator status ... --json` as data, and the same without --json as text."""
    capsys.readouterr()
    assert main(["status", *argv, "--json"]) == 0
    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert main(["status", *argv]) == 0
    return shown, capsys.readouterr().out


def shows(shown: dict[str, Any], config: AllocatorConfig) -> None:
    """status showed `config`: its hash, its kill-switch line and window, and each market's cap against it."""
    assert shown["configuration"]["config_hash"] == config.config_hash
    assert shown["kill_switch_drawdown"] == config.kill_switch_drawdown
    assert shown["configured_window_ms"] == round(config.opportunity_window_s * 1000)
    equity = shown["equity"]["equity"]
    assert shown["markets"] and all(m["cap"] == pytest.approx(config.market_cap * equity) for m in shown["markets"])


def test_status_shows_the_caps_of_verified_decisions_only(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner], capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("st")
    _d1, d2 = signed_log(db, topics, signer, cycles=2)
    forged_decision, forged = forge_config(topics, d2, OTHER)
    produce(db, topics.fills, [codec.encode(a_fill(d2))], T + 900)
    produce(db, topics.decisions, [forged], T + 901)  # at st.decisions/0/2
    where = ["--log", str(db), "--topic-prefix", topics.prefix]
    projection = ["--database", f"sqlite:///{tmp_path / 'projection.sqlite'}"]
    assert main(["project", *where, *projection, "--once"]) == 0

    shown, text = status(capsys, *where, *projection, "--trusted-keys", str(folder))
    shows(shown, CONFIG)  # not the forged decision's OTHER
    assert shown["configuration"]["source"] == "log" and shown["chain"]["warning"] is None
    (rejection,) = shown["chain"]["rejections"]
    assert (rejection["kind"], rejection["topic"], rejection["offset"]) == (FORGED, topics.decisions, 2)
    assert rejection["decision_id"] == forged_decision.decision_id and "unknown key" in rejection["detail"]
    assert shown["chain"]["verified_decisions"] == 2 and shown["chain"]["head"] == decision_hash(d2)
    refused = {d["cycle"]: d["refused"] for d in shown["decisions"]}
    assert refused == {3: FORGED, 2: None, 1: None}  # the projector recorded the forgery; status names it
    assert f"forged: decision {forged_decision.decision_id} (cycle 3) at st.decisions/0/2: unknown key" in text
    assert "REFUSED: forged" in text and "WARNING" not in text

    # No trusted keys on a signed book: said, and nothing is taken from the log (an unsigned decision appended
    # after the signed ones would count as "before the chain" to a reader that verifies none of them).
    shown, text = status(capsys, *where, *projection)
    assert shown["configuration"]["source"] == "defaults" and "not the log's" in shown["configuration"]["note"]
    assert "no --trusted-keys was given" in shown["chain"]["warning"]
    assert shown["chain"]["signing_keys"] == {signer.key_id: 2, forged_decision.key_id: 1}
    assert text.startswith("WARNING: the book's decisions are signed") and "pass --trusted-keys" in text
    assert {d["refused"] for d in shown["decisions"]} == {"unverified"}  # not told apart from a forgery
    shows(status(capsys, *where, *projection, "--config", str(config_file(tmp_path)))[0], CONFIG)  # the file's

    # The allocator itself, restarted with OTHER: its signed decision records it, and status follows.
    svc = embedded(db, topics, ChainSettings(DecisionSigner(signer.key)), config=OTHER)
    try:
        produce(db, topics.proposals, [codec.encode(proposal(300 + i)) for i in range(4)], T + 1000)
        genuine = cycle(svc)
    finally:
        close(svc)
    assert genuine.cycle == 3 and genuine.config_hash == OTHER.config_hash and genuine.key_id == signer.key_id
    assert main(["project", *where, *projection, "--once"]) == 0
    shown, _ = status(capsys, *where, *projection, "--trusted-keys", str(folder))
    shows(shown, OTHER)
    assert [r["offset"] for r in shown["chain"]["rejections"]] == [2]  # the forgery, still named


def test_replay_cross_checks_its_config_against_verified_decisions_only(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner], capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("rp")
    (d1,) = signed_log(db, topics, signer, cycles=1)
    produce(db, topics.decisions, [forge_config(topics, d1, OTHER)[1]], T + 901)
    replay = ["replay", "--log", str(db), "--topic-prefix", topics.prefix, "--config", str(config_file(tmp_path))]
    capsys.readouterr()
    assert main([*replay, "--database", f"sqlite:///{tmp_path / 'a.sqlite'}", "--trusted-keys", str(folder)]) == 0
    assert "the log ran with hash" not in capsys.readouterr().err  # the file is the verified log's: no forged hash
    assert main([*replay, "--database", f"sqlite:///{tmp_path / 'b.sqlite'}"]) == 0
    err = capsys.readouterr().err
    assert "no cross-check of --config" in err and "no --trusted-keys was given" in err


def test_tail_decisions_with_trusted_keys_marks_what_does_not_verify(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner], capsys: pytest.CaptureFixture[str]
) -> None:
    _, folder, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("tl")
    d1, d2 = signed_log(db, topics, signer, cycles=2)
    forged_decision, forged = forge_config(topics, d2, OTHER)
    produce(db, topics.decisions, [forged], T + 901)
    where = ["--log", str(db), "--topic-prefix", topics.prefix, "--from-beginning", "--max", "3", "--timeout", "10"]
    capsys.readouterr()
    assert main(["tail", "decisions", *where, "--json", "--trusted-keys", str(folder)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["offset"], r["verified"]) for r in rows] == [(0, True), (1, True), (2, False)]
    assert [r["record"]["decision_id"] for r in rows[:2]] == [d1.decision_id, d2.decision_id]
    assert rows[2]["rejection"]["kind"] == FORGED and rows[2]["rejection"]["decision_id"] == forged_decision.decision_id
    assert main(["tail", "decisions", *where, "--trusted-keys", str(folder)]) == 0
    text = capsys.readouterr().out
    assert f"REFUSED forged: decision {forged_decision.decision_id} (cycle 3) at tl.decisions/0/2" in text
    # Unverified by default, and said so; --trusted-keys is for decisions only.
    assert main(["tail", "decisions", *where, "--json"]) == 0
    captured = capsys.readouterr()
    assert "unverified" in captured.err and all("verified" not in json.loads(x) for x in captured.out.splitlines())
    assert main(["tail", "governor", "--log", str(db), "--topic-prefix", "tl", "--trusted-keys", str(folder)]) == 2
    assert "goes with `tail decisions` only" in capsys.readouterr().err


@pytest.mark.kafka
def test_status_on_kafka_ignores_a_forged_configuration_and_follows_a_signed_one(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, keys: tuple[Path, Path, DecisionSigner],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from eventlog.kafka import KafkaEventLog

    _, folder, signer = keys
    topics = Topics(prefix)

    def allocator(config: AllocatorConfig) -> AllocatorService:
        return service(KafkaEventLog(kafka_bootstrap, group=group_of(topics, BOOK)), KafkaEventLog(kafka_bootstrap),
                       topics, ChainSettings(DecisionSigner(signer.key)), [], config)  # fmt: skip

    def send(topic: str, values: list[bytes], ts: int) -> None:
        with KafkaEventLog(kafka_bootstrap) as writer:
            for value in values:
                writer.produce(topic, value, timestamp_ms=ts)
            writer.flush()

    svc = allocator(CONFIG)
    try:
        send(topics.proposals, [codec.encode(proposal(i)) for i in range(6)], T + 1)
        genuine = cycle(svc)
    finally:
        close(svc)
    forged_decision, forged = forge_config(topics, genuine, OTHER)
    send(topics.fills, [codec.encode(a_fill(genuine))], T + 2)
    send(topics.decisions, [forged], T + 3)
    where = ["--kafka", kafka_bootstrap, "--topic-prefix", prefix]
    projection = ["--database", f"sqlite:///{tmp_path / 'projection.sqlite'}"]
    assert main(["project", *where, *projection, "--once"]) == 0
    shown, text = status(capsys, *where, *projection, "--trusted-keys", str(folder))
    shows(shown, CONFIG)
    (rejection,) = shown["chain"]["rejections"]
    assert (rejection["kind"], rejection["decision_id"]) == (FORGED, forged_decision.decision_id)
    assert f"at {prefix}.decisions/0/{rejection['offset']}: unknown key" in text  # after a transaction marker

    svc = allocator(OTHER)
    try:
        send(topics.proposals, [codec.encode(proposal(100 + i)) for i in range(4)], T + 4)
        assert cycle(svc).config_hash == OTHER.config_hash
    finally:
        close(svc)
    assert main(["project", *where, *projection, "--once"]) == 0
    shown, _ = status(capsys, *where, *projection, "--trusted-keys", str(folder))
    shows(shown, OTHER)


# --- the CLI: keys new, control --key -------------------------------------------------------------------------


def test_keys_new_prints_the_id_and_public_file_never_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "new", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    (private,) = (tmp_path / "k").glob("*.key")
    key_id = private.stem
    assert f"key id {key_id}" in out and str(tmp_path / "k" / f"{key_id}.pub") in out
    assert "PRIVATE" not in out and private.read_text(encoding="utf-8").splitlines()[1] not in out
    from allocator.service.keys import public_key_hex

    (entry,) = [line for line in out.splitlines() if line.startswith("operator_keys entry ")]
    ring = json.loads(entry.removeprefix("operator_keys entry "))
    assert ring == {key_id: public_key_hex(load_signing_key(private).public_key())}
    assert AllocatorConfig.from_mapping({"operator_keys": ring}).operator_keys == ring  # a keyring as printed


def test_serve_warns_that_unsigned_decisions_can_be_forged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--log", str(tmp_path / "log.sqlite"), "--topic-prefix", "w"]) == 0
    code = main(["serve", "--log", str(tmp_path / "log.sqlite"), "--topic-prefix", "w", "--duration", "0.1"])
    assert code == 0
    err = capsys.readouterr().err
    assert "UNSIGNED" in err and "forge" in err and "operator commands are accepted UNSIGNED" in err


# --- operator commands: the keyring in the fold --------------------------------------------------------------


def operator_keys(n: int) -> tuple[list[Ed25519PrivateKey], dict[str, str]]:
    from allocator.service.keys import public_key_hex

    private = [Ed25519PrivateKey.generate() for _ in range(n)]
    return private, {key_id_of(k.public_key()): public_key_hex(k.public_key()) for k in private}


def command(action: Command, i: int = 1) -> ControlCommand:
    return ControlCommand(f"c{i}", "ops", action, "because", None, T + i, book="allocator.main")


def test_the_keyring_refuses_unsigned_unknown_and_badly_signed_commands_with_an_event() -> None:
    private, ring = operator_keys(1)
    book = PortfolioState.new(CONFIG.replace(operator_keys=ring))
    stranger = Ed25519PrivateKey.generate()
    tampered = dataclasses.replace(sign(command(Command.HALT), private[0]), reason="other")
    for bad, why in ((command(Command.HALT), "unsigned"), (sign(command(Command.HALT), stranger), "unknown key"),
                     (tampered, "bad signature")):  # fmt: skip
        changes = book.apply(bad)
        assert len(changes) == 1 and changes[0].governor is Governor.OPERATOR
        assert changes[0].old_state == changes[0].new_state == "ACTIVE" and why in changes[0].cause
        assert book.governor.state is GovernorState.ACTIVE  # no effect
    assert book.apply(sign(command(Command.HALT), private[0]))  # a signed one by a key of the ring
    assert book.governor.state is GovernorState.PAUSED
    # Without a keyring, unsigned commands are accepted (the embedded-trust default).
    open_book = PortfolioState.new(CONFIG)
    open_book.apply(command(Command.HALT))
    assert open_book.governor.state is GovernorState.PAUSED


def test_a_quorum_of_two_resets_the_kill_switch_only_with_two_distinct_keys_in_the_window() -> None:
    private, ring = operator_keys(2)
    book = PortfolioState.new(CONFIG.replace(operator_keys=ring, kill_switch_reset_quorum=2))
    book.governor = dataclasses.replace(book.governor, kill_switch_tripped=True)
    book.last_time = T
    first = book.apply(sign(command(Command.RESET_KILL_SWITCH, 1), private[0]))
    assert "awaits a second" in first[0].cause and book.governor.kill_switch_tripped
    again = book.apply(sign(command(Command.RESET_KILL_SWITCH, 2), private[0]))  # the same key twice
    assert "awaits a second" in again[0].cause and book.governor.kill_switch_tripped
    book.last_time = T + 301_000  # past the window: the first vote lapsed
    late = book.apply(sign(command(Command.RESET_KILL_SWITCH, 3), private[1]))
    assert "awaits a second" in late[0].cause and book.governor.kill_switch_tripped
    book.last_time = T + 302_000
    done = book.apply(sign(command(Command.RESET_KILL_SWITCH, 4), private[0]))
    assert [c.governor for c in done] == [Governor.KILL_SWITCH] and not book.governor.kill_switch_tripped


def test_the_keyring_is_validated_and_cannot_be_changed_by_set_limits() -> None:
    _, ring = operator_keys(1)
    (key_id, hex_key) = next(iter(ring.items()))
    with pytest.raises(ConfigError, match="operator_keys"):
        CONFIG.replace(operator_keys={"0" * 16: hex_key})
    with pytest.raises(ConfigError, match="operator_keys"):
        CONFIG.replace(operator_keys={key_id: "zz"})
    with pytest.raises(ConfigError, match="kill_switch_reset_quorum"):
        CONFIG.replace(kill_switch_reset_quorum=2)  # needs two keys
    assert CONFIG.replace(operator_keys={}).config_hash == CONFIG.config_hash  # left out at its default
    book = PortfolioState.new(CONFIG)
    changes = book.apply(dataclasses.replace(command(Command.SET_LIMITS), limits={"kill_switch_reset_quorum": 1.0}))
    assert "configuration only" in changes[0].cause


def test_allocator_control_key_signs_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_id, private, _ = new_key_pair(tmp_path / "ops")
    log = ["--log", str(tmp_path / "log.sqlite"), "--topic-prefix", "ops"]
    assert main(["init", *log]) == 0
    assert main(["control", "halt", "--reason", "r", "--operator", "alice", "--key", str(private), *log]) == 0
    assert f"signed by key {key_id}" in capsys.readouterr().out
    with EmbeddedEventLog(tmp_path / "log.sqlite") as reader:
        reader.assign([Topics("ops").control])
        (record,) = reader.poll(10, 1.0)
    sent = codec.decode(record.value or b"")
    assert isinstance(sent, ControlCommand) and sent.key_id == key_id
    from allocator.service.keys import load_trusted_keys
    from schemas.signing import check_signature

    assert check_signature(sent, load_trusted_keys(tmp_path / "ops")) is None


def test_a_signed_command_copied_onto_another_books_log_moves_nothing_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two books share one operator's key; `allocator control --book alpha` names its book under the signature, so
    the record copied onto book beta's control topic is refused there by the running allocator, with a reason."""
    from allocator.service.keys import public_key_hex

    key_id, private, _ = new_key_pair(tmp_path / "ops")
    ring = {key_id: public_key_hex(load_signing_key(private).public_key())}
    config = tmp_path / "book.json"
    config.write_text(json.dumps({"scenario_count": 300, "operator_keys": ring}), encoding="utf-8")
    alpha, beta = ["--log", str(tmp_path / "alpha.sqlite")], ["--log", str(tmp_path / "beta.sqlite")]
    for log in (alpha, beta):
        assert main(["init", *log, "--config", str(config)]) == 0
    assert main(["control", "halt", "--book", "alpha", "--reason", "r", "--operator", "alice", "--key", str(private),
                 *alpha]) == 0  # fmt: skip
    assert "for book allocator.alpha signed by key" in capsys.readouterr().out
    control = Topics().control
    with EmbeddedEventLog(tmp_path / "alpha.sqlite") as reader:
        reader.assign([control])
        (record,) = reader.poll(10, 1.0)
    with EmbeddedEventLog(tmp_path / "beta.sqlite") as writer:
        writer.produce(control, record.value, key=record.key, timestamp_ms=record.timestamp_ms)
        writer.flush()

    def served(book: str, log: list[str]) -> tuple[Decision, list[GovernorEvent]]:
        serve = ["serve", "--book", book, *log, "--config", str(config), "--max-cycles", "1", "--duration", "60"]
        assert main(serve) == 0
        with EmbeddedEventLog(log[1]) as reader:
            reader.assign([Topics().decisions, Topics().governor])
            events = [codec.decode(r.value or b"") for r in reader.poll(100, 1.0)]
        (decision,) = [e for e in events if isinstance(e, Decision)]
        return decision, [e for e in events if isinstance(e, GovernorEvent)]

    decision, _ = served("alpha", alpha)
    assert decision.governor_state is GovernorState.PAUSED  # its own book acts on it
    decision, events = served("beta", beta)
    assert decision.governor_state is GovernorState.ACTIVE
    assert any("for book 'allocator.alpha', not this book 'allocator.beta'" in e.cause for e in events)


def _one_cycle_book(tmp_path: Path, *serve: str) -> list[str]:
    """A book on an embedded log that decided the example proposals in one cycle (served with `serve`'s flags);
    returns the --log flags."""
    log = ["--log", str(tmp_path / "log.sqlite")]
    examples = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"
    assert main(["init", *log]) == 0
    assert main(["propose", str(examples), *log]) == 0
    assert main(["serve", *log, *serve, "--max-cycles", "1", "--duration", "60"]) == 0
    return log


def test_serve_refuses_a_signed_book_it_cannot_verify_instead_of_starting_it_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Restarted without the allocator's key, serve verified none of the book's decisions and started a new book
    from nothing beside the chain (the configuration, keyring and equity gone): it must refuse to start instead."""
    key_id, private, _ = new_key_pair(tmp_path / "alloc")
    log = _one_cycle_book(tmp_path, "--signing-key", str(private))

    def decisions() -> int:
        with EmbeddedEventLog(tmp_path / "log.sqlite") as reader:
            reader.assign([Topics().decisions])
            return len(reader.poll(100, 0.5))

    assert decisions() == 1
    assert main(["control", "halt", "--reason", "r", "--operator", "o", *log]) == 0  # a batch: a cycle would run
    capsys.readouterr()
    assert main(["serve", *log, "--max-cycles", "2", "--duration", "5"]) == 2
    err = capsys.readouterr().err
    assert f"signed (key {key_id} on 1)" in err and "--trusted-keys" in err and "start the book over" in err
    assert decisions() == 1
    assert main(["serve", *log, "--signing-key", str(private), "--max-cycles", "2", "--duration", "60"]) == 0
    assert decisions() == 2


def test_serve_refuses_a_second_book_id_on_a_topic_prefix_that_has_another_books_decisions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --book other` on a log with book main's decisions rebuilt main's state and decided for it under
    another name: two books spending one wallet's inputs. It is refused, naming the book the log holds."""
    log = _one_cycle_book(tmp_path, "--book", "main")
    capsys.readouterr()
    assert main(["serve", "--book", "other", *log, "--max-cycles", "2", "--duration", "5"]) == 2
    err = capsys.readouterr().err
    assert "the decisions on this log are book allocator.main's, not allocator.other's" in err
    assert main(["init", *log, "--topic-prefix", "other"]) == 0
    assert (
        main(["serve", "--book", "other", *log, "--topic-prefix", "other", "--max-cycles", "1", "--duration", "2"]) == 0
    )


def test_serve_after_a_key_rotation_without_the_earlier_key_says_to_trust_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal said "no trusted key (k2) signed one" although k2 had: its decisions link to k1's."""
    _, k1, pub1 = new_key_pair(tmp_path / "k1")
    id2, k2, pub2 = new_key_pair(tmp_path / "k2")
    log = _one_cycle_book(tmp_path, "--signing-key", str(k1))
    assert main(["control", "halt", "--reason", "r", "--operator", "o", *log]) == 0
    rotated = ["--signing-key", str(k2), "--trusted-keys", str(pub1), "--max-cycles", "2", "--duration", "60"]
    assert main(["serve", *log, *rotated]) == 0
    capsys.readouterr()
    assert main(["serve", *log, "--signing-key", str(k2), "--max-cycles", "3", "--duration", "5"]) == 2
    err = capsys.readouterr().err
    assert f"those of trusted key {id2} link to decisions signed by" in err and "trust the earlier key too" in err
    # --trusted-keys is repeatable: both keys are trusted (it kept only the last, and the audit found forgeries).
    report = ["--report", str(tmp_path / "audit.json")]
    assert main(["audit", *log, "--trusted-keys", str(pub1), "--trusted-keys", str(pub2), *report]) == 0
    assert main(["audit", *log, "--trusted-keys", str(pub2), *report]) == 1


def _tamper(db: Path, topic: str, offset: int, how: str) -> None:
    """Edit the embedded log file as anyone who can write it could: delete a record, or flip one byte of its value."""
    import sqlite3

    with sqlite3.connect(db) as connection:
        if how == "delete":
            connection.execute('DELETE FROM records WHERE topic = ? AND "offset" = ?', (topic, offset))
            return
        (value,) = connection.execute(
            'SELECT value FROM records WHERE topic = ? AND "offset" = ?', (topic, offset)
        ).fetchone()
        changed = bytearray(value)
        changed[len(changed) // 2] ^= 0x01
        connection.execute(
            'UPDATE records SET value = ? WHERE topic = ? AND "offset" = ?', (bytes(changed), topic, offset)
        )


@pytest.mark.parametrize("how", ["delete", "flip"])
def test_serve_refuses_a_signed_chain_cut_in_the_middle_instead_of_deciding_its_cycles_again(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner], how: str
) -> None:
    """An outside probe: with one decision deleted (or one byte changed) in the middle of a signed book's log, serve
    folded the chain up to it, skipped every later genuine decision as reordered, and decided their cycles again:
    proposals already settled were decided twice, and the new decision verified. It must refuse to start."""
    _, _, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    signed_log(db, topics, signer, cycles=4)
    _tamper(db, topics.decisions, 1, how)
    with pytest.raises(UnverifiedBook, match=r"verified chain ends at cycle 1, but [23] later decision\(s\) signed"):
        embedded(db, topics, ChainSettings(DecisionSigner(signer.key)))
    with EmbeddedEventLog(db) as reader:
        assert reader.end_offsets([topics.decisions])[TopicPartition(topics.decisions, 0)] == 4  # nothing appended


def test_serve_starts_beside_a_copy_of_a_decision_already_folded(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner]
) -> None:
    """A replayed copy of a genuine decision (its cycle already folded) is named and skipped, not a cut chain: anyone
    who can append to the log must not be able to stop the book with a copy."""
    _, _, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    signed_log(db, topics, signer, cycles=2)
    _copy_then_restart(db, topics.decisions, 0, topics, signer, named="chain.decisions/0/2")


def _copy_then_restart(db: Path, source: str, offset: int, topics: Topics, signer: DecisionSigner, named: str) -> None:
    """Append a copy of the decision at `source`@`offset` to the book's decisions, restart serve with the book's key,
    and check it starts at cycle 2, naming the copy (`named`) as reordered and skipping it."""
    with EmbeddedEventLog(db) as reader:
        reader.assign([source])
        value = reader.poll(10, 0.5)[offset].value
    assert value is not None
    produce(db, topics.decisions, [value], T + 999)
    said: list[str] = []
    svc = embedded(db, topics, ChainSettings(DecisionSigner(signer.key)), said)
    try:
        assert svc.state.cycle == 2
        assert any("reordered" in line and named in line for line in said), said
    finally:
        close(svc)


def test_serve_without_its_signing_key_refuses_to_append_unsigned_decisions_to_a_signed_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: `serve --trusted-keys` without `--signing-key` verified the chain, then published an unsigned
    decision onto it, which every reader refuses and a signed restart decided again."""
    _, private, public = new_key_pair(tmp_path / "alloc")
    log = _one_cycle_book(tmp_path, "--signing-key", str(private))
    assert main(["control", "halt", "--reason", "r", "--operator", "o", *log]) == 0  # a batch: a cycle would run
    capsys.readouterr()
    assert main(["serve", *log, "--trusted-keys", str(public), "--max-cycles", "2", "--duration", "5"]) == 2
    assert "has no --signing-key" in capsys.readouterr().err
    with EmbeddedEventLog(tmp_path / "log.sqlite") as reader:
        assert reader.end_offsets([Topics().decisions])[TopicPartition(Topics().decisions, 0)] == 1


def test_audit_names_a_missing_decision_once_before_the_mismatches_it_causes(tmp_path: Path) -> None:
    """An outside probe: with one decision deleted from an unsigned book, every later decision read `MISMATCH cycle:
    recorded N, re-run N-1` and nothing named the cause. The gap is now a finding of its own, first; the count of
    decisions is the records' (a HEAD_NOT_REACHED finding was counted as a decision too). On a signed book the
    decisions after the cut are refused as reordered instead (above)."""
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    svc = embedded(db, topics, ChainSettings())
    try:
        for c in range(4):
            produce(db, topics.proposals, [codec.encode(proposal(10 * c + i)) for i in range(6)], T + 10 * c)
            cycle(svc)
    finally:
        close(svc)
    _tamper(db, topics.decisions, 1, "delete")
    code, report, _ = audit(db, topics, tmp_path, "--head", "0" * 64)
    assert code == 1
    findings = report["findings"]
    assert isinstance(findings, list)
    verdicts = [(f["cycle"], f["verdict"]) for f in findings]
    assert verdicts[:3] == [(1, "MATCH"), (2, "CYCLE_GAP"), (3, "MISMATCH")], verdicts
    assert "no verified decision for cycle 2 before chain.book1-0000000003" in findings[1]["problems"][0]
    assert verdicts[-1][1] == "HEAD_NOT_REACHED"
    assert report["decisions"] == 3  # the records of cycles 1, 3 and 4


def test_a_private_key_other_users_may_read_is_warned_of(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: `chmod 644` on the allocator's key went unremarked; `keys new` writes 0600, and a key that
    others may read lets them sign as its owner."""
    import os

    _, private, _ = new_key_pair(tmp_path / "alloc")
    log = ["--log", str(tmp_path / "log.sqlite")]
    assert main(["init", *log]) == 0
    capsys.readouterr()
    assert main(["control", "halt", "--reason", "r", "--operator", "o", "--key", str(private), *log]) == 0
    assert "warning" not in capsys.readouterr().err  # as `keys new` wrote it
    os.chmod(private, 0o644)
    assert main(["control", "halt", "--reason", "r", "--operator", "o", "--key", str(private), *log]) == 0
    assert f"warning: the private key {private} may be read by other users of this machine (mode 0644)" in (
        capsys.readouterr().err
    )
    assert main(["serve", *log, "--signing-key", str(tmp_path / "alloc"), "--max-cycles", "1", "--duration", "60"]) == 0
    assert "allocator serve: warning: the private key" in capsys.readouterr().err


def test_serve_starts_beside_another_book_s_decision_signed_by_the_same_key(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner]
) -> None:
    """An outside probe: a decision of another book signed by the same key (a staging copy, say), copied onto this
    book's log with a later cycle, was taken for a cut chain and stopped the book: it is another book's, skipped."""
    _, _, signer = keys
    db, topics, other = tmp_path / "log.sqlite", Topics("chain"), Topics("other")
    signed_log(db, topics, signer, cycles=2)
    signed_log(db, other, DecisionSigner(signer.key), cycles=3)
    _copy_then_restart(db, other.decisions, 2, topics, signer, named="other.book1-0000000003")


def serve_cycles(
    path: Path, cycles: range, configs: Mapping[int, Path] | None = None, serve_options: Sequence[str] = ()
) -> None:
    """Serves the embedded book at `path` (its topics made) for each of `cycles`, each on the example proposals under
    fresh ids, with `--config configs[cycle]` where given: a cycle without one records no configuration (unless the
    book's first)."""
    examples = json.loads((Path(__file__).parent.parent / "examples" / "proposals.json").read_text(encoding="utf-8"))
    log = ["--log", str(path)]
    for cycle in cycles:
        proposals = path.parent / f"proposals-{cycle}.json"
        fresh = [{**p, "proposal_id": f"{p['proposal_id']}-c{cycle}"} for p in examples]
        proposals.write_text(json.dumps(fresh), encoding="utf-8")
        config = (configs or {}).get(cycle)
        serve = ["serve", *log, *(["--config", str(config)] if config is not None else []), *serve_options,
                 "--max-cycles", str(cycle), "--duration", "60"]  # fmt: skip
        for argv in (["propose", str(proposals), *log], serve):
            assert main(argv) == 0, argv


def _book_with_an_operator_key(tmp_path: Path, *serve_options: str, cycles: int = 1) -> tuple[str, Path, Path]:
    """An embedded book whose configuration names one operator key, after `cycles` cycles of the example proposals
    (the first records the configuration, the later ones none): (the key's id, its private key file, the log)."""
    from allocator.service.keys import public_key_hex

    key_id, private, _ = new_key_pair(tmp_path / "ops")
    ring = {key_id: public_key_hex(load_signing_key(private).public_key())}
    config = tmp_path / "book.json"
    config.write_text(json.dumps({"scenario_count": 300, "operator_keys": ring}), encoding="utf-8")
    path = tmp_path / "log.sqlite"
    assert main(["init", "--log", str(path), "--config", str(config)]) == 0
    serve_cycles(path, range(1, cycles + 1), {1: config}, serve_options)
    return key_id, private, path


def test_control_refuses_a_command_the_book_s_operator_keys_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: on a book whose configuration names operator keys, an unsigned `allocator control halt`
    printed "sent HALT ... the allocator acts on it in its next cycle" and exited 0, and the book refused it: an
    emergency halt that looked done. The command line now reads the book's keyring from its newest decision and
    refuses an unsigned command, or one signed by another key, before sending anything."""
    key_id, private, path = _book_with_an_operator_key(tmp_path)
    _, stranger, _ = new_key_pair(tmp_path / "other")
    log = ["--log", str(path)]
    capsys.readouterr()
    halt = ["control", "halt", "--reason", "venue down", "--operator", "alice", *log]
    assert main(halt) == 2
    err = capsys.readouterr().err
    assert f"book main takes only commands signed by one of its operator keys ({key_id}): pass --key FILE" in err
    assert main([*halt, "--key", str(stranger)]) == 2
    assert f"is not one of book main's operator keys ({key_id})" in capsys.readouterr().err
    with EmbeddedEventLog(path) as reader:
        assert sum(reader.end_offsets([Topics().control]).values()) == 0  # nothing was sent
    assert main([*halt, "--key", str(private)]) == 0
    assert f"signed by key {key_id}" in capsys.readouterr().out


READS = ["read as written", "read as written, backwards a window at a time", "verified"]
"""The ways `control` reads the log's decisions: the newest records and backwards from them (16 at a time, then
windows twice as long), the same from a window of one record (so the scan moves back over several windows), or
the whole topic verified under the allocator's key (`--trusted-keys`)."""


def _reading(read: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`control`'s options for one of READS, on a book signed by the key in tmp_path/alloc."""
    if read == "read as written, backwards a window at a time":
        monkeypatch.setattr("cli.book._NEWEST_SPAN", 1, raising=False)
    return ["--trusted-keys", str(tmp_path / "alloc")] if read == "verified" else []


def configurations_recorded(path: Path) -> list[tuple[int, bool]]:
    """Each decision on the embedded log at `path`: its cycle, and whether it records a configuration."""
    with EmbeddedEventLog(path) as reader:
        reader.assign([Topics().decisions])
        decisions = [codec.decode(r.value or b"") for r in reader.poll(max_records=100, timeout_s=1.0)]
    return [(d.cycle, d.config is not None) for d in decisions if isinstance(d, Decision)]


def _commands_sent(path: Path) -> int:
    with EmbeddedEventLog(path) as reader:
        return sum(reader.end_offsets([Topics().control]).values())


@pytest.mark.parametrize("read", READS)
def test_control_judges_the_keyring_by_the_configuration_the_log_last_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """The keyring check read the newest decision's configuration, but a decision records one only when the book
    adopts it (its first decision, or a `serve --config` that differs): from cycle 2 on the newest records none, so
    on a book that had run more than one cycle an unsigned HALT was "sent" (exit 0) and the book refused it. The
    check reads the last decision that records a configuration, and names its cycle."""
    new_key_pair(tmp_path / "alloc")
    key_id, private, path = _book_with_an_operator_key(tmp_path, "--signing-key", str(tmp_path / "alloc"), cycles=3)
    assert configurations_recorded(path) == [(1, True), (2, False), (3, False)]
    _, stranger, _ = new_key_pair(tmp_path / "other")
    halt = ["control", "halt", "--reason", "venue down", "--operator", "alice", "--log", str(path)]
    halt += _reading(read, tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(halt) == 2
    err = capsys.readouterr().err
    assert f"book main takes only commands signed by one of its operator keys ({key_id}): pass --key FILE" in err
    assert "(its keyring as the log last recorded its configuration, in the decision of cycle 1), nothing sent" in err
    assert ("read from the log's decisions unverified" in err) == (read != "verified")
    assert main([*halt, "--key", str(stranger)]) == 2
    assert f"is not one of book main's operator keys ({key_id}); the command would be refused" in (
        capsys.readouterr().err
    )
    assert _commands_sent(path) == 0  # nothing was sent
    assert main([*halt, "--key", str(private)]) == 0
    assert f"signed by key {key_id}" in capsys.readouterr().out
    assert _commands_sent(path) == 1


@pytest.mark.parametrize("read", READS)
def test_control_judges_by_a_configuration_recorded_after_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """A book served with configuration A (operator key 1, a 300 s opportunity window), then with a differing B
    (operator key 2, a 10 s window), which its cycle-2 decision records, then three cycles that record none:
    `control` judges both the keyring and a set-limits by B, the configuration the log last recorded, neither by A
    (the first decision's) nor by nothing (the newest's)."""
    from allocator.service.keys import public_key_hex

    new_key_pair(tmp_path / "alloc")
    operators = [new_key_pair(tmp_path / f"ops{i}")[:2] for i in (1, 2)]
    configs = {}
    for cycle, ((key_id, private), window) in enumerate(zip(operators, (300, 10), strict=True), start=1):
        ring = {key_id: public_key_hex(load_signing_key(private).public_key())}
        configs[cycle] = tmp_path / f"book-{cycle}.json"
        configs[cycle].write_text(
            json.dumps({"scenario_count": 300, "operator_keys": ring, "opportunity_window_s": window}), encoding="utf-8"
        )
    path = tmp_path / "log.sqlite"
    assert main(["init", "--log", str(path), "--config", str(configs[1])]) == 0
    serve_cycles(path, range(1, 6), configs, ["--signing-key", str(tmp_path / "alloc")])
    assert configurations_recorded(path) == [(1, True), (2, True), (3, False), (4, False), (5, False)]
    (a_id, a_key), (b_id, b_key) = operators
    control = ["--reason", "r", "--operator", "alice", "--log", str(path), *_reading(read, tmp_path, monkeypatch)]
    capsys.readouterr()
    assert main(["control", "halt", *control, "--key", str(a_key)]) == 2
    err = capsys.readouterr().err
    assert f"--key: key {a_id} is not one of book main's operator keys ({b_id})" in err
    assert "as the log last recorded its configuration, in the decision of cycle 2" in err
    set_limits = ["control", "set-limits", *control, "--key", str(b_key)]
    assert main([*set_limits, "--set", "min_window_s=20"]) == 2  # within A's window, beyond B's
    err = capsys.readouterr().err
    assert "--set: min_window_s: must not exceed opportunity_window_s" in err
    assert "under book main's configuration as the log last recorded it, in the decision of cycle 2" in err
    assert _commands_sent(path) == 0
    assert main([*set_limits, "--set", "min_window_s=5"]) == 0
    assert main(["control", "halt", *control, "--key", str(b_key)]) == 0
    assert _commands_sent(path) == 2


@pytest.mark.parametrize(("short_reads", "found"), [(0, True), (1, True), (2, False)])
def test_a_window_read_short_is_read_again_then_judges_nothing(tmp_path: Path, short_reads: int, found: bool) -> None:
    """Reading backwards for the last decision that records a configuration, a window whose read stopped short of
    its top (an empty poll on a slow broker: the reader's position below it) may have missed that decision: it is
    read once more, and if still short nothing is judged, rather than a configuration older than the one missed."""
    from cli.book import _configured_before

    _, _, path = _book_with_an_operator_key(tmp_path, cycles=3)

    class SlowLog(EmbeddedEventLog):
        shorts = short_reads

        def position(self, tp: TopicPartition) -> int:
            if self.shorts:
                self.shorts -= 1
                return 0
            return super().position(tp)

    def decision(record: Record) -> Decision | None:
        event = codec.decode(record.value or b"")
        return event if isinstance(event, Decision) else None

    with SlowLog(path) as log:
        # Nothing read yet above offset 3, the end: the first window read is offsets 0 to 2, where cycle 1's is.
        last = _configured_before(log, TopicPartition(Topics().decisions, 0), 3, [], decision)
    assert (last[1].cycle if last is not None else None) == (1 if found else None)


def _book_whose_limits_an_operator_changed(tmp_path: Path) -> tuple[str, Path, Path]:
    """A signed book with one operator key whose position_cap a SET_LIMITS changed after cycle 1, then three cycles:
    no decision after the first records a configuration, and the hash in force changed. (key id, its private key,
    the log)."""
    new_key_pair(tmp_path / "alloc")
    signed = ["--signing-key", str(tmp_path / "alloc")]
    key_id, private, path = _book_with_an_operator_key(tmp_path, *signed)
    assert main(["control", "set-limits", "--set", "position_cap=0.015", "--reason", "r", "--operator", "alice",
                 "--key", str(private), "--log", str(path)]) == 0  # fmt: skip
    serve_cycles(path, range(2, 5), None, signed)
    with EmbeddedEventLog(path) as reader:
        reader.assign([Topics().decisions])
        hashes = [d.config_hash for r in reader.poll(max_records=100, timeout_s=1.0)
                  if isinstance(d := codec.decode(r.value or b""), Decision)]  # fmt: skip
    assert len(set(hashes)) == 2 and hashes[0] != hashes[-1]  # the SET_LIMITS took: the hash in force changed
    return key_id, private, path


@pytest.mark.parametrize("read", READS)
def test_control_judges_a_book_whose_limits_an_operator_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """A SET_LIMITS changes the configuration in force (each later decision's config_hash) without a decision
    recording it: the newest decision's hash is then not the first's recorded configuration's, and control reads back
    to the last decision that records one (here the first) and still refuses an unsigned HALT."""
    key_id, _, path = _book_whose_limits_an_operator_changed(tmp_path)
    capsys.readouterr()
    halt = ["control", "halt", "--reason", "venue down", "--operator", "alice", "--log", str(path)]
    assert main([*halt, *_reading(read, tmp_path, monkeypatch)]) == 2
    err = capsys.readouterr().err
    assert f"takes only commands signed by one of its operator keys ({key_id})" in err
    assert "in the decision of cycle 1" in err
    assert _commands_sent(path) == 1  # the SET_LIMITS only


def test_control_says_what_it_could_not_judge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outside probe: control sent commands the book then refused, and said nothing, where its check judged by
    a configuration a SET_LIMITS had changed since (it also refused one the book would take), where no decision
    recording the configuration lay within the offsets it reads back, and where the decisions could not be read at
    all (a damaged file). Each is now a warning, and the command is sent for the book to judge."""
    _, private, path = _book_whose_limits_an_operator_changed(tmp_path)
    log = ["--log", str(path)]
    signed = ["--reason", "r", "--operator", "alice", "--key", str(private), *log]
    capsys.readouterr()
    # 400 s is above the recorded (and in force) 300 s window: the recorded configuration is stale, so only said.
    assert main(["control", "set-limits", "--set", "min_window_s=400", *signed]) == 0
    err = capsys.readouterr().err
    assert "min_window_s: must not exceed opportunity_window_s" in err
    assert "sent anyway, since a SET_LIMITS has changed the configuration in force since" in err
    assert main(["control", "set-limits", "--set", "min_window_s=5", *signed]) == 0
    assert "which a SET_LIMITS has changed since" in capsys.readouterr().err
    monkeypatch.setattr("cli.book._NEWEST_SPAN", 1)  # the newest record only, then one offset back, no further
    monkeypatch.setattr("cli.book._SCAN_LIMIT", 1)
    assert main(["control", "halt", "--reason", "r", "--operator", "alice", *log]) == 0
    assert "no decision recording the book's configuration was found" in capsys.readouterr().err
    assert _commands_sent(path) == 4
    with sqlite3.connect(path) as db:
        db.execute("UPDATE records SET offset = 'x' WHERE topic = 'allocator.decisions' AND offset = 2")
    assert main(["control", "halt", "--reason", "r", "--operator", "alice", *log]) == 0
    err = capsys.readouterr().err
    assert "the book's decisions could not be read" in err and "changed outside this log" in err


def test_an_unchanged_configuration_is_judged_without_reading_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the newest decision's config_hash is the hash of the configuration the first records (a book whose
    configuration never changed), that configuration is in force: control judges by it without reading the log
    back (an emergency HALT on a long log must not wait for a whole read); and a read back stops after
    `_SCAN_LIMIT` offsets, judging nothing."""
    import eventlog.port
    from cli.book import _configured_before

    _, _, path = _book_with_an_operator_key(tmp_path, cycles=3)

    def decision(record: Record) -> Decision | None:
        event = codec.decode(record.value or b"")
        return event if isinstance(event, Decision) else None

    def no_read_back(*args: object, **kwargs: object) -> list[Record]:
        raise AssertionError("read back")

    tp = TopicPartition(Topics().decisions, 0)
    with EmbeddedEventLog(path) as log:
        first = eventlog.port.record_at(log, tp, 0, polls=4)
        newest = eventlog.port.records_before(log, tp, 3, span=1)
        assert first is not None and [decision(r).cycle for r in newest] == [3]  # type: ignore[union-attr]
        monkeypatch.setattr(eventlog.port, "records_before", no_read_back)
        last = _configured_before(log, tp, 2, newest, decision, first)
        assert last is not None and last[1].cycle == 1
        monkeypatch.undo()
        # Without the first record to compare with, it reads back, and not beyond `_SCAN_LIMIT` offsets.
        last = _configured_before(log, tp, 2, newest, decision)
        assert last is not None and last[1].cycle == 1
        monkeypatch.setattr("cli.book._SCAN_LIMIT", 1)
        assert _configured_before(log, tp, 2, newest, decision) is None


@pytest.mark.parametrize("forgery", ["unsigned", "signature kept", "signed by another key"])
def test_a_forged_newest_decision_cannot_make_control_refuse_a_genuine_halt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], forgery: str
) -> None:
    """A decision appended to a signed book's log by anyone who can write it, naming other operator keys (and
    another book), made `control halt` refuse the operator's genuinely signed HALT: "not one of book beta's operator
    keys", nothing sent. Without --trusted-keys the refusal now says it rests on unverified decisions and how to
    count only the allocator's; with the allocator's key the forgery is ignored and the HALT is sent. Keys that
    verify none of a signed book's decisions are refused by name."""
    from allocator.service.keys import public_key_hex

    new_key_pair(tmp_path / "alloc")  # the allocator's, in a folder serve --signing-key takes
    ops_id, ops, path = _book_with_an_operator_key(tmp_path, "--signing-key", str(tmp_path / "alloc"))
    _, stranger, _ = new_key_pair(tmp_path / "stranger")
    stranger_key = load_signing_key(stranger)
    log = ["--log", str(path)]
    with EmbeddedEventLog(path) as writer:
        writer.assign([Topics().decisions])
        [record] = writer.poll(max_records=1, timeout_s=1.0)
        genuine = codec.decode(record.value or b"")
        assert isinstance(genuine, Decision) and genuine.key_id is not None and genuine.config is not None
        recorded = json.loads(genuine.config)
        recorded["operator_keys"] = {key_id_of(stranger_key.public_key()): public_key_hex(stranger_key.public_key())}
        forged = dataclasses.replace(genuine, cycle=genuine.cycle + 1, config=json.dumps(recorded), book_id="beta")
        if forgery == "unsigned":
            forged = dataclasses.replace(forged, key_id=None, signature=None)
        elif forgery == "signed by another key":
            forged = sign(forged, stranger_key)
        writer.produce(Topics().decisions, codec.encode(forged))
        writer.flush()
    capsys.readouterr()
    halt = ["control", "halt", "--reason", "venue down", "--operator", "alice", "--key", str(ops), *log]
    assert main([*halt, "--book", "main"]) == 2
    err = capsys.readouterr().err
    assert "is not one of book beta's operator keys" in err
    assert "read from the log's decisions unverified" in err and "pass --trusted-keys" in err
    with EmbeddedEventLog(path) as reader:
        assert sum(reader.end_offsets([Topics().control]).values()) == 0  # nothing was sent
    assert main([*halt, "--trusted-keys", str(tmp_path / "ops")]) == 2  # a key that signed no decision
    assert "--trusted-keys: the book's decisions are signed" in capsys.readouterr().err
    assert main([*halt, "--trusted-keys", str(tmp_path / "alloc")]) == 0
    out, err = capsys.readouterr()
    assert f"for book allocator.main signed by key {ops_id}" in out
    if forgery != "unsigned":  # a signed forgery is a decision after the last that verifies, and is said
        assert "1 decision(s) after cycle 1, the last that verifies, do not verify under --trusted-keys" in err
    with EmbeddedEventLog(path) as reader:
        assert sum(reader.end_offsets([Topics().control]).values()) == 1


def _rewrite_decision(path: Path, offset: int, change: Any) -> None:
    """Edit one decision on the embedded log file in place, as anyone who can write the file could (its signature
    kept)."""
    import sqlite3

    with sqlite3.connect(path) as connection:
        (value,) = connection.execute(
            'SELECT value FROM records WHERE topic = ? AND "offset" = ?', (Topics().decisions, offset)
        ).fetchone()
        decision = codec.decode(value)
        assert isinstance(decision, Decision)
        connection.execute(
            'UPDATE records SET value = ? WHERE topic = ? AND "offset" = ?',
            (codec.encode(change(decision)), Topics().decisions, offset),
        )


@pytest.mark.parametrize("case", ["first decision altered", "unsigned book", "newer decisions unverified"])
def test_control_sends_what_it_cannot_check_against_verified_decisions_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """An outside probe of `control --trusted-keys`: where the decisions that verify may not be the book's newest, or
    none can verify, a refusal drawn from them blocked a genuine HALT (the first decision altered in place; an
    unsigned book with a forged decision appended; decisions after the last verified one). The command is now sent
    with a warning that says why it could not be checked and, if the checked keyring lacks its key, that the book
    may refuse it. Without --trusted-keys the refusal stands, and --unchecked sends it."""
    from allocator.service.keys import public_key_hex

    signing = [] if case == "unsigned book" else ["--signing-key", str(tmp_path / "alloc")]
    new_key_pair(tmp_path / "alloc")
    _, ops, path = _book_with_an_operator_key(tmp_path, *signing)
    _, stranger, _ = new_key_pair(tmp_path / "stranger")
    stranger_key = load_signing_key(stranger)
    ring = json.dumps({key_id_of(stranger_key.public_key()): public_key_hex(stranger_key.public_key())})
    key = ops
    if case == "first decision altered":
        _rewrite_decision(path, 0, lambda d: dataclasses.replace(d, equity=d.equity + 1.0))
    else:
        # A decision appended for the next cycle, naming another keyring: unsigned on the unsigned book (the genuine
        # operator's HALT is then checked against it, as nothing verifies), signed by another key on the signed one
        # (a command signed by that keyring's key is checked against the verified decision, which does not name it).
        with EmbeddedEventLog(path) as writer:
            writer.assign([Topics().decisions])
            [record] = writer.poll(max_records=1, timeout_s=1.0)
            genuine = codec.decode(record.value or b"")
            assert isinstance(genuine, Decision) and genuine.config is not None
            recorded = {**json.loads(genuine.config), "operator_keys": json.loads(ring)}
            later = dataclasses.replace(genuine, cycle=genuine.cycle + 1, config=json.dumps(recorded))
            if case == "newer decisions unverified":
                later = sign(later, stranger_key)
            writer.produce(Topics().decisions, codec.encode(later))
            writer.flush()
        key = stranger if case == "newer decisions unverified" else ops
    capsys.readouterr()
    halt = ["control", "halt", "--reason", "venue down", "--operator", "alice", "--key", str(key), "--log", str(path)]
    assert main([*halt, "--trusted-keys", str(tmp_path / "alloc")]) == 0
    out, err = capsys.readouterr()
    assert "sent HALT" in out and f"signed by key {key_id_of(load_signing_key(key).public_key())}" in out
    expected = {
        "first decision altered": "the chain's first decision does not verify",
        "unsigned book": "the book's decisions are unsigned, so --trusted-keys verified none of them",
        "newer decisions unverified": "1 decision(s) after cycle 1, the last that verifies, do not verify",
    }[case]
    assert "allocator control: warning: " in err and expected in err
    if case != "first decision altered":
        assert "operator keys" in err and "sent anyway, since the log's newest decisions could not be verified" in err
        # Read as written, the appended keyring is the newest: the operator's own key is refused, with the way out.
        with_ops = [*halt[:7], str(ops), *halt[8:]]
        assert main(with_ops) == 2
        assert "or --unchecked to send it without this check" in capsys.readouterr().err
        assert main([*with_ops, "--unchecked"]) == 0
        assert "(not checked against the log's decisions: --unchecked)" in capsys.readouterr().out
    with EmbeddedEventLog(path) as reader:
        assert sum(reader.end_offsets([Topics().control]).values()) == (1 if case == "first decision altered" else 2)


def test_an_altered_first_decision_is_named_without_advice_about_a_key_rotation(
    tmp_path: Path, keys: tuple[Path, Path, DecisionSigner]
) -> None:
    """An outside probe: with the first signed decision altered on the log, status warned that the decisions "link
    to decisions signed by , which is not trusted (after a key rotation, trust the earlier key too)": an empty key
    list and advice that does not apply. Every decision names the trusted key; the first one does not verify."""
    from allocator.service.chain import unverified_chain, verify_records
    from allocator.service.keys import load_trusted_keys
    from allocator.service.sequencer import read_records

    _, folder, signer = keys
    db, topics = tmp_path / "log.sqlite", Topics("chain")
    first, _, _ = signed_log(db, topics, signer)
    with EmbeddedEventLog(db) as reader:
        records = read_records(reader, [topics.decisions], reader.end_offsets([topics.decisions]))
    records.sort(key=lambda r: r.offset)
    records[0] = dataclasses.replace(records[0], value=codec.encode(dataclasses.replace(first, equity=1.0)))
    trusted = load_trusted_keys(folder)
    why = unverified_chain(verify_records(records, trusted, codec), trusted)
    assert why is not None and "the chain's first decision does not verify under trusted key" in why
    assert "key rotation" not in why and "signed by ," not in why
