"""The `allocator` command line: one console script, one subcommand per job (an adapter at the edge)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from allocator.backends import LogSettings
    from allocator.config import AllocatorConfig
    from schemas.codec import EventCodec

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.codec import load_schema, schema_fingerprint, schema_path
    from schemas.docs import schemas_markdown
    from schemas.events import EVENT_TYPES

    if args.markdown:
        sys.stdout.write(schemas_markdown())
        return EXIT_OK

    print(f"{'record':<18} {'fingerprint (CRC-64-AVRO)':<26} file")
    for event_type in EVENT_TYPES:
        fp = schema_fingerprint(load_schema(event_type)).hex()
        print(f"{event_type.__name__:<18} {fp:<26} {schema_path(event_type).name}")
    return EXIT_OK


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    import os

    from projections.migrate import upgrade

    url = args.database or os.environ.get("DATABASE_URL")
    if not url:
        print("allocator db upgrade: no database: pass --database URL or set DATABASE_URL", file=sys.stderr)
        return EXIT_USAGE
    upgrade(url, schema=args.schema, revision=args.revision)
    print(f"projection schema is at {args.revision}" + (f" in schema {args.schema}" if args.schema else ""))
    return EXIT_OK


def _cmd_allocate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from allocator.cycle import run_cycle
    from allocator.snapshot import SnapshotError, decision_json, load_snapshot

    try:
        request = load_snapshot(Path(args.snapshot))
    except SnapshotError as exc:
        print(f"allocator allocate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    outcome = run_cycle(request)
    print(json.dumps(decision_json(outcome.decision, timing=not args.no_timing), indent=args.indent))
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import time

    from allocator.eventlog import FencedError, LogError
    from allocator.sequencer import Topics
    from allocator.service import AllocatorService, group_of
    from schemas.codec import make_codec

    config = _load_config(args, "serve")
    if config is None:
        return EXIT_USAGE
    settings = _log_settings(args)
    stop = {"now": False}

    def request_stop(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    deadline = time.monotonic() + args.duration if args.duration else None
    log = settings.open(group_of(args.book))
    reader = settings.open()
    service = AllocatorService(
        log, reader, make_codec(args.schema_registry), args.book, config, Topics(args.topic_prefix),
        say=lambda line: print(line, flush=True),
    )  # fmt: skip
    print(f"allocator serve: book {args.book} on {settings.describe()}", flush=True)
    try:
        service.start()
        published = service.run(
            lambda: (
                stop["now"]
                or (deadline is not None and time.monotonic() >= deadline)
                or (args.max_cycles is not None and service.state.cycle >= args.max_cycles)
            )
        )
    except FencedError as exc:
        print(f"allocator serve: another instance took over book {args.book}; stopping ({exc})", file=sys.stderr)
        return 3
    except LogError as exc:
        print(f"allocator serve: the log failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        reader.close()
        log.close()
    print(f"allocator serve: stopped after {published} decisions (cycle {service.state.cycle})", flush=True)
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    from allocator.audit import audit_log, summary_table, write_report
    from allocator.sequencer import Topics
    from schemas.codec import make_codec

    config = _load_config(args, "audit")
    if config is None:
        return EXIT_USAGE
    settings = _log_settings(args)

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            print(f"\raudited {done}/{total} decisions", end="" if done < total else "\n", file=sys.stderr, flush=True)

    with settings.open() as reader:
        report = audit_log(reader, make_codec(args.schema_registry), Topics(args.topic_prefix), config, progress)
    print(summary_table(report))
    write_report(report, args.report)
    print(f"report written to {args.report}")
    return EXIT_FAILURE if report.mismatches else EXIT_OK


def _projector_setup(args: argparse.Namespace) -> tuple[LogSettings, list[str], EventCodec]:
    from allocator.sequencer import Topics
    from schemas.codec import make_codec

    topics = Topics(args.topic_prefix)
    return (
        _log_settings(args),
        [*topics.inputs, *topics.outputs],
        make_codec(args.schema_registry),
    )


def _cmd_project(args: argparse.Namespace) -> int:
    import os
    import signal

    from projections.database import DEFAULT_EMBEDDED_DATABASE, engine_for
    from projections.migrate import upgrade
    from projections.projector import Projector, StaleProjectorError

    settings, topic_names, codec = _projector_setup(args)
    url = args.database or os.environ.get("DATABASE_URL") or DEFAULT_EMBEDDED_DATABASE
    upgrade(url, schema=args.schema)
    engine = engine_for(url, args.schema)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    with settings.open() as log:
        projector = Projector(log, engine, codec, topic_names, say=lambda line: print(line, flush=True))
        projector.start()
        print(f"allocator project: {settings.describe()} -> {engine.url.render_as_string()}", flush=True)
        ends = log.end_offsets(topic_names) if args.once else None
        try:
            stats = projector.run(lambda: stop["now"] or (ends is not None and projector.caught_up(ends)))
        except StaleProjectorError as exc:
            print(f"allocator project: {exc}", file=sys.stderr)
            return 3
    print(f"allocator project: stopped after {stats.records} events in {stats.batches} batches", flush=True)
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    import os
    import time
    from pathlib import Path

    from projections.database import DEFAULT_EMBEDDED_DATABASE, fresh_schema
    from projections.projector import Projector, ProjectorStats

    settings, topic_names, codec = _projector_setup(args)
    url = args.database or os.environ.get("DATABASE_URL") or DEFAULT_EMBEDDED_DATABASE
    if url.startswith("sqlite:///") and args.schema is None:
        target = Path(url.removeprefix("sqlite:///"))
        if target.exists():
            target.unlink()  # a replay starts from nothing
    engine = fresh_schema(url, args.schema)
    started = time.monotonic()
    with settings.open() as log:
        ends = log.end_offsets(topic_names)
        total = sum(ends.values())
        projector = Projector(
            log,
            engine,
            codec,
            topic_names,
            consumer="projector",
            batch_size=args.batch_size,
            say=lambda line: print(line, file=sys.stderr, flush=True),
        )

        def progress(stats: ProjectorStats) -> None:
            done = stats.records
            rate = done / max(time.monotonic() - started, 1e-9)
            eta = (total - done) / rate if rate > 0 else float("inf")
            width = 30
            filled = int(width * done / total) if total else width
            print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} events, {rate:,.0f}/s, ETA {eta:,.0f} s",
                  end="", file=sys.stderr, flush=True)  # fmt: skip

        projector.start()
        projector.catch_up(ends, on_batch=progress)
    elapsed = time.monotonic() - started
    print(file=sys.stderr)
    print(f"replayed {projector.stats.records} events into {engine.url.render_as_string()}"
          + (f" schema {args.schema}" if args.schema else "") + f" in {elapsed:.1f} s "
          f"({projector.stats.records / max(elapsed, 1e-9):,.0f} events/s)")  # fmt: skip
    return EXIT_OK


def _cmd_init(args: argparse.Namespace) -> int:
    from allocator.sequencer import Topics

    topics = Topics(args.topic_prefix)
    names = [*topics.inputs, *topics.outputs]
    settings = _log_settings(args)
    if settings.kafka_bootstrap is None:
        with settings.open() as log:
            log.create_topics(names)
        print(f"created {len(names)} topics in {settings.describe()}")
        return EXIT_OK
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import KafkaError, KafkaException, NewTopic

    admin = AdminClient(settings.kafka_client_config())
    from allocator.log_kafka import TOPIC_CONFIG

    new = [
        NewTopic(name, num_partitions=args.partitions if name in topics.inputs else 1,
                 replication_factor=args.replication_factor, config=TOPIC_CONFIG)
        for name in names
    ]  # fmt: skip
    failed = 0
    for name, future in admin.create_topics(new, operation_timeout=30).items():
        try:
            future.result(timeout=60)
            print(f"created {name}")
        except KafkaException as exc:
            error = exc.args[0]
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                print(f"exists  {name}")
            else:
                failed += 1
                print(f"failed  {name}: {exc}", file=sys.stderr)
    return EXIT_FAILURE if failed else EXIT_OK


def _cmd_db_grant_reader(args: argparse.Namespace) -> int:
    import os

    from projections.database import engine_for
    from projections.roles import grant_reader

    url = args.database or os.environ.get("DATABASE_URL")
    if not url:
        print("allocator db grant-reader: no database: pass --database URL or set DATABASE_URL", file=sys.stderr)
        return EXIT_USAGE
    try:
        grant_reader(engine_for(url), args.role, args.schema or "public", args.password)
    except ValueError as exc:
        print(f"allocator db grant-reader: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"role {args.role} can read schema {args.schema or 'public'} (SELECT only)")
    return EXIT_OK


def _cmd_control(args: argparse.Namespace) -> int:
    import uuid

    from allocator.clients import BookClient, ClientError
    from allocator.eventlog import LogError, wall_clock_ms
    from allocator.sequencer import Topics
    from schemas.codec import make_codec
    from schemas.events import Command, ControlCommand

    settings = _log_settings(args)
    command = ControlCommand(
        command_id=f"cmd-{uuid.uuid4().hex}",
        operator_id=args.operator,
        command=Command(args.action.upper().replace("-", "_")),
        reason=args.reason,
        limits=None,
        time=wall_clock_ms(),
    )
    topics = Topics(args.topic_prefix)
    try:
        with settings.open() as log:
            client = BookClient(log, make_codec(args.schema_registry), topics)
            client.command(command)
            client.flush()
    except ClientError as exc:
        print(f"allocator control: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LogError as exc:
        print(f"allocator control: the log refused the command: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"sent {command.command.value} {command.command_id} by {command.operator_id} to {topics.control} on "
          f"{settings.describe()}; the allocator acts on it in its next cycle")  # fmt: skip
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    import json
    import os

    from sqlalchemy.exc import SQLAlchemyError

    from projections.database import DEFAULT_EMBEDDED_DATABASE, engine_for
    from projections.status import Caps, format_status, read_status

    config = _load_config(args, "status")
    if config is None:
        return EXIT_USAGE
    url = args.database or os.environ.get("DATABASE_URL") or DEFAULT_EMBEDDED_DATABASE
    caps = Caps(config.kill_switch_drawdown, config.market_cap, config.group_cap, dict(config.group_caps),
                config.opportunity_window_s)  # fmt: skip
    engine = engine_for(url, args.schema)
    try:
        status = read_status(engine, caps, decisions=args.decisions)
    except SQLAlchemyError as exc:
        where = engine.url.render_as_string()
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        print(f"allocator status: cannot read the projection at {where}: {problem} (has `allocator project` run?)",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    finally:
        engine.dispose()
    print(json.dumps(status, indent=1, default=str) if args.json else format_status(status))
    return EXIT_OK


def _load_config(args: argparse.Namespace, command: str) -> AllocatorConfig | None:
    """The --config file, or the defaults; None (after saying why) when it is not a valid configuration."""
    from allocator.backends import load_config
    from allocator.config import ConfigError

    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"allocator {command}: {exc}", file=sys.stderr)
        return None


def _log_settings(args: argparse.Namespace) -> LogSettings:
    from allocator.backends import LogSettings

    return LogSettings.resolve(args.kafka, args.log)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from simulation.demo import DemoError, DemoOptions, pick_scenarios, run_demo

    try:
        options = DemoOptions(
            out=Path(args.out),
            seed=args.seed,
            steps=args.steps,
            scenarios=pick_scenarios(args.scenario),
            kafka=args.kafka,
            database=args.database,
            scenario_count=args.scenario_count,
        )
        if options.steps < 20:
            raise DemoError(f"--steps {options.steps}: at least 20 (the scenarios are placed in fractions of it)")
        return run_demo(options, say=lambda line: print(line, flush=True))
    except DemoError as exc:
        print(f"allocator demo: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _log_options(parser: argparse.ArgumentParser, *, registry: bool = True) -> None:
    """Where the book's log is: the options every command that reads or writes it shares."""
    parser.add_argument("--kafka", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument(
        "--log", help="embedded log file when no Kafka (default: $ALLOCATOR_LOG or allocator-log.sqlite)"
    )
    parser.add_argument(
        "--topic-prefix", default="allocator", help="topic names are PREFIX.proposals, ... (default: allocator)"
    )
    if registry:
        parser.add_argument("--schema-registry", help="schema registry URL (default: single-object encoding)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allocator",
        description="Central capital allocator with non-negotiable risk governors.",
    )
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
    allocate.add_argument("--indent", type=int, default=None, help="pretty-print with this indent")
    allocate.set_defaults(handler=_cmd_allocate)

    serve = sub.add_parser(
        "serve",
        help="run the allocator service for one book (Kafka, or the embedded log)",
        description="Consume proposals, fills, marks and commands; decide every cycle; publish each decision "
        "with its governor events and dead letters in one transaction. Uses Kafka when --kafka or "
        "KAFKA_BOOTSTRAP_SERVERS is set, else the embedded log file. Exit 3 when another instance took over.",
    )
    serve.add_argument("--book", default="main", help="the book (wallet) to allocate (default: main)")
    _log_options(serve)
    serve.add_argument("--config", help="JSON file of configuration keys (default: the SPEC's defaults)")
    serve.add_argument("--max-cycles", type=int, help="stop after this cycle number")
    serve.add_argument("--duration", type=float, help="stop after this many seconds")
    serve.set_defaults(handler=_cmd_serve)

    audit = sub.add_parser(
        "audit",
        help="re-run every recorded decision on the state it saw and compare; exit 1 on any mismatch",
    )
    _log_options(audit)
    audit.add_argument("--config", help="the JSON configuration the allocator ran with")
    audit.add_argument("--report", default="audit-report.json", help="JSON report path (default: audit-report.json)")
    audit.set_defaults(handler=_cmd_audit)

    init = sub.add_parser("init", help="create the book's topics (retained, never compacted)")
    _log_options(init, registry=False)
    init.add_argument("--partitions", type=int, default=1, help="partitions of each input topic (default: 1)")
    init.add_argument("--replication-factor", type=int, default=1, help="replication factor (default: 1)")
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
        _log_options(p)
        if name == "replay":
            p.add_argument("--batch-size", type=int, default=5_000, help="events per database transaction")
        else:
            p.add_argument("--once", action="store_true", help="stop when caught up with the log's end (no tailing)")
        p.set_defaults(handler=_cmd_project if name == "project" else _cmd_replay)

    control = sub.add_parser(
        "control",
        help="an operator's command to the governors: halt, resume, reset-kill-switch (who and why are required)",
        description="Publish a ControlCommand on the book's control topic. The allocator acts on it in its next "
        "cycle; the command stays in the log and the projection with its operator and reason.",
    )
    control.add_argument("action", choices=["halt", "resume", "reset-kill-switch"], help="the command")
    control.add_argument("--reason", required=True, help="why, in the operator's words")
    control.add_argument("--operator", required=True, help="who sends it")
    _log_options(control)
    control.set_defaults(handler=_cmd_control)

    status = sub.add_parser(
        "status",
        help="the book now, from the projection: governors and why, equity and drawdown, exposure against caps",
    )
    status.add_argument(
        "--database", help="SQLAlchemy URL (default: $DATABASE_URL, else sqlite:///allocator-projections.sqlite)"
    )
    status.add_argument("--schema", help="PostgreSQL schema of the projection")
    status.add_argument("--config", help="the JSON configuration the allocator runs with (for the caps shown)")
    status.add_argument("--decisions", type=int, default=5, help="how many recent decisions to show (default 5)")
    status.add_argument("--json", action="store_true", help="print the same as JSON")
    status.set_defaults(handler=_cmd_status)

    demo = sub.add_parser(
        "demo",
        help="five agents, one wallet: a simulated session with the allocator and with naive sizing, and a report",
        description="Run one seeded session of simulated markets, agents, operator and executor twice through "
        "the real pipeline (service, log, projector): with the allocator, and with naive per-agent sizing. Print "
        "the two side by side and write a report folder (index.html, PNG plots, CSV tables). Embedded log and "
        "SQLite unless --kafka / --database are given.",
    )
    demo.add_argument("--out", default="demo-report", help="report folder (default: demo-report)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the world, agents and executor (default: 7)")
    demo.add_argument("--steps", type=int, default=100, help="steps of 5 s log time, one cycle each (default: 100)")
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
    reader.add_argument("--password", help="create the role with this password when it does not exist")
    reader.add_argument("--database", help="SQLAlchemy URL of the writer (default: $DATABASE_URL)")
    reader.add_argument("--schema", help="PostgreSQL schema (default: public)")
    reader.set_defaults(handler=_cmd_db_grant_reader)

    schemas = sub.add_parser("schemas", help="list the wire contract's records and their fingerprints")
    schemas.add_argument("--markdown", action="store_true", help="print the reference page (docs/schemas.md)")
    schemas.set_defaults(handler=_cmd_schemas)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """The names of the top-level subcommands, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def main(argv: Sequence[str] | None = None) -> int:
    from allocator.highs_banner import silence_highs_banner

    parser = build_parser()
    args = parser.parse_args(argv)
    silence_highs_banner()  # at the edge: the core's solver must not write to the stdout we print JSON on
    handler: Callable[[argparse.Namespace], int] = args.handler
    from allocator.kafka_properties import KafkaPropertiesError

    try:
        return handler(args)
    except KafkaPropertiesError as exc:  # names the file and line, never a value
        print(f"allocator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
