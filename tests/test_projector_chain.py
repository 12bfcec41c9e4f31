"""`allocator project/replay --trusted-keys` (docs/security.md): the projector writes the rows of decisions that
verify only; a forged, altered, reordered or unsigned decision is a dead letter naming it, and the genuine decision
of its cycle is projected. Without the flag the projection trusts the log, as before, and says so once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from allocator.service.chain import ALTERED, FORGED, REORDERED, UNSIGNED, ChainSettings, DecisionSigner
from allocator.service.keys import load_signing_key, new_key_pair
from allocator.service.sequencer import decision_id_of
from cli.main import main
from eventlog.port import Topics
from projections import tables
from projections.database import engine_for
from projections.projector import NOT_VERIFIED
from schemas.events import Decision
from schemas.signing import GENESIS, decision_hash
from tests.projection_compare import differences, dump
from tests.test_chain import BOOK, T, close, codec, cycle, embedded, produce, proposal, signed_log, write


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Path, DecisionSigner]:
    """The allocator's key pair: (folder of its trusted public key, its signer)."""
    _, private, _public = new_key_pair(tmp_path / "keys")
    return tmp_path / "keys", DecisionSigner(load_signing_key(private))


def decide(db: Path, topics: Topics, signer: DecisionSigner, first: int) -> Decision:
    """The allocator restarted with its key (it reads its chain head back) and one cycle on fresh proposals."""
    svc = embedded(db, topics, ChainSettings(DecisionSigner(signer.key)))
    try:
        produce(db, topics.proposals, [codec.encode(proposal(first + i)) for i in range(4)], T + first)
        return cycle(svc)
    finally:
        close(svc)


def next_cycle(topics: Topics, last: Decision) -> Decision:
    """A decision claiming the cycle after `last`, under the id the genuine one will have, with another equity."""
    c = last.cycle + 1
    return dataclasses.replace(last, cycle=c, decision_id=decision_id_of(topics, BOOK, c), equity=last.equity * 2)


def forge(topics: Topics, last: Decision) -> tuple[Decision, bytes]:
    """The next cycle's decision linked to `last` and signed with a key nobody trusts."""
    return DecisionSigner(Ed25519PrivateKey.generate(), head=decision_hash(last)).seal(next_cycle(topics, last), codec,
                                                                                       "t")  # fmt: skip


def rows(url: str, table: Any) -> list[Any]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(table)).all())
    finally:
        engine.dispose()


def projected(url: str) -> dict[int, tuple[str, str | None, float]]:
    """Each projected cycle's (decision hash, key id, equity in equity_history)."""
    equity = {r.cycle: r.equity for r in rows(url, tables.equity_history)}
    return {r.cycle: (r.decision_hash, r.key_id, equity[r.cycle]) for r in rows(url, tables.decisions)}


def project(db: Path, topics: Topics, url: str, *extra: str) -> None:
    assert main(["project", "--log", str(db), "--topic-prefix", topics.prefix, "--database", url, "--once",
                 *extra]) == 0  # fmt: skip


def replay(db: Path, topics: Topics, url: str, *extra: str) -> None:
    assert main(["replay", "--log", str(db), "--topic-prefix", topics.prefix, "--database", url, *extra]) == 0


