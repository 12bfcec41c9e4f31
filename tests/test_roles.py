"""Who may write what, enforced by the secured broker: one SCRAM user per role, the ACLs of `allocator acl apply`
on a fresh prefix, and for each role every allowed action works and every forbidden one is refused.

Every client has short socket, request and delivery timeouts and every wait a deadline, so a broker that let a
client hang fails the test in seconds. ACLs reach the authorizer a moment after they are created: allowed actions
are retried until a deadline (`eventually`); refusals need no wait (before the ACLs, everything is refused).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from allocator.service.acl import acl_table, group_prefix
from allocator.service.loop import legacy_transactional_id_of, transactional_id_of
from allocator.service.wire import to_json
from cli.main import main
from eventlog.kafka import KafkaEventLog
from eventlog.kafka_acl import PRIVATE_READER_GROUP_PREFIX
from eventlog.kafka_properties import CONFIG_FILE_ENV, client_config, write_client_properties
from eventlog.kafka_scram import new_password, revoke_scram_user, set_scram_password, user_client_properties
from eventlog.port import Topics
from schemas.codec import SingleObjectCodec
from schemas.events import AllocationStatus, Decision, Proposal, ReasonCode, Side
from tests.broker_clients import BOUNDED, LIMIT_S, consume_first, eventually, produce_one

pytestmark = pytest.mark.kafka

ROLES = ("agent", "executor", "market", "operator", "allocator", "projector", "auditor")
OTHER_AGENT = "agent2"  # a second agent user, for the per-agent proposals topics (rules.md §11.1)
BOOK = "main"


@dataclass
class Book:
    bootstrap: str
    topics: Topics
    users: dict[str, dict[str, str]]  # role -> client properties
    files: dict[str, Path]  # role -> properties file
    admin_file: Path
    config_file: Path  # the book's configuration: its agents are the agent role's user and OTHER_AGENT's

    def name(self, role: str) -> str:
        return self.users[role]["sasl.username"]

    def topic(self, what: str) -> str:
        """A topic of the book by its role; `own`/`other`: the agent's own proposals topic, the other agent's."""
        if what in ("own", "other"):
            return self.topics.proposals_of(self.name("agent" if what == "own" else OTHER_AGENT))
        name: str = getattr(self.topics, what)
        return name


def _init_transactions(bootstrap: str, properties: dict[str, str], transactional_id: str) -> KafkaError | None:
    producer = Producer(
        {**client_config(bootstrap, properties), **BOUNDED, "transactional.id": transactional_id,
         "transaction.timeout.ms": 10_000}
    )  # fmt: skip
    try:
        producer.init_transactions(LIMIT_S)
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        return error
    return None


def _delete_acls(bootstrap: str, admin: dict[str, str], principals: list[str]) -> None:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    client = AdminClient({**client_config(bootstrap, admin), **BOUNDED})
    filters = [
        AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{name}", None,  # type: ignore[arg-type]
                         AclOperation.ANY, AclPermissionType.ANY)
        for name in principals
    ]  # fmt: skip
    for future in client.delete_acls(filters, request_timeout=LIMIT_S).values():
        future.result(timeout=LIMIT_S)


@pytest.fixture(scope="module")
def book(
    kafka_bootstrap: str, kafka_admin_properties: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Book]:
    folder = tmp_path_factory.mktemp("roles")
    prefix = f"roles-{uuid.uuid4().hex[:10]}"
    admin_file = Path(os.environ[CONFIG_FILE_ENV])
    kafka = ["--kafka", kafka_bootstrap, "--kafka-config", str(admin_file)]
    users: dict[str, dict[str, str]] = {}
    files: dict[str, Path] = {}
    for role in (*ROLES, OTHER_AGENT):
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        password = new_password()
        set_scram_password(kafka_bootstrap, kafka_admin_properties, name, password)
        users[role] = user_client_properties(kafka_admin_properties, name, password)
        files[role] = folder / f"{role}.properties"
        write_client_properties(files[role], users[role])
    agents = [users[role]["sasl.username"] for role in ("agent", OTHER_AGENT)]
    config_file = folder / "config.json"
    config_file.write_text(json.dumps({"agents": agents, "scenario_count": 300}), encoding="utf-8")
    assert main(["init", *kafka, "--topic-prefix", prefix, "--config", str(config_file)]) == 0
    options = [arg for role in ROLES for arg in (f"--{role}", users[role]["sasl.username"])]
    options += ["--agent", users[OTHER_AGENT]["sasl.username"]]
    assert main(["acl", "apply", *kafka, "--topic-prefix", prefix, "--book", BOOK, *options]) == 0
    # Idempotent: a second run asks again and changes nothing.
    assert main(["acl", "apply", *kafka, "--topic-prefix", prefix, "--book", BOOK, *options]) == 0
    yield Book(kafka_bootstrap, Topics(prefix), users, files, admin_file, config_file)
    names = [props["sasl.username"] for props in users.values()]
    _delete_acls(kafka_bootstrap, kafka_admin_properties, names)
    for name in names:
        revoke_scram_user(kafka_bootstrap, kafka_admin_properties, name)  # never deleted: see revoke_scram_user


WRITES = {
    "agent": {"own"},  # its own proposals topic: neither the other agent's nor the shared one
    "executor": {"fills"},
    "market": {"pnl"},
    "operator": {"control"},
    "allocator": {"decisions", "governor", "deadletter"},
    "projector": set(),
    "auditor": set(),
}
ALL = ("proposals", "own", "other", "fills", "pnl", "control", "decisions", "governor", "deadletter")
READS = {
    "agent": set(),
    "executor": {"decisions"},
    "market": set(),
    "operator": {"decisions"},  # `control` checks a command against them before sending it
    "allocator": set(ALL),
    "projector": set(ALL),
    "auditor": set(ALL),
}


def _group(book: Book, role: str) -> str:
    if role == "allocator":
        return f"allocator-{book.topics.prefix}-{BOOK}"
    if role in ("executor", "operator", "projector", "auditor"):
        return group_prefix(role, book.topics, book.name(role)) + "-test"
    return f"{role}-{book.topics.prefix}-{book.name(role)}"  # no group is granted to a writer-only role


@pytest.mark.parametrize("role", ROLES)
def test_each_role_writes_only_its_topics(book: Book, role: str) -> None:
    props = book.users[role]
    for what in sorted(WRITES[role]):
        topic: str = book.topic(what)

        def writes(topic: str = topic) -> bool:
            return produce_one(book.bootstrap, props, topic) is None

        eventually(writes, f"{role} writes {what}")
    for what in sorted(set(ALL) - WRITES[role]):
        error = produce_one(book.bootstrap, props, book.topic(what))
        assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (role, what, error)


@pytest.mark.parametrize("role", ["projector", "auditor"])
def test_a_role_that_may_write_nothing_gets_a_refusal_naming_it_not_a_traceback(
    book: Book, role: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its idempotent producer is refused an id (CLUSTER_AUTHORIZATION_FAILED, fatal), which surfaced inside a
    delivery callback as a SystemError and a traceback from `allocator propose` or `control`."""
    from eventlog.port import LogError

    refused = "not authorized|may write no topic"  # the fatal error itself, or (when the client loses it) the why
    with KafkaEventLog(book.bootstrap, config=book.users[role], timeout_s=LIMIT_S) as log:
        log.produce(book.topic("proposals"), b"x")
        with pytest.raises(LogError, match=refused):
            log.flush()
    prefix = ["--kafka", book.bootstrap, "--topic-prefix", book.topics.prefix, "--kafka-config", str(book.files[role])]
    capsys.readouterr()
    assert main(["control", "halt", "--reason", "r", "--operator", "o", *prefix]) == 1
    err = capsys.readouterr().err
    assert re.search(refused, err) and "Traceback" not in err


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reads_only_its_topics(book: Book, role: str) -> None:
    props = book.users[role]
    group = _group(book, role)
    # Something to read on every topic (the admin is a super user).
    for what in ALL:
        assert produce_one(book.bootstrap, dict(_admin(book)), book.topic(what), b"seed") is None
    for what in sorted(READS[role]):
        topic: str = book.topic(what)

        def reads(topic: str = topic) -> bool:
            return bool(consume_first(book.bootstrap, props, topic, group).error() is None)

        eventually(reads, f"{role} reads {what}")
    for what in sorted(set(ALL) - READS[role]):
        message = consume_first(book.bootstrap, props, book.topic(what), group)
        assert message.error() is not None, (role, what)
        expected = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}
        assert message.error().code() in expected, (role, what, message.error())


