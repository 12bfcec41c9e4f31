"""The `allocator` command line: one console script, one subcommand per job (an adapter at the edge)."""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from collections.abc import Callable, Sequence

from cli.book import _cmd_allocate, _cmd_control, _cmd_demo, _cmd_keys_new, _cmd_serve, _cmd_status
from cli.common import DEFAULT_BOOK, DEFAULT_PREFIX, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, TOPIC_PREFIX_ENV, UsageError
from cli.read_side import (
    _cmd_audit,
    _cmd_db_grant_projector,
    _cmd_db_grant_reader,
    _cmd_db_upgrade,
    _cmd_project,
    _cmd_replay,
)
from cli.wire import _cmd_acl_apply, _cmd_acl_user, _cmd_fill, _cmd_init, _cmd_propose, _cmd_schemas, _cmd_tail
from eventlog.port import MAX_PARTITIONS

# Errors about a path the caller gave (missing, a folder, not a folder, not permitted): a usage error naming it.
_CALLERS_FILE_ERRORS = frozenset({errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM})


def _at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `low` (and at most `high`), else a usage error naming the flag
    and the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: at least {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text!r}: at most {high}")
        return value

    parse.__name__ = "int"
    return parse


def _partitions(text: str) -> int:
    """An argparse type: init's --partitions, 1 to `MAX_PARTITIONS`, the bound refused with its reason."""
    value = _at_least(1)(text)
    if value > MAX_PARTITIONS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_PARTITIONS} (every decision records its position in "
                                         "each input partition: docs/operations.md, \"Topics\")")  # fmt: skip
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535."""
    value = _at_least(0)(text)
    if value > 65_535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 0 to 65535")
    return value


def _topic_prefix(text: str) -> str:
    """An argparse type: a topic prefix, the start of Kafka topic names (a-z, A-Z, 0-9, '.', '_', '-')."""
    import re

    if not re.fullmatch(r"[a-zA-Z0-9._-]{1,200}", text):
        raise argparse.ArgumentTypeError(f"{text!r}: 1-200 characters of a-z, A-Z, 0-9, '.', '_' and '-' (it starts "
                                         "every topic name)")  # fmt: skip
    return text


def _seconds(text: str) -> float:
    """An argparse type: a finite, non-negative number of seconds (NaN or inf would never stop)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: a finite number of seconds, at least 0")
    return value


def _log_options(parser: argparse.ArgumentParser, *, registry: bool = True, discover: bool = False) -> None:
    """Where the book's log is: the options every command that reads or writes it shares. A reading command
    (`discover`) finds the prefix of an embedded log holding one book itself."""
    parser.add_argument("--kafka", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument(
        "--kafka-config",
        help="librdkafka-style properties file with the client's security settings and credentials "
        "(default: $KAFKA_CONFIG_FILE); credentials never go on the command line",
    )
    parser.add_argument(
        "--log", help="embedded log file when no Kafka (default: $ALLOCATOR_LOG or allocator-log.sqlite)"
    )
    if discover:
        parser.add_argument(
            "--topic-prefix",
            type=_topic_prefix,
            default=os.environ.get(TOPIC_PREFIX_ENV) or None,
            help=f"topic names are PREFIX.proposals, ... (default: ${TOPIC_PREFIX_ENV}, else the only book of an "
            "embedded log; on Kafka allocator)",
        )
    else:
        _topic_prefix_option(parser)
    if registry:
        parser.add_argument("--schema-registry", help="schema registry URL (default: single-object encoding)")


def _topic_prefix_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topic-prefix",
        type=_topic_prefix,
        default=os.environ.get(TOPIC_PREFIX_ENV) or DEFAULT_PREFIX,
        help=f"topic names are PREFIX.proposals, ... (default: ${TOPIC_PREFIX_ENV}, else {DEFAULT_PREFIX})",
    )


TRUSTED_KEYS_HELP = "public key file or folder of *.pub files whose decisions verify (repeatable: all are trusted)"
"""--trusted-keys of every command that reads decisions (serve's adds its own key: docs/security.md)."""