def test_a_forgery_projected_first_hides_the_genuine_decision_unless_the_projector_verifies(
    tmp_path: Path, signer: tuple[Path, DecisionSigner], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, key = signer
    db, topics = tmp_path / "log.sqlite", Topics("pc")
    d1, d2 = signed_log(db, topics, key, cycles=2)
    forged, forged_bytes = forge(topics, d2)
    claim = next_cycle(topics, d2)
    altered = dataclasses.replace(claim, key_id=d2.key_id, previous_hash=d2.previous_hash, signature=d2.signature)
    _, reordered = DecisionSigner(key.key, head=GENESIS).seal(claim, codec, "t")  # the trusted key, off the chain
    unsigned = dataclasses.replace(claim, key_id=None, previous_hash=None, signature=None)
    # Three records claiming cycle 3 before the genuine one, at pc.decisions/0/2..4, and one signed by the trusted
    # key off the chain after it, at 6 (before it, serve would refuse to start: a trusted key signed past the head).
    produce(db, topics.decisions, [forged_bytes, codec.encode(altered), codec.encode(unsigned)], T + 900)
    genuine = decide(db, topics, key, 300)
    produce(db, topics.decisions, [reordered], T + 901)
    assert genuine.cycle == 3 and genuine.previous_hash == decision_hash(d2)
    hashes = {1: decision_hash(d1), 2: decision_hash(d2)}

    # Today's behaviour without the flag: the first record of cycle 3, the forgery, stands in the tables.
    trusting = f"sqlite:///{tmp_path / 'trusting.sqlite'}"
    capsys.readouterr()
    project(db, topics, trusting)
    err = capsys.readouterr().err
    assert err.count("projected UNVERIFIED") == 1 and "pass --trusted-keys" in err
    assert projected(trusting)[3] == (decision_hash(forged), forged.key_id, d2.equity * 2)
    assert rows(trusting, tables.dead_letters) == []

    # With the flag: the genuine decision, and a dead letter for each record that does not verify.
    verifying = f"sqlite:///{tmp_path / 'verifying.sqlite'}"
    project(db, topics, verifying, "--trusted-keys", str(folder))
    err = capsys.readouterr().err
    assert "UNVERIFIED" not in err
    assert err.count(NOT_VERIFIED) == 4  # each refusal is said as it happens, not only left in dead_letters
    assert projected(verifying) == {1: (hashes[1], key.key_id, d1.equity), 2: (hashes[2], key.key_id, d2.equity),
                                    3: (decision_hash(genuine), key.key_id, genuine.equity)}  # fmt: skip
    letters = {r.offset: r for r in rows(verifying, tables.dead_letters)}
    assert sorted(letters) == [2, 3, 4, 6] and {r.topic for r in letters.values()} == {topics.decisions}
    for offset, kind in ((2, FORGED), (3, ALTERED), (6, REORDERED), (4, UNSIGNED)):
        error = letters[offset].error
        assert error.startswith(f"{NOT_VERIFIED}: {kind}: decision {claim.decision_id} (cycle 3)"), error
    assert "unknown key" in letters[2].error and forged.key_id in letters[2].error
    assert letters[2].payload == forged_bytes
    # The genuine decision's allocations, under the id the forgeries claimed too, are its own.
    allocated = sorted((a.decision_id, a.rank, a.proposal_id) for a in rows(verifying, tables.allocations))
    assert allocated == [
        (d.decision_id, i, a.proposal_id) for d in (d1, d2, genuine) for i, a in enumerate(d.allocations)
    ]


@pytest.mark.parametrize("first_run", ["verifying", "trusting"])
def test_a_restarted_verifying_projector_resumes_the_chain_and_rejects_no_genuine_decision(
    tmp_path: Path, signer: tuple[Path, DecisionSigner], first_run: str
) -> None:
    """Each `project --once` is a restart from the stored offsets: the chain is read back from the log, so the next
    genuine decision links to what it held (also after a first run that did not verify: the log's chain, not the
    tables', is resumed)."""
    folder, key = signer
    db, topics = tmp_path / "log.sqlite", Topics("rs")
    url = f"sqlite:///{tmp_path / 'projection.sqlite'}"
    flag = ["--trusted-keys", str(folder)]
    d1, d2 = signed_log(db, topics, key, cycles=2)
    project(db, topics, url, *(flag if first_run == "verifying" else []))
    forged, forged_bytes = forge(topics, d2)
    produce(db, topics.decisions, [forged_bytes], T + 900)
    project(db, topics, url, *flag)
    genuine = [decide(db, topics, key, 300)]
    project(db, topics, url, *flag)
    genuine.append(decide(db, topics, key, 400))
    project(db, topics, url, *flag)

    decided = [d1, d2, *genuine]
    assert [d.cycle for d in decided] == [1, 2, 3, 4]
    assert projected(url) == {d.cycle: (decision_hash(d), key.key_id, d.equity) for d in decided}
    (letter,) = rows(url, tables.dead_letters)
    assert (letter.topic, letter.offset) == (topics.decisions, 2)
    assert f"{FORGED}: decision {forged.decision_id} (cycle 3)" in letter.error

    # A replay with the flag, one record per batch, writes the same tables as the restarted projector.
    replayed = f"sqlite:///{tmp_path / 'replayed.sqlite'}"
    replay(db, topics, replayed, *flag, "--batch-size", "1")
    live_engine, replayed_engine = engine_for(url), engine_for(replayed)
    try:
        assert differences(dump(live_engine), dump(replayed_engine)) == []
    finally:
        live_engine.dispose()
        replayed_engine.dispose()


def test_replay_without_the_flag_projects_as_before_and_says_once_that_it_did_not_verify(
    tmp_path: Path, signer: tuple[Path, DecisionSigner], capsys: pytest.CaptureFixture[str]
) -> None:
    _, key = signer
    db, topics = tmp_path / "log.sqlite", Topics("rn")
    _d1, d2 = signed_log(db, topics, key, cycles=2)
    forged, forged_bytes = forge(topics, d2)
    produce(db, topics.decisions, [forged_bytes], T + 900)
    decide(db, topics, key, 300)
    trusting, replayed = f"sqlite:///{tmp_path / 'trusting.sqlite'}", f"sqlite:///{tmp_path / 'replayed.sqlite'}"
    project(db, topics, trusting)
    capsys.readouterr()
    replay(db, topics, replayed, "--batch-size", "1")
    err = capsys.readouterr().err
    assert err.count("allocator replay: WARNING") == 1 and "pass --trusted-keys" in err
    assert projected(replayed)[3][1] == forged.key_id
    a, b = engine_for(trusting), engine_for(replayed)
    try:
        assert differences(dump(a), dump(b)) == []
    finally:
        a.dispose()
        b.dispose()

    # An unsigned book: nothing to warn about.
    plain, topics = tmp_path / "plain.sqlite", Topics("un")
    svc = embedded(plain, topics, ChainSettings())
    try:
        produce(plain, topics.proposals, [codec.encode(proposal(i)) for i in range(4)], T)
        cycle(svc)
    finally:
        close(svc)
    capsys.readouterr()
    replay(plain, topics, f"sqlite:///{tmp_path / 'plain-projection.sqlite'}")
    project(plain, topics, f"sqlite:///{tmp_path / 'plain-live.sqlite'}")
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.kafka
def test_on_kafka_a_restarted_verifying_projector_skips_a_forgery_and_projects_the_genuine_decisions(
    kafka_bootstrap: str, kafka_prefix: str, tmp_path: Path, signer: tuple[Path, DecisionSigner]
) -> None:
    """The allocator's transactions put commit markers between its decisions: the chain is read back up to the
    stored offset all the same, and the projector then reads every topic from where it stood."""
    from allocator.service.loop import group_of
    from eventlog.kafka import KafkaEventLog
    from tests.test_chain import service

    folder, key = signer
    topics = Topics(kafka_prefix)

    def send(topic: str, values: list[bytes], ts: int) -> None:
        write(KafkaEventLog(kafka_bootstrap), topic, values, ts)

    def decide_on_kafka(first: int) -> Decision:
        svc = service(KafkaEventLog(kafka_bootstrap, group=group_of(topics, BOOK)), KafkaEventLog(kafka_bootstrap),
                      topics, ChainSettings(DecisionSigner(key.key)), [])  # fmt: skip
        try:
            send(topics.proposals, [codec.encode(proposal(first + i)) for i in range(4)], T + first)
            return cycle(svc)
        finally:
            close(svc)

    url = f"sqlite:///{tmp_path / 'projection.sqlite'}"
    where = ["--kafka", kafka_bootstrap, "--topic-prefix", kafka_prefix, "--database", url, "--trusted-keys",
             str(folder)]  # fmt: skip
    d1 = decide_on_kafka(0)
    assert main(["project", *where, "--once"]) == 0
    forged, forged_bytes = forge(topics, d1)
    send(topics.decisions, [forged_bytes], T + 900)
    d2 = decide_on_kafka(100)
    assert main(["project", *where, "--once"]) == 0
    d3 = decide_on_kafka(200)
    assert main(["project", *where, "--once"]) == 0
    assert projected(url) == {d.cycle: (decision_hash(d), key.key_id, d.equity) for d in (d1, d2, d3)}
    (letter,) = rows(url, tables.dead_letters)
    assert letter.topic == topics.decisions and f"{FORGED}: decision {forged.decision_id} (cycle 2)" in letter.error


def test_a_key_that_signed_nothing_is_said_not_only_left_in_dead_letters(
    tmp_path: Path, signer: tuple[Path, DecisionSigner], capsys: pytest.CaptureFixture[str]
) -> None:
    _, key = signer
    db, topics = tmp_path / "log.sqlite", Topics("wk")
    signed_log(db, topics, key, cycles=3)
    new_key_pair(tmp_path / "other")  # someone else's key: it signed none of the book's decisions
    url = f"sqlite:///{tmp_path / 'replayed.sqlite'}"
    capsys.readouterr()
    replay(db, topics, url, "--trusted-keys", str(tmp_path / "other"))
    err = capsys.readouterr().err
    assert "WARNING: 3 decision(s) did not verify with --trusted-keys and were not projected" in err
    assert err.count(f"{NOT_VERIFIED}: {FORGED}") == 3 and "unknown key" in err
    assert rows(url, tables.decisions) == [] and len(rows(url, tables.dead_letters)) == 3
