"""The wire's commands: the schemas, the topics and their ACLs, and the shell tools that send and tail records."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    _config_file,
    _existing_log,
    _kafka_admin,
    _log_settings,
    _new_secret,
    _read_input,
    _topic_prefix,
    _trusted_keys,
    counted,
)


def _cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.docs import schemas_markdown
    from schemas.versions import format_versions_table

    if args.markdown:
        sys.stdout.write(schemas_markdown())
        return EXIT_OK
    sys.stdout.write(format_versions_table())
    return EXIT_OK


def _cmd_init(args: argparse.Namespace) -> int:
    from eventlog.port import LogError, Topics, check_topic_prefix

    try:
        check_topic_prefix(args.topic_prefix)
    except ValueError as exc:
        raise UsageError(f"{exc}; nothing created") from exc
    config = _config_file(args)
    topics = Topics(args.topic_prefix, agents=(config.agents or ()) if config is not None else ())
    wanted = {name: args.partitions for name in topics.inputs} | dict.fromkeys(topics.outputs, 1)
    failed = 0
    with _log_settings(args).open() as log:
        # One topic per call: each one's outcome is printed, and one failure does not stop the others.
        for name, partitions in wanted.items():
            try:
                created = log.create_topics(
                    [name],
                    partitions,
                    replication_factor=args.replication_factor,
                    log_append_time=name in topics.inputs,  # the book's clock is the log's (rules.md §1.5)
                )
            except (LogError, ValueError) as exc:
                failed += 1
                print(f"failed  {name}: {exc}", file=sys.stderr)
                continue
            print(f"{'created' if created[name] else 'exists '} {name}")
    if config is not None:
        # init records nothing: a user who gave --config here and not to serve got the defaults, unwarned.
        print(f"{args.config}: read for its agents' topics only; the book adopts a configuration when "
              f"`allocator serve --config {args.config}` first runs (without --config, the defaults)")  # fmt: skip
    return EXIT_FAILURE if failed else EXIT_OK


def _acl_principals(args: argparse.Namespace) -> dict[str, list[str]]:
    from allocator.service.acl import ROLES

    return {role: list(getattr(args, role) or []) for role in ROLES if getattr(args, role)}


def _cmd_acl_apply(args: argparse.Namespace) -> int:
    from allocator.service.acl import acl_table, format_table
    from eventlog.kafka_acl import AclError, create_acls
    from eventlog.port import Topics, check_topic_prefix

    principals = _acl_principals(args)
    if not principals:
        raise UsageError("name at least one principal (--agent, --executor, --market, ...)")
    try:
        check_topic_prefix(args.topic_prefix)
        rows = acl_table(Topics(args.topic_prefix), args.book, principals)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    for line in format_table(rows, principals):
        print(line)
    if args.dry_run:
        print(f"dry run: {len(rows)} ACLs, nothing changed")
        return EXIT_OK
    bootstrap, admin = _kafka_admin(args, "acl apply")
    try:
        count = create_acls(bootstrap, admin, rows)
    except AclError as exc:
        print(f"allocator acl apply: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"applied {count} ACLs (existing ones unchanged)")
    return EXIT_OK


def _cmd_acl_user(args: argparse.Namespace) -> int:
    import os

    from eventlog.kafka_acl import check_principal_name
    from eventlog.kafka_properties import KafkaPropertiesError, write_client_properties
    from eventlog.kafka_scram import (
        MECHANISM,
        ScramError,
        new_password,
        principal_client_properties,
        set_scram_password,
        wait_for_login,
    )

    try:
        check_principal_name(args.name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    bootstrap, admin = _kafka_admin(args, "acl user")
    if args.out is not None and not os.environ.get("ALLOCATOR_NEW_PASSWORD"):
        password = new_password()  # nobody needs to know it: it is written to the principal's file only
    else:
        password = _new_secret("ALLOCATOR_NEW_PASSWORD", "password")
    if args.out is not None:
        try:  # written before the broker changes anything: a file that cannot be written leaves the user as it was
            write_client_properties(args.out, principal_client_properties(admin, args.name, password))
        except (OSError, KafkaPropertiesError) as exc:
            raise UsageError(f"--out {args.out}: cannot write it ({getattr(exc, 'strerror', None) or exc})") from exc
    try:
        set_scram_password(bootstrap, admin, args.name, password)
        # Once this returns, the principal's own commands log in (the credential reached the broker).
        wait_for_login(bootstrap, principal_client_properties(admin, args.name, password))
    except (ScramError, ValueError) as exc:
        print(f"allocator acl user: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"user {args.name}: {MECHANISM} password set (its old one, if any, stops working at its next login)")
    if args.out is not None:
        print(f"its client properties (the broker's settings and this login; mode 600): {args.out}")
    return EXIT_OK


def _send_records(args: argparse.Namespace, kind: str, parse: Callable[[str, int], Sequence[Any]]) -> int:
    """The shell tools' one path: read and check every record first (nothing is sent if any is bad, exit 2),
    then produce them all through the book's client (`propose`: Proposals, `fill`: Fills). A proposal goes to
    its agent's own topic when one exists (the book configures the agent), else to the shared one."""
    from allocator.service.clients import BookClient, agents_with_topics
    from allocator.service.wire import WireError
    from eventlog.port import LogError, NotALogError, Topics, wall_clock_ms
    from schemas.codec import make_codec
    from schemas.events import Proposal

    try:
        records = parse(_read_input(args.file), wall_clock_ms())
    except WireError as exc:
        for problem in exc.problems:
            print(f"allocator {args.command}: {problem}", file=sys.stderr)
        print(f"allocator {args.command}: nothing sent", file=sys.stderr)
        return EXIT_USAGE
    if not records:
        source = "standard input" if args.file == "-" else args.file
        print(f"allocator {args.command}: {source} holds no {kind}; nothing sent", file=sys.stderr)
        return EXIT_USAGE
    settings = _existing_log(args)
    args.topic_prefix = _topic_prefix(args, settings)
    topics = Topics(args.topic_prefix)
    used: dict[str, None] = {}
    try:
        with settings.open() as log:
            agents = {r.agent_id for r in records if isinstance(r, Proposal)}
            topics = agents_with_topics(log, topics, sorted(agents))  # a configured agent's own topic
            client = BookClient(log, make_codec(args.schema_registry), topics)
            for record in records:
                used[client.proposals_topic(record.agent_id) if isinstance(record, Proposal) else topics.fills] = None
                if isinstance(record, Proposal):
                    client.propose(record)
                else:
                    client.report_fill(record)
            client.flush()
    except LogError as exc:
        print(f"allocator {args.command}: the log refused the {kind}: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, NotALogError) else EXIT_FAILURE
    for r in records:
        if isinstance(r, Proposal):
            print(f"sent {r.proposal_id} ({r.agent_id}, {r.market_id} {r.side.value} {r.requested_size:g})")
    print(f"{counted(len(records), kind.removesuffix('s'))} sent to {', '.join(used)} on {settings.describe()}")
    return EXIT_OK


def _cmd_propose(args: argparse.Namespace) -> int:
    from allocator.service.wire import json_records, proposals_from

    return _send_records(args, "proposals", lambda text, now: proposals_from(json_records(text), now, args.agent))


def _cmd_fill(args: argparse.Namespace) -> int:
    from allocator.service.wire import fills_from, json_records

    return _send_records(args, "fills", lambda text, now: fills_from(json_records(text), now))


def _cmd_tail(args: argparse.Namespace) -> int:
    import json
    import time

    from allocator.service.chain import Rejection
    from allocator.service.clients import DecisionFeed
    from allocator.service.wire import one_line, to_json
    from eventlog.port import LogError, NotALogError, Record, Topics, decode_value
    from schemas.codec import UndecodableMessage, make_codec
    from schemas.events import Decision, Event
    from schemas.text import printable

    if args.trusted_keys is not None and args.what != "decisions":
        raise UsageError("--trusted-keys verifies decisions: it goes with `tail decisions` only")
    settings = _existing_log(args)
    args.topic_prefix = _topic_prefix(args, settings)
    topics = Topics(args.topic_prefix)
    topic = {"decisions": topics.decisions, "governor": topics.governor, "deadletter": topics.deadletter}[args.what]
    trusted = _trusted_keys(args) if args.trusted_keys is not None else None
    if args.what == "decisions" and trusted is None:
        print("allocator tail: decisions as written on the log, unverified (--trusted-keys verifies them)",
              file=sys.stderr)  # fmt: skip
    codec = make_codec(args.schema_registry)
    printed = 0

    def show(record: Record, event: Event | Rejection) -> None:
        row: dict[str, Any] = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        if isinstance(event, Rejection):
            row |= {"type": "Rejection", "verified": False, "rejection": event.to_json()}
            print(json.dumps(row) if args.json else printable(f"REFUSED {event.describe()}"), flush=True)
            return
        row |= {"type": type(event).__name__, "record": to_json(event)}
        if trusted is not None:
            row["verified"] = True
        print(json.dumps(row) if args.json else printable(one_line(event)), flush=True)

    try:
        with settings.open() as log:
            ends = log.end_offsets([topic])
            if not ends:
                raise UsageError(f"{topic} does not exist (allocator init)")
            start = {tp: 0 if args.from_beginning else end for tp, end in ends.items()}
            # Verifying reads the chain from its start (as an executor's feed does) and shows records from `start`.
            feed = DecisionFeed(log, codec, topics, start, trusted) if trusted is not None else None
            if feed is None:
                log.assign([topic])
                for tp, offset in start.items():
                    log.seek(tp, offset)
            deadline = None if args.timeout is None else time.monotonic() + args.timeout
            while args.max is None or printed < args.max:
                wait = 0.2 if deadline is None else min(0.2, max(deadline - time.monotonic(), 0.0))
                if deadline is not None and wait <= 0:
                    break
                checked: list[tuple[Record, Decision | Rejection | None]] = (
                    list(feed.poll_checked(max(wait, 0.001))) if feed is not None
                    else [(r, None) for r in log.poll(max_records=500, timeout_s=max(wait, 0.001))]
                )  # fmt: skip
                for record, verdict in checked:
                    if verdict is not None:
                        show(record, verdict)
                    else:
                        try:
                            event = decode_value(record, codec)
                        except UndecodableMessage as exc:
                            print(f"allocator tail: {record.topic}[{record.partition}]@{record.offset}: {exc.reason}",
                                  file=sys.stderr)  # fmt: skip
                            continue
                        show(record, event)
                    printed += 1
                    if args.max is not None and printed >= args.max:
                        break
    except LogError as exc:
        print(f"allocator tail: the log failed: {exc}", file=sys.stderr)
        # a topic that is not there, or a file that is no log: exit 2
        return EXIT_USAGE if isinstance(exc, NotALogError) or "does not exist" in str(exc) else EXIT_FAILURE
    return EXIT_OK
