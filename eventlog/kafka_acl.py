"""ACLs on a secured broker: create ALLOW bindings through the AdminClient, as an admin.

The table of who may do what is not decided here (see `allocator.service.acl`); this module only turns rows into
`AclBinding`s and asks the broker. Creating a binding that exists already is a no-op on the broker, so applying
the same rows twice changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from eventlog.kafka_properties import client_config

RESOURCE_TYPES = ("TOPIC", "GROUP", "TRANSACTIONAL_ID", "CLUSTER")
PATTERNS = ("LITERAL", "PREFIXED")
OPERATIONS = ("READ", "WRITE", "DESCRIBE", "CREATE", "IDEMPOTENT_WRITE")
PRIVATE_READER_GROUP_PREFIX = "eventlog-reader-"
"""A `KafkaEventLog` without a group reads under a private, random consumer group with this prefix: it never
commits, but librdkafka still looks up the group's coordinator, which needs DESCRIBE on the group."""


class AclError(RuntimeError):
    """The broker refused or did not answer an ACL change."""


@dataclass(frozen=True, order=True)
class AclEntry:
    """One ALLOW binding: `User:<principal>` may do `operation` on the resource (`name`, matched by `pattern`),
    from any host."""

    principal: str
    resource_type: str
    pattern: str
    name: str
    operation: str

    def __post_init__(self) -> None:
        if self.resource_type not in RESOURCE_TYPES:
            raise ValueError(f"resource_type {self.resource_type!r}: not one of {', '.join(RESOURCE_TYPES)}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern {self.pattern!r}: not one of {', '.join(PATTERNS)}")
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation {self.operation!r}: not one of {', '.join(OPERATIONS)}")
        if not self.name:
            raise ValueError("name: empty resource name")
        check_principal_name(self.principal)


def check_principal_name(name: str) -> str:
    """A SCRAM user name usable as a principal: non-empty, no ',', '=', ':', whitespace or control characters."""
    if not isinstance(name, str) or not name or any(c in name for c in ",=:") or any(c.isspace() for c in name):
        raise ValueError(f"principal {name!r}: must be a non-empty user name without ',', '=', ':' or spaces")
    if any(ord(c) < 32 for c in name):
        raise ValueError(f"principal {name!r}: control characters are not allowed")
    return name


def _binding(entry: AclEntry) -> Any:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # exported, but not declared so
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    # The cluster resource has one name, "kafka-cluster", always LITERAL.
    return AclBinding(
        ResourceType[entry.resource_type],
        entry.name,
        ResourcePatternType[entry.pattern],
        f"User:{entry.principal}",
        "*",
        AclOperation[entry.operation],
        AclPermissionType.ALLOW,
    )


def create_acls(
    bootstrap_servers: str,
    admin_properties: Mapping[str, str],
    entries: Iterable[AclEntry],
    *,
    timeout_s: float = 30.0,
) -> int:
    """Creates every binding of `entries` (existing ones are left as they are); returns how many were asked for.
    Raises AclError naming the first refused binding."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    wanted = sorted(set(entries))
    if not wanted:
        return 0
    config: dict[str, Any] = client_config(bootstrap_servers, admin_properties)
    config["socket.timeout.ms"] = int(timeout_s * 1000)
    config.setdefault("log_level", 4)
    admin = AdminClient(config)
    bindings = {_binding(entry): entry for entry in wanted}
    try:
        futures = admin.create_acls(list(bindings), request_timeout=timeout_s)
    except KafkaException as exc:
        raise AclError(f"creating {len(wanted)} ACLs failed: {exc}") from None
    for binding, future in futures.items():
        entry = bindings.get(binding)
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            raise AclError(f"creating the ACL {entry} failed: {exc}") from None
        except TimeoutError:
            raise AclError(f"creating the ACL {entry}: no answer in {timeout_s:g}s") from None
    _wait_until_in_force(admin, wanted, timeout_s)
    return len(wanted)


def _described(admin: Any, principal: str, timeout_s: float) -> set[AclEntry]:
    """The ALLOW bindings of `principal` the broker's authorizer holds now."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # exported, but not declared so
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    query = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{principal}", None,  # type: ignore[arg-type]
                             AclOperation.ANY, AclPermissionType.ALLOW)  # fmt: skip
    found: set[AclEntry] = set()
    for b in admin.describe_acls(query, request_timeout=timeout_s).result(timeout=timeout_s):
        names = (b.restype.name, b.resource_pattern_type.name, b.operation.name)
        if b.host == "*" and names[0] in RESOURCE_TYPES and names[1] in PATTERNS and names[2] in OPERATIONS:
            found.add(AclEntry(principal, names[0], names[1], b.name, names[2]))
    return found


def _wait_until_in_force(admin: Any, wanted: list[AclEntry], timeout_s: float) -> None:
    """Returns once the authorizer the admin client reaches holds every binding of `wanted`: a new binding takes
    a moment to get from the controller to it, and a principal's next command must not be refused meanwhile."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    missing = set(wanted)
    while True:
        try:
            for principal in sorted({entry.principal for entry in missing}):
                missing -= _described(admin, principal, timeout_s)
        except (KafkaException, TimeoutError) as exc:
            raise AclError(f"reading back the ACLs just created failed: {exc}") from None
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise AclError(f"{len(missing)} ACLs created are not in force after {timeout_s:g}s, e.g. {min(missing)}")
        time.sleep(0.1)
