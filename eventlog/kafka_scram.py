"""SCRAM-SHA-512 principals on a secured broker: create or re-key a user through the AdminClient, as an admin.

`infra/services.sh user NAME` uses this to give a role (agent, executor, market, operator, ...) its own login;
the password is generated here and only ever written to a mode-600 properties file, never printed.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from eventlog.kafka_properties import RedactingDict, client_config

MECHANISM = "SCRAM-SHA-512"
# Kafka's minimum for SCRAM-SHA-512 is 4096; 8192 is what its own tools default to.
ITERATIONS = 8192


class ScramError(RuntimeError):
    """The broker refused or did not answer a SCRAM credential change (the message never holds the password)."""


def new_password() -> str:
    """A random password: 192 bits, as hex so it needs no quoting in a properties file or a JAAS line."""
    return secrets.token_hex(24)


def set_scram_password(
    bootstrap_servers: str,
    admin_properties: Mapping[str, str],
    user: str,
    password: str,
    *,
    timeout_s: float = 30.0,
) -> None:
    """Creates `user` with `password` (SCRAM-SHA-512), or replaces the password of an existing one."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # exported, but not declared so
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    if not user or any(c in user for c in ",=\n\r"):
        raise ValueError(f"not a usable SCRAM user name: {user!r}")
    alteration = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS), password.encode("utf-8")
    )
    _alter(bootstrap_servers, admin_properties, user, alteration, "setting", timeout_s)


def wait_for_login(bootstrap_servers: str, properties: Mapping[str, str], *, timeout_s: float = 30.0) -> None:
    """Returns once the broker accepts the login of `properties`: a new or changed credential takes a moment to
    get from the controller to the broker, and the principal's first command must not fail meanwhile. Raises
    ScramError (never naming the password) when it does not within `timeout_s`."""
    import time

    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    user = properties.get("sasl.username", "?")
    deadline = time.monotonic() + timeout_s
    while True:
        config: dict[str, Any] = client_config(bootstrap_servers, properties)
        config.update({"socket.timeout.ms": 5_000, "log_level": 0, "error_cb": lambda _err: None})
        try:
            AdminClient(config).list_topics(timeout=min(5.0, max(deadline - time.monotonic(), 0.1)))
            return
        except KafkaException:
            pass
        if time.monotonic() >= deadline:
            raise ScramError(f"the broker does not accept the new login of {user!r} after {timeout_s:g}s")
        time.sleep(0.2)


def revoke_scram_user(
    bootstrap_servers: str, admin_properties: Mapping[str, str], user: str, *, timeout_s: float = 30.0
) -> None:
    """Locks `user` out: its credential gets a random password that nobody is told (its ACLs stay).

    Not a deletion, on purpose. Kafka 4.4's ScramDelta.apply() walks a delta's user changes in HashMap order
    and, on a removal that leaves a mechanism's map empty, drops the whole map, so the users added later in the
    same delta are lost. A broker replaying its metadata log from an empty image (every restart before the
    first metadata snapshot) then loses EVERY SCRAM user, admin included, whenever a removed user's name
    happens to hash first: all logins fail with "invalid credentials" until the storage is formatted anew.
    Upserts never trigger it.
    """
    set_scram_password(bootstrap_servers, admin_properties, user, new_password(), timeout_s=timeout_s)


def _alter(
    bootstrap_servers: str, admin_properties: Mapping[str, str], user: str, alteration: Any, what: str, timeout_s: float
) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = client_config(bootstrap_servers, admin_properties)
    config["socket.timeout.ms"] = int(timeout_s * 1000)
    config.setdefault("log_level", 4)  # no informational lines on stderr when the client is torn down
    admin = AdminClient(config)
    # The alteration object holds the password: it is never part of an error message.
    try:
        futures = admin.alter_user_scram_credentials([alteration], request_timeout=timeout_s)
        futures[user].result(timeout=timeout_s)
    except KafkaException as exc:
        raise ScramError(f"{what} the {MECHANISM} credential of {user!r} failed: {exc}") from None
    except TimeoutError:
        raise ScramError(f"{what} the {MECHANISM} credential of {user!r}: no answer in {timeout_s:g}s") from None


def user_client_properties(admin_properties: Mapping[str, str], user: str, password: str) -> dict[str, str]:
    """The admin's client properties (protocol, mechanism, CA) with another user's login."""
    return RedactingDict({**admin_properties, "sasl.username": user, "sasl.password": password})


# What identifies the admin rather than the broker: never handed on to another principal's file.
_ADMIN_ONLY = ("sasl.", "ssl.key.", "ssl.keystore.", "ssl.certificate.", "ssl_key", "ssl_certificate")


def principal_client_properties(admin_properties: Mapping[str, str], user: str, password: str) -> dict[str, str]:
    """The client properties a new principal runs with (`allocator acl user NAME --out FILE`): how to reach the
    broker from the admin's file (protocol, CA, endpoint checks), none of the admin's own credentials (its SASL
    login, a client certificate or key), and this user's SCRAM login."""
    kept = {key: value for key, value in admin_properties.items() if not key.lower().startswith(_ADMIN_ONLY)}
    # A SCRAM login travels over SASL: over TLS when the admin's connection is (SSL or SASL_SSL).
    protocol = kept.get("security.protocol", "").upper()
    kept["security.protocol"] = protocol if protocol.startswith("SASL_") else (
        "SASL_SSL" if protocol == "SSL" else "SASL_PLAINTEXT"
    )  # fmt: skip
    return RedactingDict({**kept, "sasl.mechanism": MECHANISM, "sasl.username": user, "sasl.password": password})