def _admin(book: Book) -> dict[str, str]:
    from eventlog.kafka_properties import load_client_properties

    return load_client_properties(book.admin_file)


def test_a_reader_may_not_use_another_roles_group(book: Book) -> None:
    # The projector's group prefix is its own: the allocator's group and the executor's are refused to it.
    props = book.users["projector"]
    for group in (_group(book, "allocator"), group_prefix("executor", book.topics, book.name("executor"))):
        message = consume_first(book.bootstrap, props, book.topics.decisions, group)
        assert message.error() is not None and message.error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED


@pytest.mark.parametrize("role", ROLES)
def test_only_the_allocator_may_use_its_transactional_ids(book: Book, role: str) -> None:
    """The prefix's id it publishes under. The one releases before used for the book is granted to no role: it is
    also the id of the prefix `<prefix>-<book>`'s allocator, which another book's allocator must not stop (an
    outside probe)."""
    props = book.users[role]
    legacy = legacy_transactional_id_of(book.topics, BOOK)
    error = _init_transactions(book.bootstrap, props, legacy)
    assert error is not None and error.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, (role, error)
    for transactional_id in (transactional_id_of(book.topics),):
        if role == "allocator":

            def granted(txn: str = transactional_id) -> bool:
                return _init_transactions(book.bootstrap, props, txn) is None

            eventually(granted, f"the allocator's transactions under {transactional_id}")
            continue
        error = _init_transactions(book.bootstrap, props, transactional_id)
        assert error is not None and error.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, (role, error)


