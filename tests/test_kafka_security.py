"""The secured broker refuses whoever it should, quickly: plaintext, no login, a wrong login, and a login without ACLs.

Every client here has small socket and request timeouts, and every wait has a deadline, so a broker that
wrongly let a client hang fails the test in seconds instead of stalling the suite.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from eventlog.kafka import KafkaEventLog
from eventlog.kafka_properties import client_config
from eventlog.port import LogError
from tests.broker_clients import BOUNDED, LIMIT_S, consume_first, eventually, produce_one

pytestmark = pytest.mark.kafka

# A probe gives up after PROBE_S whatever happens.
PROBE_S = 4.0


@dataclass
class Probe:
    """What one client saw when it asked the broker for metadata."""

    answered: bool
    errors: list[KafkaError] = field(default_factory=list)
    elapsed_s: float = 0.0

    def codes(self) -> set[int]:
        return {err.code() for err in self.errors}


def _probe(bootstrap: str, properties: dict[str, str]) -> Probe:
    from confluent_kafka.admin import AdminClient

    seen: list[KafkaError] = []
    start = time.monotonic()
    config: dict[str, Any] = {**client_config(bootstrap, properties), **BOUNDED, "error_cb": seen.append}
    admin = AdminClient(config)
    deadline = start + PROBE_S
    # Short asks until an answer, a refused login (reported to error_cb, served by poll) or the deadline.
    while True:
        try:
            admin.list_topics(timeout=0.5)
            return Probe(True, seen, time.monotonic() - start)
        except KafkaException as exc:
            last = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        admin.poll(0.1)
        if any(err.code() == KafkaError._AUTHENTICATION for err in seen) or time.monotonic() >= deadline:
            if last is not None:
                seen.append(last)
            return Probe(False, seen, time.monotonic() - start)


def _ca_only(admin: dict[str, str]) -> dict[str, str]:
    return {"security.protocol": "SSL", "ssl.ca.location": admin["ssl.ca.location"]}


def test_a_plaintext_connection_to_the_client_port_fails(
    kafka_bootstrap: str, kafka_admin_properties: dict[str, str]
) -> None:
    probe = _probe(kafka_bootstrap, {"security.protocol": "PLAINTEXT"})
    assert not probe.answered, "the client port answered a plaintext client"
    assert probe.elapsed_s < LIMIT_S

    # Below the client library: a Kafka ApiVersions request in the clear gets no Kafka answer, only the
    # connection closed (or a TLS alert, which is not a Kafka response).
    host, port = kafka_bootstrap.split(",")[0].rsplit(":", 1)
    client_id = b"plaintext-probe"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        try:
            answer = sock.recv(64)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert answer[:1] in (b"", b"\x15"), f"a plaintext request got an answer: {answer!r}"
    if len(answer) >= 8:
        assert struct.unpack(">i", answer[4:8])[0] != 1, "a Kafka response to a plaintext request"


def test_a_client_without_credentials_is_refused(kafka_bootstrap: str, kafka_admin_properties: dict[str, str]) -> None:
    # TLS that trusts the broker, but no SASL login: the broker closes the connection, metadata never comes.
    probe = _probe(kafka_bootstrap, _ca_only(kafka_admin_properties))
    assert not probe.answered, "the broker served a client that did not log in"
    assert probe.errors, "the client was refused without any error"
    assert probe.elapsed_s < LIMIT_S
    # SASL_SSL without a user name or password: librdkafka refuses to make the client at all.
    no_login = {k: v for k, v in kafka_admin_properties.items() if k not in ("sasl.username", "sasl.password")}
    with pytest.raises(KafkaException, match=r"sasl\.username and sasl\.password must be set"):
        Producer({**client_config(kafka_bootstrap, no_login), **BOUNDED})


@pytest.mark.parametrize("wrong", ["password", "user"])
def test_a_wrong_login_is_refused_with_an_authentication_error(
    kafka_bootstrap: str, kafka_admin_properties: dict[str, str], wrong: str
) -> None:
    properties = dict(kafka_admin_properties)
    if wrong == "password":
        properties["sasl.password"] = "not-" + properties["sasl.password"][:8]
    else:
        properties["sasl.username"] = f"nobody-{uuid.uuid4().hex[:8]}"
    probe = _probe(kafka_bootstrap, properties)
    assert not probe.answered
    assert KafkaError._AUTHENTICATION in probe.codes(), [str(e) for e in probe.errors]
    assert probe.elapsed_s < LIMIT_S
    # The refusal names the mechanism, not the secret.
    assert all(kafka_admin_properties["sasl.password"] not in str(e) for e in probe.errors)


@pytest.fixture
def grant(kafka_bootstrap: str, kafka_admin_properties: dict[str, str]) -> Iterator[Callable[..., None]]:
    """Adds ALLOW ACLs as the admin, and removes them after the test."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    admin = AdminClient({**client_config(kafka_bootstrap, kafka_admin_properties), **BOUNDED})
    made: list[tuple[Any, ...]] = []

    def add(principal: str, resource: str, name: str, operation: str) -> None:
        fields = (
            ResourceType[resource],
            name,
            ResourcePatternType.LITERAL,
            f"User:{principal}",
            "*",
            AclOperation[operation],
            AclPermissionType.ALLOW,
        )
        for future in admin.create_acls([AclBinding(*fields)], request_timeout=LIMIT_S).values():
            future.result(timeout=LIMIT_S)
        made.append(fields)

    yield add
    if made:
        filters = [AclBindingFilter(*fields) for fields in made]
        for future in admin.delete_acls(filters, request_timeout=LIMIT_S).values():
            future.result(timeout=LIMIT_S)


