"""Who may write what (rules.md §11.1): the Kafka ACL table of one book, by role. Pure: rows, no broker.

Principals are SCRAM user names, grouped by role:

| role      | may                                                                                         |
|-----------|---------------------------------------------------------------------------------------------|
| agent     | WRITE (and DESCRIBE) its own proposals topic `<prefix>.proposals.<agent>` (the user name is |
|           | the agent id), never another agent's nor the shared `<prefix>.proposals`                    |
| executor  | READ decisions, WRITE fills; consumer groups `executor-<prefix>-<name>*`                     |
| market    | WRITE pnl (marks and resolutions)                                                           |
| operator  | WRITE control; READ decisions (`control` checks a command against them); consumer groups    |
|           | `operator-<prefix>-<name>*`                                                                 |
| allocator | READ every topic of the book (the agents' own: PREFIXED `<prefix>.proposals.`), WRITE        |
|           | decisions/governor/deadletter, CREATE the book's topics                                     |
|           | (serve creates a missing one at start), its consumer group and transactional id             |
|           | `allocator-<prefix>-<book>` (READ/DESCRIBE; WRITE/DESCRIBE)                                  |
| projector | READ every topic of the book, as the allocator; consumer groups `projector-<prefix>-<name>*`; |
|           | writes nothing                                                                              |
| auditor   | READ every topic of the book; consumer groups `auditor-<prefix>-<name>*`; writes nothing      |

Nobody else may do anything (the broker runs with allow.everyone.if.no.acl.found=false); the admin and broker
are super users. Every reading role may also DESCRIBE the groups `eventlog-reader-*`: the private, never-committed
groups of the project's readers that have no group of their own. IDEMPOTENT_WRITE on the cluster is not granted:
since Kafka 3.0 WRITE on a topic implies it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from allocator.service.loop import group_of, transactional_id_of
from eventlog.kafka_acl import PRIVATE_READER_GROUP_PREFIX, AclEntry, check_principal_name
from eventlog.port import Topics, check_agent_id, normalise_book_id

ROLES = ("agent", "executor", "market", "operator", "allocator", "projector", "auditor")
"""Every role, in the order the table lists them."""


def group_prefix(role: str, topics: Topics, principal: str) -> str:
    """The consumer groups a reading role may use: `<role>-<prefix>-<principal>` and anything after it."""
    return f"{role}-{topics.prefix}-{principal}"


def _all_topics(topics: Topics) -> tuple[str, ...]:
    return (*topics.inputs, *topics.outputs)


def _topic(principal: str, name: str, *operations: str) -> list[AclEntry]:
    return [AclEntry(principal, "TOPIC", "LITERAL", name, op) for op in operations]


def _role_rows(role: str, principal: str, topics: Topics, book: str) -> list[AclEntry]:
    if role == "agent":  # its own proposals topic only: the topic tells the fold who wrote (rules.md §11.1)
        return _topic(principal, topics.proposals_of(principal), "WRITE", "DESCRIBE")
    if role == "executor":
        return [
            *_topic(principal, topics.decisions, "READ", "DESCRIBE"),
            *_topic(principal, topics.fills, "WRITE", "DESCRIBE"),
            *_groups(role, principal, topics),
        ]
    if role == "market":
        return _topic(principal, topics.pnl, "WRITE", "DESCRIBE")
    if role == "operator":
        # READ decisions: `control` checks a command against the book's name and keyring there before sending it;
        # without it an unsigned `halt` on a book with operator keys printed "sent" and the book refused it (an
        # outside probe)
        return [
            *_topic(principal, topics.control, "WRITE", "DESCRIBE"),
            *_topic(principal, topics.decisions, "READ", "DESCRIBE"),
            *_groups(role, principal, topics),
        ]
    if role == "allocator":
        rows = [row for name in _all_topics(topics) for row in _topic(principal, name, "READ", "DESCRIBE", "CREATE")]
        rows += _agent_topics(principal, topics, "READ", "DESCRIBE", "CREATE")
        rows += [row for name in topics.outputs for row in _topic(principal, name, "WRITE")]
        group = group_of(topics, book)
        rows += [AclEntry(principal, "GROUP", "LITERAL", group, op) for op in ("READ", "DESCRIBE")]
        rows += _private_reader(principal)
        # The prefix's id only. The one an earlier release wrote this book under, `allocator-<prefix>-<book>`, is also
        # the id of the prefix `<prefix>-<book>`'s allocator, so granting it let one book's allocator stop another's
        # (an outside probe); serve fences it where a grant of that release still allows it, and skips it elsewhere.
        txn = transactional_id_of(topics)
        rows += [AclEntry(principal, "TRANSACTIONAL_ID", "LITERAL", txn, op) for op in ("WRITE", "DESCRIBE")]
        return rows
    if role in ("projector", "auditor"):
        rows = [row for name in _all_topics(topics) for row in _topic(principal, name, "READ", "DESCRIBE")]
        rows += _agent_topics(principal, topics, "READ", "DESCRIBE")
        return rows + _groups(role, principal, topics)
    raise ValueError(f"role {role!r}: not one of {', '.join(ROLES)}")


def _agent_topics(principal: str, topics: Topics, *operations: str) -> list[AclEntry]:
    """Every agent's own proposals topic, `<prefix>.proposals.<agent>`, present and future (PREFIXED)."""
    head = topics.proposals_of("x")[:-1]
    return [AclEntry(principal, "TOPIC", "PREFIXED", head, op) for op in operations]


def _groups(role: str, principal: str, topics: Topics) -> list[AclEntry]:
    prefix = group_prefix(role, topics, principal)
    return [AclEntry(principal, "GROUP", "PREFIXED", prefix, op) for op in ("READ", "DESCRIBE")] + _private_reader(
        principal
    )


def _private_reader(principal: str) -> list[AclEntry]:
    """The private groups of the project's readers without a group (`allocator project`, `audit`, serve's replay):
    DESCRIBE only (the coordinator's lookup); they never commit."""
    return [AclEntry(principal, "GROUP", "PREFIXED", PRIVATE_READER_GROUP_PREFIX, "DESCRIBE")]


def acl_table(topics: Topics, book: str, principals: Mapping[str, Sequence[str]]) -> list[AclEntry]:
    """Every ALLOW binding of the book for `principals` (role -> user names), sorted and without duplicates.
    A user may hold several roles; an unknown role or a bad user name raises ValueError naming it."""
    book = normalise_book_id(book)
    rows: set[AclEntry] = set()
    for role, names in principals.items():
        if role not in ROLES:
            raise ValueError(f"role {role!r}: not one of {', '.join(ROLES)}")
        for name in names:
            check_principal_name(name)
            if role == "agent":
                check_agent_id(name)
            rows.update(_role_rows(role, name, topics, book))
    return sorted(rows)


def roles_of(principals: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """User name -> its roles, for printing the table."""
    found: dict[str, list[str]] = {}
    for role in ROLES:
        for name in principals.get(role, ()):
            found.setdefault(name, []).append(role)
    return found


def format_table(rows: Sequence[AclEntry], principals: Mapping[str, Sequence[str]]) -> list[str]:
    """The table as aligned text lines: principal (roles), resource type, pattern, name, operation."""
    roles = roles_of(principals)
    cells = [("PRINCIPAL", "ROLE", "RESOURCE", "PATTERN", "NAME", "OPERATION")]
    cells += [
        (f"User:{r.principal}", ",".join(roles.get(r.principal, ())), r.resource_type, r.pattern, r.name, r.operation)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