def _propose(book: Book, role: str, proposal: Proposal, tmp_path: Path) -> None:
    """`allocator propose` as the user of `role` (it picks the agent's own topic, which `init` made)."""
    raw = {**to_json(proposal)}
    del raw["created_at"]
    file = tmp_path / f"{proposal.proposal_id}-{role}.json"
    file.write_text(json.dumps(raw), encoding="utf-8")
    prefix = ["--kafka", book.bootstrap, "--topic-prefix", book.topics.prefix]
    agent = ["--kafka-config", str(book.files[role])]
    eventually(lambda: main(["propose", str(file), *prefix, *agent]) == 0, f"{role} proposes")


def _serve(book: Book, cycles: int) -> None:
    prefix = ["--kafka", book.bootstrap, "--topic-prefix", book.topics.prefix, "--config", str(book.config_file)]
    allocator = ["--kafka-config", str(book.files["allocator"])]
    assert main(["serve", "--book", BOOK, *prefix, *allocator, "--max-cycles", str(cycles), "--duration", "60"]) == 0


def _decisions(book: Book, count: int) -> list[Decision]:
    codec = SingleObjectCodec()
    decisions: list[Decision] = []
    with KafkaEventLog(book.bootstrap, config=book.users["executor"], timeout_s=LIMIT_S) as log:
        log.assign([book.topics.decisions])
        deadline = time.monotonic() + LIMIT_S
        while len(decisions) < count and time.monotonic() < deadline:
            for record in log.poll(100, 0.5):
                try:
                    event = codec.decode(record.value or b"")
                except Exception:  # the seed records of other tests are not events
                    continue
                if isinstance(event, Decision):
                    decisions.append(event)
    assert len(decisions) == count, f"{len(decisions)} decisions in time, not {count}"
    return decisions