def test_a_user_without_acls_may_log_in_but_neither_produce_nor_consume(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    make_scram_user: Callable[[str], dict[str, str]],
    grant: Callable[..., None],
) -> None:
    topic = make_topic("guarded")
    user = make_scram_user("nobody")
    name = user["sasl.username"]

    probe = _probe(kafka_bootstrap, user)
    assert probe.answered, f"the new user could not log in: {[str(e) for e in probe.errors]}"

    error = produce_one(kafka_bootstrap, user, topic)
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error
    # The project's own log adapter says so at once instead of waiting for a topic it cannot see.
    with KafkaEventLog(kafka_bootstrap, config=user, timeout_s=LIMIT_S) as log, pytest.raises(LogError) as caught:
        log.assign([topic])
    assert "not authorized" in str(caught.value)

    group = f"test-{uuid.uuid4().hex}"
    message = consume_first(kafka_bootstrap, user, topic, group)
    assert message.error() is not None and message.error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED
    # With its consumer group allowed, the topic itself is still refused.
    grant(name, "GROUP", group, "READ")
    eventually(
        lambda: (
            consume_first(kafka_bootstrap, user, topic, group).error().code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        ),
        "the topic's refusal after the group was allowed",
    )

    # ACLs are what opens it: WRITE and READ on this one topic, and the same user can.
    grant(name, "TOPIC", topic, "WRITE")
    grant(name, "TOPIC", topic, "READ")
    eventually(lambda: produce_one(kafka_bootstrap, user, topic) is None, "a produce allowed by an ACL")
    message = consume_first(kafka_bootstrap, user, topic, group)
    assert message.error() is None and message.value() == b"x"


def test_the_admin_may_produce_and_consume(
    kafka_bootstrap: str, kafka_admin_properties: dict[str, str], make_topic: Callable[..., str]
) -> None:
    topic = make_topic("admin")
    assert produce_one(kafka_bootstrap, kafka_admin_properties, topic) is None
    message = consume_first(kafka_bootstrap, kafka_admin_properties, topic, f"test-{uuid.uuid4().hex}")
    assert message.error() is None and message.value() == b"x"