def _observe_options(parser: argparse.ArgumentParser) -> None:
    """The metrics endpoint and the log format of a long-running command (serve, project)."""
    parser.add_argument(
        "--metrics-port", type=_port, help="serve /metrics, /healthz and /readyz on this port (default: off; 0: any)"
    )
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics port binds (default 0.0.0.0)")
    parser.add_argument(
        "--log-format", choices=["human", "json"], default=argparse.SUPPRESS,
        help="human lines (default) or one JSON object per line for log shippers",
    )  # fmt: skip


def _describe(parser: argparse.ArgumentParser) -> None:
    """Every subcommand without a description of its own gets its one-line help as one, so that `allocator X --help`
    says what X does (audit, init, project, replay, schemas, keys new and the db commands had only their options)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            if sub.description is None and helps.get(name):
                text = str(helps[name])
                sub.description = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
            _describe(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allocator",
        description="Central capital allocator with non-negotiable risk governors.",
    )
    parser.add_argument(
        "--log-format", choices=["human", "json"], default="human",
        help="human lines (default) or one JSON object per line (time, level, book, cycle, event, fields)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    allocate = sub.add_parser(
        "allocate",
        help="decide one snapshot: print one JSON decision on stdout",
        description="Decide one snapshot file (the portfolio, pending proposals, optional scenarios and "
        "config) and print the decision as JSON. Exit 0 on a decision, 2 when the file is missing or malformed.",
    )
    allocate.add_argument("snapshot", help="path of the snapshot JSON file")
    allocate.add_argument(
        "--no-timing",
        action="store_true",
        help="print solve_ms as null, so equal snapshots give byte-identical output",
    )
    allocate.add_argument("--indent", type=_at_least(0, 32), default=None, help="pretty-print with this indent")
    allocate.set_defaults(handler=_cmd_allocate)

    serve = sub.add_parser(
        "serve",
        help="run the allocator service for one book (Kafka, or the embedded log)",
        description="Consume proposals, fills, marks and commands; decide every cycle; publish each decision "
        "with its governor events and dead letters in one transaction. Uses Kafka when --kafka or "
        "KAFKA_BOOTSTRAP_SERVERS is set, else the embedded log file. Exit 3 when another instance took over.",
    )
    serve.add_argument("--book", default=DEFAULT_BOOK, help="the book (wallet) to allocate (default: main)")
    _log_options(serve, discover=True)
    serve.add_argument(
        "--config",
        help="JSON file of configuration keys (default: the configuration the log records; on an empty log the "
        "defaults of docs/rules.md); one that differs from the log's takes effect and is recorded on the next decision",
    )
    serve.add_argument(
        "--max-cycles",
        type=_at_least(1),
        help="stop once the book has decided this cycle number (counted from the book's first cycle, not from this "
        "start; a cycle runs only when input arrives, so a quiet log waits: bound the wait with --duration)",
    )
    serve.add_argument("--duration", type=_seconds, help="stop after this many seconds")
    _observe_options(serve)
    serve.add_argument(
        "--signing-key",
        help="sign every decision with this Ed25519 key file, or the only *.key file of this folder (keys new --out)",
    )
    serve.add_argument(
        "--trusted-keys",
        action="append",
        help="public key file or folder of *.pub files trusted besides its own (repeatable)",
    )
    serve.set_defaults(handler=_cmd_serve)

    audit = sub.add_parser(
        "audit",
        help="re-run every recorded decision on the state it saw and compare; exit 1 on any mismatch",
    )
    _log_options(audit, discover=True)
    audit.add_argument(
        "--config",
        help="a JSON configuration to cross-check against the one the log records (the log's is used); required "
        "only for a log written before wire version 2, which records none",
    )
    audit.add_argument("--report", default="audit-report.json", help="JSON report path (default: audit-report.json)")
    audit.add_argument("--trusted-keys", action="append", help=TRUSTED_KEYS_HELP)
    audit.add_argument("--head", help="the chain head (decision hash) the log must reach; exit 1 when it does not")
    audit.add_argument(
        "--jobs", type=int, help="re-solve on a local pool of N worker processes (default: 1: in this process, no pool)"
    )
    audit.add_argument(
        "--dask", metavar="ADDRESS", help="re-solve on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786)"
    )
    audit.set_defaults(handler=_cmd_audit)

    keys = sub.add_parser("keys", help="Ed25519 keys for signing decisions and operator commands")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="KEYS_COMMAND")
    keys_sub.required = True
    new_key = keys_sub.add_parser(
        "new", help="write a new key pair <key_id>.key (0600, never printed) and <key_id>.pub into a folder"
    )
    new_key.add_argument("--out", required=True, help="the folder to write the key pair into")
    new_key.set_defaults(handler=_cmd_keys_new)

    init = sub.add_parser("init", help="create the book's topics (retained, never compacted)")
    _log_options(init, registry=False)
    init.add_argument(
        "--partitions",
        type=_partitions,
        default=1,
        help=f"partitions of each input topic (default: 1, at most {MAX_PARTITIONS:,})",
    )
    init.add_argument("--replication-factor", type=_at_least(1), default=1, help="replication factor (default: 1)")
    init.add_argument(
        "--config",
        help="the book's JSON configuration, read for its `agents` only: each gets its own PREFIX.proposals.AGENT (the "
        "book adopts a configuration when `serve --config` runs; init records none)",
    )
    init.set_defaults(handler=_cmd_init)

    for name, help_text in (
        ("project", "project every topic of the book into the database (PostgreSQL, or an SQLite file)"),
        ("replay", "rebuild every projection from offset 0 into a fresh schema (or SQLite file), with progress"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--database", help="SQLAlchemy URL (default: $DATABASE_URL, else sqlite:///allocator-projections.sqlite)"
        )
        p.add_argument("--schema", help="PostgreSQL schema (replay drops and recreates it)")
        _log_options(p, discover=True)
        p.add_argument(
            "--trusted-keys",
            action="append",
            help=f"{TRUSTED_KEYS_HELP}: only those decisions are projected, the others are dead letters naming why "
            "(default: every decision is projected as written, unverified)",
        )
        if name == "replay":
            p.add_argument("--batch-size", type=_at_least(1), default=5_000, help="events per database transaction")
            p.add_argument(
                "--config",
                help="a JSON configuration to cross-check against the one the log's verified decisions record",
            )
        else:
            p.add_argument("--once", action="store_true", help="stop when caught up with the log's end (no tailing)")
            _observe_options(p)
        p.set_defaults(handler=_cmd_project if name == "project" else _cmd_replay)

    acl = sub.add_parser("acl", help="Kafka users and ACLs by role: who may write what (docs/security.md)")
    acl_sub = acl.add_subparsers(dest="acl_command", metavar="ACL_COMMAND")
    acl_sub.required = True
    apply = acl_sub.add_parser(
        "apply",
        help="create the book's ACLs for each role's principals (idempotent; --dry-run prints the table)",
        description="Create, as the admin (--kafka-config / KAFKA_CONFIG_FILE), the ALLOW ACLs of one book: agents "
        "write proposals, executors read decisions and write fills, markets write pnl, operators write control, the "
        "allocator reads its inputs and writes its outputs with its group and transactional id, projectors and "
        "auditors read. ACLs that exist are left as they are; none are removed.",
    )
    apply.add_argument("--book", default="main", help="the book (default: main)")
    apply.add_argument("--dry-run", action="store_true", help="print the table principal x resource x operation only")
    for role, many in (("agent", True), ("executor", True), ("market", True), ("operator", True),
                       ("allocator", False), ("projector", True), ("auditor", True)):  # fmt: skip
        apply.add_argument(
            f"--{role}", action="append", metavar="NAME",
            help=f"{'an' if role[0] in 'aeiou' else 'a'} {role} principal (SCRAM user name)"
            + ("; repeatable" if many else ""),
        )  # fmt: skip
    for p in (apply, acl_sub.add_parser(
        "user",
        help="create a SCRAM-SHA-512 user or rotate its password (from $ALLOCATOR_NEW_PASSWORD or a prompt; "
        "random with --out)",
    )):  # fmt: skip
        p.add_argument("--kafka", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
        p.add_argument("--kafka-config", help="the admin's client properties file (default: $KAFKA_CONFIG_FILE)")
        if p is apply:
            _topic_prefix_option(p)
            p.set_defaults(handler=_cmd_acl_apply)
        else:
            p.add_argument("name", help="the user name; the password is never an argument and never printed")
            p.add_argument(
                "--out", metavar="FILE",
                help="write the user's client properties here (mode 600): the admin file's broker settings, none "
                "of its credentials, and this login; without $ALLOCATOR_NEW_PASSWORD the password is random",
            )  # fmt: skip
            p.set_defaults(handler=_cmd_acl_user)

    control = sub.add_parser(
        "control",
        help="an operator's command: halt, resume, reset-kill-switch, set-limits (who and why are required)",
        description="Publish a ControlCommand on the book's control topic. The allocator acts on it in its next "
        "cycle; the command stays in the log and the projection with its operator and reason.",
    )
    control.add_argument("action", choices=["halt", "resume", "reset-kill-switch", "set-limits"], help="the command")
    control.add_argument(
        "--set", action="append", metavar="KEY=VALUE", dest="limits",
        help="set-limits: a configuration key and its new number, repeatable (agent:ID=1 adds an agent, "
        "agent:ID=0 removes it); a key or value no configuration takes is refused before sending, a rule between "
        "keys is checked against the configuration the log last recorded; the allocator judges the command: "
        "one bad key and nothing changes",
    )  # fmt: skip
    control.add_argument("--reason", required=True, help="why, in the operator's words")
    control.add_argument("--operator", required=True, help="who sends it")
    control.add_argument(
        "--key", help="sign the command with this operator's Ed25519 key file, or the only *.key file of this folder"
    )
    control.add_argument(
        "--book",
        help="the book the command is for (default: the book the log's decisions name, else main); the command names "
        "PREFIX.BOOK, signed with it, and a book with operator keys that is not that book refuses it",
    )  # fmt: skip
    control.add_argument(
        "--trusted-keys", action="append",
        help="the allocator's public key file or folder of *.pub files (repeatable): the book and its operator keys "
        "are then read from the decisions that verify only, so a forged decision cannot refuse the command",
    )  # fmt: skip
    control.add_argument(
        "--unchecked", action="store_true",
        help="send without checking the book and its operator keys against the log's decisions, nor set-limits' "
        "keys and values against the configuration's rules (the book judges the command): for a log whose decisions "
        "cannot be trusted",
    )  # fmt: skip
    _log_options(control, discover=True)
    control.set_defaults(handler=_cmd_control)

    propose = sub.add_parser(
        "propose",
        help="send proposals from JSON (an object, an array or JSON lines; - for stdin), validated first",
        description="Read proposals as JSON, check them with the allocator's own rules (docs/rules.md §2) and "
        "produce them to PREFIX.proposals.AGENT, the agent's own topic, when the book configures agents (allocator "
        "init created it), else to PREFIX.proposals. created_at defaults to now. Exit 2, naming the line and the "
        "field, when any is invalid: then nothing is sent.",
    )
    propose.add_argument("file", help="JSON file of proposals, or - for stdin")
    propose.add_argument("--agent", help="refuse any proposal whose agent_id is not this one")
    _log_options(propose, discover=True)
    propose.set_defaults(handler=_cmd_propose)

    fill = sub.add_parser(
        "fill",
        help="an executor's fills from JSON (object, array or JSON lines; - for stdin), field types checked",
        description="Read fills as JSON, check each field's type and produce them to PREFIX.fills. time defaults "
        "to now and reason to null. Exit 2, naming the line and the field, when any is invalid: nothing is sent.",
    )
    fill.add_argument("file", help="JSON file of fills, or - for stdin")
    _log_options(fill, discover=True)
    fill.set_defaults(handler=_cmd_fill)

    tail = sub.add_parser(
        "tail",
        help="print committed decisions, governor events or dead letters (JSON lines with --json)",
        description="Print the committed records of PREFIX.decisions, PREFIX.governor or PREFIX.deadletter, "
        "from the end (or the beginning), one per line: a one-line summary, or with --json the record as JSON "
        "(enums as their names, bytes as base64). Stops after --max records or --timeout seconds, else follows. "
        "Decisions are shown as written unless --trusted-keys is given: then each is verified (the chain read from "
        "its start) and one that does not verify is shown REFUSED with its position and why.",
    )
    tail.add_argument("what", choices=["decisions", "governor", "deadletter"], help="which topic")
    tail.add_argument("--from-beginning", action="store_true", help="start at offset 0 instead of the end")
    tail.add_argument("--json", action="store_true", help="one JSON object per record")
    tail.add_argument("--max", type=_at_least(1), help="stop after this many records")
    tail.add_argument("--timeout", type=_seconds, help="stop after this many seconds")
    tail.add_argument("--trusted-keys", action="append", help=TRUSTED_KEYS_HELP)
    _log_options(tail, discover=True)
    tail.set_defaults(handler=_cmd_tail)

    status = sub.add_parser(
        "status",
        help="the book now, from the projection: governors and why, equity and drawdown, exposure against caps",
        description="The book now, from the projection, with its caps from the configuration in force: the one "
        "the log's verified decisions record (--trusted-keys names the keys of a signed book). Decisions on the log "
        "that do not verify are named with their position and why.",
    )
    status.add_argument(
        "--database", help="SQLAlchemy URL (default: $DATABASE_URL, else sqlite:///allocator-projections.sqlite)"
    )
    status.add_argument("--schema", help="PostgreSQL schema of the projection")
    status.add_argument(
        "--config",
        help="a JSON configuration to cross-check against the log's (the caps shown are the log's); used only "
        "when there is no log, it records no configuration or none of its signed decisions verifies",
    )
    _log_options(status, discover=True)
    status.add_argument("--trusted-keys", action="append", help=TRUSTED_KEYS_HELP)
    status.add_argument(
        "--decisions", type=_at_least(0), default=5, help="how many recent decisions to show (default 5)"
    )
    status.add_argument("--json", action="store_true", help="print the same as JSON")
    status.set_defaults(handler=_cmd_status)

    demo = sub.add_parser(
        "demo",
        help="seven agents in five strategies, one wallet: a simulated session with the allocator and with naive "
        "sizing, and a report",
        description="Run one seeded session of simulated markets, agents, operator and executor twice through "
        "the real pipeline (service, log, projector): with the allocator, and with naive per-agent sizing. Print "
        "the two side by side and write a report folder (index.html, PNG plots, CSV tables). Embedded log and "
        "SQLite unless --kafka / --database are given.",
    )
    demo.add_argument("--out", default="demo-report", help="report folder (default: demo-report)")
    demo.add_argument(
        "--seed", type=_at_least(0), default=7, help="seed of the world, agents and executor (default: 7)"
    )
    demo.add_argument(
        "--steps", type=int, default=100, help="steps of 5 s log time, one cycle each (default: 100, at least 20)"
    )
    demo.add_argument(
        "--scenario",
        action="append",
        help="stress scenario, repeatable: election-shock (kill switch), broken-executor (failure-rate pause), "
        "slow-solver (solver-timeout monitor), all (the default), calm (none)",
    )
    demo.add_argument("--kafka", help="run on this Kafka broker (fresh topics demo-<time>-<run>.*)")
    demo.add_argument("--database", help="project into this PostgreSQL URL (schemas demo_allocator, demo_naive)")
    demo.add_argument("--scenario-count", type=int, default=1000, help="risk-model scenarios per cycle (default 1000)")
    demo.set_defaults(handler=_cmd_demo)

    db = sub.add_parser("db", help="manage the projection database")
    db_sub = db.add_subparsers(dest="db_command", metavar="DB_COMMAND")
    db_sub.required = True
    up = db_sub.add_parser("upgrade", help="apply the Alembic migrations (default: up to head)")
    up.add_argument("--database", help="SQLAlchemy URL (default: $DATABASE_URL)")
    up.add_argument("--schema", help="PostgreSQL schema to migrate into (default: the search path)")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(handler=_cmd_db_upgrade)
    reader = db_sub.add_parser("grant-reader", help="give a role read-only access to the projections (auditors)")
    reader.add_argument("role", help="the read-only role")
    reader.add_argument("--database", help="SQLAlchemy URL of the writer (default: $DATABASE_URL)")
    reader.add_argument("--schema", help="PostgreSQL schema (default: public)")
    reader.set_defaults(handler=_cmd_db_grant_reader)

    writer = db_sub.add_parser(
        "grant-projector",
        help="give a role the projector's rights: write rows and offsets, no DDL (a new role's password from "
        "$ALLOCATOR_DB_PASSWORD or a prompt)",
    )
    writer.add_argument("role", help="the projector's role")
    writer.add_argument("--database", help="SQLAlchemy URL of the owner (default: $DATABASE_URL)")
    writer.add_argument("--schema", help="PostgreSQL schema (default: public)")
    writer.set_defaults(handler=_cmd_db_grant_projector)

    schemas = sub.add_parser("schemas", help="list every released version of each wire record, with its fingerprint")
    schemas.add_argument("--markdown", action="store_true", help="print the reference page (docs/schemas.md)")
    schemas.set_defaults(handler=_cmd_schemas)
    _describe(parser)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """The names of the top-level subcommands, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