def test_serve_funds_an_agent_s_own_proposal_and_rejects_one_under_another_agent_s_id(
    book: Book, tmp_path: Path
) -> None:
    alpha, beta = book.name("agent"), book.name(OTHER_AGENT)
    genuine = Proposal("roles-1", alpha, "s", "m1", Side.BUY, 0.5, 0.04, 0.9, 800.0, 100.0, 0.05, 0.01, "k1", 0)
    _propose(book, "agent", genuine, tmp_path)  # to alpha's own topic
    # alpha writes a proposal naming beta: the broker lets it onto alpha's topic only, never onto beta's.
    forged = dataclasses.replace(genuine, proposal_id="roles-2", agent_id=beta, created_at=int(time.time() * 1000))
    data = SingleObjectCodec().encode(forged)
    refused = produce_one(book.bootstrap, book.users["agent"], book.topic("other"), data)
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert produce_one(book.bootstrap, book.users["agent"], book.topic("own"), data) is None
    _serve(book, 1)
    first = _decisions(book, 1)
    # beta's genuine proposal with the same id, from beta's own topic, is still accepted afterwards.
    _propose(book, OTHER_AGENT, dataclasses.replace(forged, created_at=0), tmp_path)
    _serve(book, 2)
    decided = [(d.cycle, a) for d in _decisions(book, 2) for a in d.allocations]
    assert first[0].cycle == 1 and {a.proposal_id for a in first[0].allocations} >= {"roles-1"}
    by_id = {(a.proposal_id, a.status): (cycle, a) for cycle, a in decided}
    assert ("roles-1", AllocationStatus.FUNDED) in by_id
    cycle_rejected, rejected = by_id[("roles-2", AllocationStatus.REJECTED)]
    assert [r.code for r in rejected.reasons] == [ReasonCode.UNAUTHORIZED]
    detail = rejected.reasons[0].detail or ""
    assert repr(alpha) in detail and book.topic("own") in detail
    cycle_funded, funded = by_id[("roles-2", AllocationStatus.FUNDED)]
    assert funded.agent_id == beta and cycle_funded >= cycle_rejected


def test_an_operator_s_unsigned_halt_on_a_book_with_operator_keys_is_refused_before_it_is_sent(
    book: Book, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """An outside probe, on the documented setup: the operator's login could not read decisions, so `control halt`
    unsigned printed "sent" and exited 0, and the book then refused it ("unsigned, and the book has an operator
    keyring"): an emergency halt looked sent when it was not. The operator now reads decisions, so control refuses
    it (exit 2, nothing sent); the signed one is sent."""
    from allocator.service.keys import load_signing_key, new_key_pair, public_key_hex

    key_id, private, _ = new_key_pair(tmp_path / "ops")
    config = tmp_path / "keys.json"
    ring = {key_id: public_key_hex(load_signing_key(private).public_key())}
    config.write_text(json.dumps({"scenario_count": 300, "operator_keys": ring}), encoding="utf-8")
    prefix = ["--kafka", book.bootstrap, "--topic-prefix", f"{book.topics.prefix}-keys"]
    admin = ["--kafka-config", str(book.admin_file)]
    assert main(["init", *prefix, *admin]) == 0
    names = [arg for role in ("operator", "allocator") for arg in (f"--{role}", book.name(role))]
    assert main(["acl", "apply", *prefix, *admin, "--book", BOOK, *names]) == 0
    examples = Path(__file__).resolve().parent.parent / "examples" / "proposals.json"
    assert main(["propose", str(examples), *prefix, *admin]) == 0  # something to decide
    serve = ["serve", "--book", BOOK, *prefix, "--config", str(config), "--max-cycles", "1", "--duration", "60"]
    capfd.readouterr()
    assert main([*serve, "--kafka-config", str(book.files["allocator"])]) == 0
    # the fence of the id earlier releases used, which the allocator may not use here, is not printed as FATAL
    assert "authorization failed" not in capfd.readouterr().err
    operator = [*prefix, "--kafka-config", str(book.files["operator"])]
    halt = ["control", "halt", "--book", BOOK, "--reason", "emergency", "--operator", "ann", *operator]
    assert main(halt) == 2
    err = capfd.readouterr().err
    assert "nothing sent" in err and key_id in err and "may not read" not in err, err
    assert main([*halt, "--key", str(private)]) == 0
    assert "sent HALT" in capfd.readouterr().out


def test_the_table_names_only_the_book_s_resources(book: Book) -> None:
    rows = acl_table(book.topics, BOOK, {role: [book.name(role)] for role in ROLES})
    prefix = book.topics.prefix
    assert all(prefix in row.name or row.name == PRIVATE_READER_GROUP_PREFIX for row in rows)
    assert {row.operation for row in rows if row.principal in (book.name("projector"), book.name("auditor"))} <= {
        "READ",
        "DESCRIBE",
    }


def _logs_in(bootstrap: str, properties: dict[str, str]) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**client_config(bootstrap, properties), **BOUNDED})
    try:
        admin.list_topics(timeout=5)
    except KafkaException:
        return False
    return True


def test_acl_user_creates_and_rotates_a_password_never_printed(
    kafka_bootstrap: str,
    kafka_admin_properties: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"rotated-{uuid.uuid4().hex[:8]}"
    kafka = ["--kafka", kafka_bootstrap, "--kafka-config", os.environ[CONFIG_FILE_ENV]]
    first, second = new_password(), new_password()
    try:
        monkeypatch.setenv("ALLOCATOR_NEW_PASSWORD", first)
        assert main(["acl", "user", *kafka, name]) == 0
        old = user_client_properties(kafka_admin_properties, name, first)
        eventually(lambda: _logs_in(kafka_bootstrap, old), "the new user logs in")
        monkeypatch.setenv("ALLOCATOR_NEW_PASSWORD", second)
        assert main(["acl", "user", *kafka, name]) == 0
        new = user_client_properties(kafka_admin_properties, name, second)
        eventually(lambda: _logs_in(kafka_bootstrap, new), "the rotated password logs in")
        assert not _logs_in(kafka_bootstrap, old), "the old password still logs in"
        out, err = capsys.readouterr()
        assert first not in out + err and second not in out + err
    finally:
        revoke_scram_user(kafka_bootstrap, kafka_admin_properties, name)


def test_acl_user_out_writes_the_principal_s_login_and_nothing_of_the_admin_s(
    kafka_bootstrap: str,
    kafka_admin_properties: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    from eventlog.kafka_properties import load_client_properties

    name = f"out-{uuid.uuid4().hex[:8]}"
    out = tmp_path / f"{name}.properties"
    monkeypatch.delenv("ALLOCATOR_NEW_PASSWORD", raising=False)  # --out: a random password, in the file only
    kafka = ["--kafka", kafka_bootstrap, "--kafka-config", os.environ[CONFIG_FILE_ENV]]
    try:
        assert main(["acl", "user", *kafka, name, "--out", str(out)]) == 0
        assert out.stat().st_mode & 0o777 == 0o600
        written = load_client_properties(out)
        assert written["sasl.username"] == name and written["sasl.mechanism"] == "SCRAM-SHA-512"
        assert written["sasl.password"] != kafka_admin_properties["sasl.password"]
        assert written["ssl.ca.location"] == kafka_admin_properties["ssl.ca.location"]
        eventually(lambda: _logs_in(kafka_bootstrap, written), "the written login logs in")
        printed = "".join(capsys.readouterr())
        assert written["sasl.password"] not in printed and str(out) in printed
    finally:
        revoke_scram_user(kafka_bootstrap, kafka_admin_properties, name)


def test_a_principal_works_as_soon_as_acl_user_and_acl_apply_return(
    kafka_bootstrap: str, kafka_admin_properties: dict[str, str], kafka_prefix: str, tmp_path: Path
) -> None:
    """No retry here: both commands return only once the broker accepts the login and enforces the ACLs."""
    from eventlog.kafka_properties import load_client_properties

    name = f"prompt-{uuid.uuid4().hex[:8]}"
    out = tmp_path / f"{name}.properties"
    kafka = ["--kafka", kafka_bootstrap, "--kafka-config", os.environ[CONFIG_FILE_ENV], "--topic-prefix", kafka_prefix]
    try:
        assert main(["init", *kafka]) == 0
        assert main(["acl", "user", *kafka[:4], name, "--out", str(out)]) == 0
        assert main(["acl", "apply", *kafka, "--market", name]) == 0
        assert produce_one(kafka_bootstrap, load_client_properties(out), Topics(kafka_prefix).pnl) is None
    finally:
        _delete_acls(kafka_bootstrap, kafka_admin_properties, [name])
        revoke_scram_user(kafka_bootstrap, kafka_admin_properties, name)


def test_acl_user_without_a_password_or_a_terminal_fails_clearly(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.delenv("ALLOCATOR_NEW_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["acl", "user", "--kafka", kafka_bootstrap, f"nobody-{uuid.uuid4().hex[:8]}"]) == 2
    assert "set ALLOCATOR_NEW_PASSWORD" in capsys.readouterr().err


def test_acl_apply_dry_run_prints_the_table_and_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["acl", "apply", "--dry-run", "--topic-prefix", "dry", "--agent", "a1", "--auditor", "au"]) == 0
    out = capsys.readouterr().out
    assert "User:a1" in out and "dry.proposals" in out and "dry run: " in out
    assert "User:a1    agent      TOPIC             LITERAL   dry.decisions" not in out
    assert main(["acl", "apply", "--dry-run", "--agent", "bad,name"]) == 2