_DEFAULT_SQLITE_COMMANDS = frozenset({"project", "replay", "status"})
"""The commands whose projection is `DEFAULT_EMBEDDED_DATABASE` when neither --database nor $DATABASE_URL names
one (db upgrade and the grants need a URL)."""


def _check_database(args: argparse.Namespace) -> None:
    """A command that opens a database (--database, else $DATABASE_URL, else for some the default SQLite file) is
    refused up front, naming the flag, when the URL cannot be opened at all, names an SQLite database without a file
    (in memory), or --schema is not a name PostgreSQL can take or is given for an SQLite file: not a traceback from
    whichever step first makes an engine, nor a flag silently ignored."""
    import os

    if "database" not in vars(args):
        return
    if getattr(args, "schema", None) is not None:
        from projections.database import check_schema

        try:
            check_schema(args.schema)
        except ValueError as exc:
            raise UsageError(f"--schema: {exc}") from exc
    from projections.database import DEFAULT_EMBEDDED_DATABASE, DatabaseUrlError, check_database_url, sqlite_file

    url = args.database or os.environ.get("DATABASE_URL")
    source = "--database" if args.database else "$DATABASE_URL"
    if not url and args.command in _DEFAULT_SQLITE_COMMANDS:
        url, source = DEFAULT_EMBEDDED_DATABASE, "the default database"
    if not url:
        return
    try:
        check_database_url(url)
    except DatabaseUrlError as exc:
        raise UsageError(f"{source}: {exc}") from exc
    if getattr(args, "schema", None) is not None and sqlite_file(url) is not None:
        # SQLite has no schemas: --schema was ignored, and `replay --schema NAME` said "schema NAME" while it
        # dropped and rebuilt the file a running projector writes.
        raise UsageError(f"--schema {args.schema}: {source} {url} is an SQLite file, which has no schemas (--schema "
                         f"is for PostgreSQL); to keep projections apart, give each its own file: --database "
                         f"sqlite:///{args.schema}.sqlite")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from allocator.engine.highs_banner import silence_highs_banner

    parser = build_parser()
    args = parser.parse_args(argv)
    silence_highs_banner()  # at the edge: the core's solver must not write to the stdout we print JSON on
    handler: Callable[[argparse.Namespace], int] = args.handler
    from eventlog.kafka_properties import KafkaPropertiesError

    try:
        _check_database(args)
        return handler(args)
    except UsageError as exc:
        print(f"allocator {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KafkaPropertiesError as exc:  # names the file and line, never a value
        print(f"allocator {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`| head`)
        return EXIT_OK
    except OSError as exc:
        if exc.filename is None or exc.errno not in _CALLERS_FILE_ERRORS:
            raise  # a full disk or a failing device is not the caller's to fix: a failure, not a usage error
        # A file or folder the command was given that cannot be read or written (a report path in a missing
        # folder, a folder where a file is wanted): the caller's to fix, named, never a traceback.
        print(f"allocator {args.command}: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        from eventlog.port import LogError, NotALogError

        if not isinstance(exc, LogError):
            raise
        # A topic that is not there, or a file that is no log, is the caller's to fix (exit 2); any other refusal of
        # the log is a failure.
        print(f"allocator {args.command}: the log: {exc}", file=sys.stderr)
        caller = isinstance(exc, NotALogError) or "does not exist" in str(exc)
        return EXIT_USAGE if caller else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
