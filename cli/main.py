"""The `allocator` command line: one console script, one subcommand per job (an adapter at the edge)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from prometheus_client import CollectorRegistry

    from allocator.service.audit_engines import AuditEngine
    from allocator.service.backends import LogSettings
    from allocator.service.chain import ChainSettings
    from book.config import AllocatorConfig
    from cli.observe import LogLine, MetricsServer
    from eventlog.port import EventLog, Topics
    from schemas.codec import EventCodec

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command that must not run as asked: its message is printed and the exit code is 2, never a traceback."""


def _cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.docs import schemas_markdown
    from schemas.versions import format_versions_table

    if args.markdown:
        sys.stdout.write(schemas_markdown())
        return EXIT_OK
    sys.stdout.write(format_versions_table())
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

    from allocator.engine.cycle import run_cycle
    from allocator.service.snapshot import SnapshotError, decision_json, load_snapshot

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

    from allocator.service.loop import AllocatorService, group_of
    from allocator.service.metrics import ServiceMetrics
    from allocator.service.sequencer import BookState, NoConfigOnLog
    from eventlog.port import FencedError, LogError, TopicPartition, Topics, normalise_book_id
    from schemas.codec import make_codec
    from schemas.events import Decision

    config = _config_file(args)
    try:
        args.book = normalise_book_id(args.book)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    settings = _log_settings(args)
    stop = {"now": False}

    def request_stop(signum: int, _frame: object) -> None:
        stop["now"] = True

    holder: dict[str, AllocatorService] = {}
    say = _log_line(args, args.book, lambda: holder["service"].state.cycle if "service" in holder else None)

    class LoggedMetrics(ServiceMetrics):
        """The metrics hook also hands the cycle's facts to the next log line (the cycle's summary)."""

        def on_cycle(
            self,
            state: BookState,
            decision: Decision,
            inputs: int,
            dead_letters: int,
            seconds: float,
            log: EventLog,
            positions: Mapping[TopicPartition, int],
        ) -> None:
            super().on_cycle(state, decision, inputs, dead_letters, seconds, log, positions)
            say.expect("cycle", {
                "decision_id": decision.decision_id, "inputs": inputs, "decided": len(decision.allocations),
                "funded": sum(1 for a in decision.allocations if a.size > 0), "solver_path": decision.solver_path.value,
                "solve_ms": decision.solve_ms, "governor_state": decision.governor_state.value,
                "equity": decision.equity, "available": decision.available, "dead_letters": dead_letters,
                "duration_s": round(seconds, 6),
            })  # fmt: skip

    metrics = LoggedMetrics(args.book)
    server = _metrics_server(args, metrics.registry, metrics.ready)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    deadline = time.monotonic() + args.duration if args.duration else None
    chain = _chain_settings(args)
    log = settings.open(group_of(Topics(args.topic_prefix), args.book))
    reader = settings.open()
    service = AllocatorService(
        log, reader, make_codec(args.schema_registry), args.book, config, Topics(args.topic_prefix),
        say=say, metrics=metrics, chain=chain,
    )  # fmt: skip
    holder["service"] = service
    say.info(f"allocator serve: book {args.book} on {settings.describe()}"
             + (f"; metrics on port {server.port}" if server else ""), event="start")  # fmt: skip
    try:
        service.start()
        _say_trust(chain, service.state.portfolio.config, say)  # the configuration in force, the log's or the file's
        if not settings.kafka_bootstrap:
            say.write("warning", f"allocator serve: the embedded log {settings.embedded_path} has no principals: "
                      "whoever can write its file can write any topic as any role (rules.md §11.1)",
                      "trust", {"writers_authenticated": False})  # fmt: skip
        published = service.run(
            lambda: (
                stop["now"]
                or (deadline is not None and time.monotonic() >= deadline)
                or (args.max_cycles is not None and service.state.cycle >= args.max_cycles)
            )
        )
    except NoConfigOnLog as exc:
        raise UsageError(str(exc)) from exc
    except FencedError as exc:
        metrics.on_fenced()
        say.error(f"allocator serve: another instance took over book {args.book}; stopping ({exc})", event="fenced")
        return 3
    except LogError as exc:
        say.error(f"allocator serve: the log failed: {exc}", event="log_failed")
        return EXIT_FAILURE
    finally:
        reader.close()
        log.close()
        if server is not None:
            server.close()
    say.info(f"allocator serve: stopped after {published} decisions (cycle {service.state.cycle})", event="stop",
             decisions=published)  # fmt: skip
    return EXIT_OK


def _chain_settings(args: argparse.Namespace) -> ChainSettings:
    """serve's key and trusted keys from --signing-key and --trusted-keys (errors name the file)."""
    from allocator.service.chain import ChainSettings, DecisionSigner
    from allocator.service.keys import load_signing_key
    from schemas.signing import SigningKeyError

    try:
        signer = DecisionSigner(load_signing_key(args.signing_key)) if args.signing_key else None
        return ChainSettings(signer, _trusted_keys(args))
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from exc


def _trusted_keys(args: argparse.Namespace) -> dict[str, Ed25519PublicKey]:
    from allocator.service.keys import load_trusted_keys
    from schemas.signing import SigningKeyError

    try:
        return load_trusted_keys(args.trusted_keys) if args.trusted_keys else {}
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from exc


def _say_trust(chain: ChainSettings, config: AllocatorConfig, say: LogLine) -> None:
    """What serve's decisions and commands can be trusted for, said once at start (docs/security.md)."""
    if chain.signer is None:
        say.write("warning", "allocator serve: WARNING: decisions are UNSIGNED (no --signing-key): anyone who can "
                  "write the decisions stream (or the embedded log file) can forge them, and executors cannot tell",
                  "trust", {"decisions_signed": False})  # fmt: skip
    else:
        say.info(f"allocator serve: signing decisions with key {chain.signer.key_id}; trusted keys: "
                 f"{', '.join(sorted(chain.trusted))}", "trust", decisions_signed=True)  # fmt: skip
    if not config.operator_keys:
        say.write("warning", "allocator serve: operator commands are accepted UNSIGNED (operator_keys is empty): "
                  "anyone who can write the control stream can halt, resume or reset the kill switch",
                  "trust", {"commands_signed": False})  # fmt: skip
    else:
        say.info(f"allocator serve: operator commands must be signed by one of {len(config.operator_keys)} "
                 f"operator keys (reset quorum {config.kill_switch_reset_quorum})", "trust",
                 commands_signed=True)  # fmt: skip


def _cmd_keys_new(args: argparse.Namespace) -> int:
    from allocator.service.keys import new_key_pair
    from schemas.signing import SigningKeyError

    try:
        key_id, _private, public = new_key_pair(args.out)
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from exc
    print(f"key id {key_id}")
    print(f"public key {public}")
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    import time

    from allocator.service.audit import audit_log, summary_table, write_report
    from allocator.service.sequencer import NoConfigOnLog
    from eventlog.port import Topics
    from schemas.codec import make_codec

    config = _config_file(args)
    settings = _log_settings(args)
    args.topic_prefix = _topic_prefix(args, settings)

    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            rate = done / max(time.monotonic() - started, 1e-9)
            print(f"\raudited {done}/{total} decisions, {rate:,.1f} re-derived/s", end="" if done < total else "\n",
                  file=sys.stderr, flush=True)  # fmt: skip

    trusted = _trusted_keys(args)
    head = args.head.strip().lower() if args.head else None
    if head is not None and (len(head) != 64 or any(c not in "0123456789abcdef" for c in head)):
        raise UsageError(f"--head {args.head!r}: a decision hash is 64 hex characters")
    codec, topics = make_codec(args.schema_registry), Topics(args.topic_prefix)
    engine = _audit_engine(args)
    try:
        with settings.open() as reader:
            on_log = _cross_check(reader, codec, topics, config)
            print(f"allocator audit: re-solving on {engine.name} ({engine.workers} workers)", file=sys.stderr)
            report = audit_log(reader, codec, topics, config if on_log is None else None, progress, engine,
                               trusted=trusted, head=head)  # fmt: skip
    except NoConfigOnLog as exc:
        raise UsageError(str(exc)) from exc
    finally:
        engine.close()
    print(summary_table(report))
    write_report(report, args.report)
    print(f"report written to {args.report}")
    return EXIT_FAILURE if report.mismatches or report.errors else EXIT_OK


def _audit_engine(args: argparse.Namespace) -> AuditEngine:
    """Where the re-solves run: --dask ADDRESS, a process pool of --jobs N, or this process."""
    from allocator.service.audit_engines import DaskEngine, ProcessPoolEngine, SequentialEngine

    if args.dask is not None:
        if args.jobs is not None:
            raise UsageError("--jobs and --dask: choose one (the cluster's workers are its own)")
        try:
            return DaskEngine(args.dask)
        except ImportError as exc:
            raise UsageError(f"--dask needs Dask: pip install 'allocator[audit-cluster]' ({exc})") from exc
        except OSError as exc:
            raise UsageError(f"--dask {args.dask}: cannot reach the scheduler: {exc}") from exc
    if args.jobs is None or args.jobs == 1:
        return SequentialEngine()
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: at least 1")
    return ProcessPoolEngine(args.jobs)


def _projector_setup(args: argparse.Namespace) -> tuple[LogSettings, list[str], EventCodec]:
    from allocator.service.discovery import agent_proposal_topics, existing_topics
    from eventlog.port import Topics
    from schemas.codec import make_codec

    settings = _log_settings(args)
    args.topic_prefix = _topic_prefix(args, settings)
    topics = Topics(args.topic_prefix)
    agents = agent_proposal_topics(settings, topics)  # every agent's own proposals topic, read like the shared one
    return (
        settings,
        existing_topics(settings, [*topics.inputs, *agents, *topics.outputs]),
        make_codec(args.schema_registry),
    )


def _topic_prefix(args: argparse.Namespace, settings: LogSettings) -> str:
    """--topic-prefix, or the only book an embedded log holds; a missing log, prefix or book is a usage error."""
    from allocator.service.discovery import BookNotFound, resolve_prefix

    try:
        return resolve_prefix(settings, args.topic_prefix)
    except BookNotFound as exc:
        raise UsageError(str(exc)) from exc


def _projection_url(url: str, settings: LogSettings) -> str:
    """The projection's database URL, refused when it is the embedded event log itself (a replay would delete it)."""
    from pathlib import Path

    from projections.database import sqlite_file

    target = sqlite_file(url)
    log_file = Path(settings.embedded_path) if settings.kafka_bootstrap is None else None
    if target is not None and log_file is not None and target.resolve() == log_file.resolve():
        raise UsageError(f"the database {url} is the event log {settings.embedded_path} itself; "
                         "name another file for the projection")  # fmt: skip
    return url


def _cmd_project(args: argparse.Namespace) -> int:
    import os
    import signal

    from projections.database import DEFAULT_EMBEDDED_DATABASE, engine_for
    from projections.metrics import ProjectorMetrics
    from projections.migrate import upgrade
    from projections.projector import Projector, StaleProjectorError

    settings, topic_names, codec = _projector_setup(args)
    say = _log_line(args, None)
    url = _projection_url(args.database or os.environ.get("DATABASE_URL") or DEFAULT_EMBEDDED_DATABASE, settings)
    metrics = ProjectorMetrics()
    server = _metrics_server(args, metrics.registry, metrics.ready)
    upgrade(url, schema=args.schema)
    engine = engine_for(url, args.schema)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    try:
        with settings.open() as log:
            projector = Projector(log, engine, codec, topic_names, say=say, metrics=metrics)
            projector.start()
            say.info(f"allocator project: {settings.describe()} -> {engine.url.render_as_string()}"
                     + (f"; metrics on port {server.port}" if server else ""), event="start")  # fmt: skip
            ends = log.end_offsets(topic_names) if args.once else None
            try:
                stats = projector.run(lambda: stop["now"] or (ends is not None and projector.caught_up(ends)))
            except StaleProjectorError as exc:
                say.error(f"allocator project: {exc}", event="stale")
                return 3
    finally:
        if server is not None:
            server.close()
    say.info(f"allocator project: stopped after {stats.records} events in {stats.batches} batches", event="stop",
             records=stats.records, batches=stats.batches)  # fmt: skip
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    import os
    import time

    from projections.database import (
        DEFAULT_EMBEDDED_DATABASE,
        check_rebuildable_schema,
        fresh_schema,
        is_projection_file,
        sqlite_file,
    )
    from projections.projector import Projector, ProjectorStats

    settings, topic_names, codec = _projector_setup(args)
    url = _projection_url(args.database or os.environ.get("DATABASE_URL") or DEFAULT_EMBEDDED_DATABASE, settings)
    target = sqlite_file(url)
    if target is not None and target.exists():
        if not is_projection_file(target):
            raise UsageError(f"{target} exists and is not a projection database; a replay replaces its target, "
                             "so remove it yourself or name another file")  # fmt: skip
        target.unlink()  # a replay starts from nothing
    if args.schema is not None:
        try:
            check_rebuildable_schema(args.schema)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if args.config is not None:
        from eventlog.port import Topics

        with settings.open() as reader:
            _cross_check(reader, codec, Topics(args.topic_prefix), _config_file(args))
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
    from eventlog.port import LogError, Topics

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
    return EXIT_FAILURE if failed else EXIT_OK


def _cmd_db_grant_reader(args: argparse.Namespace) -> int:
    from projections.roles import grant_reader

    return _grant_role(args, grant_reader, "can read schema {schema} (SELECT only)")


def _kafka_admin(args: argparse.Namespace, command: str) -> tuple[str, dict[str, str]]:
    """The broker and the admin's client properties (--kafka/--kafka-config or the environment); usage error when
    no broker is named."""
    from allocator.service.backends import LogSettings

    settings = LogSettings.resolve(args.kafka, None, args.kafka_config)
    if not settings.kafka_bootstrap:
        raise UsageError(f"{command} needs a Kafka broker: pass --kafka or set KAFKA_BOOTSTRAP_SERVERS")
    return settings.kafka_bootstrap, settings.kafka_client_properties()


def _new_secret(env: str, what: str) -> str:
    """A new password from the environment variable `env`, else asked twice at the terminal; never an argument,
    never printed. Without either, a usage error that says how to give one."""
    import getpass
    import os

    secret = os.environ.get(env, "")
    if not secret:
        if not sys.stdin.isatty():
            raise UsageError(f"no {what}: set {env} or run at a terminal to be asked (stdin is not a terminal)")
        secret = getpass.getpass(f"new {what}: ")
        if getpass.getpass(f"new {what} again: ") != secret:
            raise UsageError(f"the two {what}s differ; nothing changed")
    if not secret or any(c in secret for c in "\n\r"):
        raise UsageError(f"the {what} must be non-empty and on one line; nothing changed")
    return secret


def _acl_principals(args: argparse.Namespace) -> dict[str, list[str]]:
    from allocator.service.acl import ROLES

    return {role: list(getattr(args, role) or []) for role in ROLES if getattr(args, role)}


def _cmd_acl_apply(args: argparse.Namespace) -> int:
    from allocator.service.acl import acl_table, format_table
    from eventlog.kafka_acl import AclError, create_acls
    from eventlog.port import Topics

    principals = _acl_principals(args)
    if not principals:
        raise UsageError("name at least one principal (--agent, --executor, --market, ...)")
    try:
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
    from eventlog.kafka_acl import check_principal_name
    from eventlog.kafka_scram import MECHANISM, ScramError, set_scram_password

    try:
        check_principal_name(args.name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    bootstrap, admin = _kafka_admin(args, "acl user")
    password = _new_secret("ALLOCATOR_NEW_PASSWORD", "password")
    try:
        set_scram_password(bootstrap, admin, args.name, password)
    except (ScramError, ValueError) as exc:
        print(f"allocator acl user: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"user {args.name}: {MECHANISM} password set (its old one, if any, stops working at its next login)")
    return EXIT_OK


def _cmd_db_grant_projector(args: argparse.Namespace) -> int:
    from projections.roles import grant_projector

    return _grant_role(args, grant_projector, "can write the projections of schema {schema} (no DDL)")


def _grant_role(args: argparse.Namespace, grant: Callable[..., None], done: str) -> int:
    """A PostgreSQL role's rights on the projections; a new role's password from ALLOCATOR_DB_PASSWORD or a prompt,
    never the command line (docs/security.md)."""
    import os

    from sqlalchemy import text

    from projections.database import engine_for

    url = args.database or os.environ.get("DATABASE_URL")
    if not url:
        raise UsageError("no database: pass --database URL or set DATABASE_URL")
    engine = engine_for(url)
    if engine.dialect.name != "postgresql":
        raise UsageError("roles exist on PostgreSQL only")
    with engine.connect() as conn:
        exists = conn.execute(text("select 1 from pg_roles where rolname = :r"), {"r": args.role}).first()
    password = None if exists else _new_secret("ALLOCATOR_DB_PASSWORD", "database password")
    try:
        grant(engine, args.role, args.schema or "public", password)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    print(f"role {args.role} " + done.format(schema=args.schema or "public"))
    return EXIT_OK


def _cmd_control(args: argparse.Namespace) -> int:
    import uuid

    from allocator.service.clients import BookClient, ClientError
    from eventlog.port import LogError, Topics, wall_clock_ms
    from schemas.codec import make_codec
    from schemas.events import Command, ControlCommand

    settings = _log_settings(args)
    key = None
    if args.key:
        from allocator.service.keys import load_signing_key
        from schemas.signing import SigningKeyError

        try:
            key = load_signing_key(args.key)
        except SigningKeyError as exc:
            raise UsageError(str(exc)) from exc
    command = ControlCommand(
        command_id=f"cmd-{uuid.uuid4().hex}",
        operator_id=args.operator,
        command=Command(args.action.upper().replace("-", "_")),
        reason=args.reason,
        limits=None,
        time=wall_clock_ms(),
    )
    if key is not None:
        from schemas.signing import sign

        command = sign(command, key)
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
    print(f"sent {command.command.value} {command.command_id} by {command.operator_id}"
          + (f" signed by key {command.key_id}" if command.key_id else " unsigned") + f" to {topics.control} on "
          f"{settings.describe()}; the allocator acts on it in its next cycle")  # fmt: skip
    return EXIT_OK


def _read_input(source: str) -> str:
    from pathlib import Path

    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{source}: cannot read it ({exc.strerror or exc})") from exc


def _send_records(args: argparse.Namespace, kind: str, parse: Callable[[str, int], Sequence[Any]]) -> int:
    """The shell tools' one path: read and check every record first (nothing is sent if any is bad, exit 2),
    then produce them all through the book's client (`propose`: Proposals, `fill`: Fills). A proposal goes to
    its agent's own topic when one exists (the book configures the agent), else to the shared one."""
    from allocator.service.clients import BookClient, agents_with_topics
    from allocator.service.wire import WireError
    from eventlog.port import LogError, Topics, wall_clock_ms
    from schemas.codec import make_codec
    from schemas.events import Proposal

    try:
        records = parse(_read_input(args.file), wall_clock_ms())
    except WireError as exc:
        for problem in exc.problems:
            print(f"allocator {args.command}: {problem}", file=sys.stderr)
        print(f"allocator {args.command}: nothing sent", file=sys.stderr)
        return EXIT_USAGE
    settings, topics = _log_settings(args), Topics(args.topic_prefix)
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
        return EXIT_FAILURE
    for r in records:
        if isinstance(r, Proposal):
            print(f"sent {r.proposal_id} ({r.agent_id}, {r.market_id} {r.side.value} {r.requested_size:g})")
    print(f"{len(records)} {kind} sent to {', '.join(used) or topics.fills} on {settings.describe()}")
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

    from allocator.service.wire import one_line, to_json
    from eventlog.port import LogError, Topics
    from schemas.codec import UndecodableMessage, make_codec

    topics = Topics(args.topic_prefix)
    topic = {"decisions": topics.decisions, "governor": topics.governor, "deadletter": topics.deadletter}[args.what]
    codec = make_codec(args.schema_registry)
    printed = 0
    try:
        with _log_settings(args).open() as log:
            ends = log.end_offsets([topic])
            if not ends:
                raise UsageError(f"{topic} does not exist (allocator init)")
            log.assign([topic])
            for tp, end in ends.items():
                log.seek(tp, 0 if args.from_beginning else end)
            deadline = None if args.timeout is None else time.monotonic() + args.timeout
            while args.max is None or printed < args.max:
                wait = 0.2 if deadline is None else min(0.2, max(deadline - time.monotonic(), 0.0))
                if deadline is not None and wait <= 0:
                    break
                for record in log.poll(max_records=500, timeout_s=max(wait, 0.001)):
                    try:
                        if record.value is None:
                            raise UndecodableMessage("empty message (no value)")
                        event = codec.decode(record.value, record.topic, record.partition, record.offset)
                    except UndecodableMessage as exc:
                        print(f"allocator tail: {record.topic}[{record.partition}]@{record.offset}: {exc.reason}",
                              file=sys.stderr)  # fmt: skip
                        continue
                    if args.json:
                        row = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                               "type": type(event).__name__, "record": to_json(event)}  # fmt: skip
                        print(json.dumps(row), flush=True)
                    else:
                        print(one_line(event), flush=True)
                    printed += 1
                    if args.max is not None and printed >= args.max:
                        break
    except LogError as exc:
        print(f"allocator tail: the log failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    import json
    import os

    from sqlalchemy.exc import SQLAlchemyError

    from projections.database import DEFAULT_EMBEDDED_DATABASE, engine_for
    from projections.status import format_status, read_status

    config = _status_config(args)
    url = args.database or os.environ.get("DATABASE_URL") or DEFAULT_EMBEDDED_DATABASE
    engine = engine_for(url, args.schema)
    try:
        status = read_status(engine, config, decisions=args.decisions)
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


def _config_file(args: argparse.Namespace) -> AllocatorConfig | None:
    """The --config file, or None when none was given; a file that is not a valid configuration is a usage error."""
    from allocator.service.backends import load_config
    from book.config import ConfigError

    if args.config is None:
        return None
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def _cross_check(
    reader: EventLog, codec: EventCodec, topics: Topics, config: AllocatorConfig | None
) -> AllocatorConfig | None:
    """The configuration the log records last (None for a log written before wire version 2); a --config file
    that differs from it is only reported: the log's is the one that was in force."""
    from allocator.service.sequencer import read_decisions, recorded_config

    on_log = recorded_config(read_decisions(reader, codec, topics))
    if on_log is not None and config is not None and on_log.config_hash != config.config_hash:
        print(f"the log ran with hash {on_log.config_hash[:12]}, your file has {config.config_hash[:12]}; "
              "the log's configuration is used", file=sys.stderr)  # fmt: skip
    return on_log


def _status_config(args: argparse.Namespace) -> AllocatorConfig:
    """The configuration in force as the log's fold has it (its SET_LIMITS included), --config only cross-checks
    it; without a log (the default file absent) the --config file's, else the defaults."""
    from pathlib import Path

    from allocator.service.sequencer import NoConfigOnLog, replay_decisions
    from book.config import AllocatorConfig
    from eventlog.port import LogError, Topics
    from schemas.codec import make_codec

    config = _config_file(args)
    settings = _log_settings(args)
    named = args.log is not None or args.kafka is not None
    if not named and (settings.kafka_bootstrap is not None or not Path(settings.embedded_path).is_file()):
        return config or AllocatorConfig()  # no log named, and no embedded log here: the projection alone
    args.topic_prefix = _topic_prefix(args, settings)
    codec, topics = make_codec(args.schema_registry), Topics(args.topic_prefix)
    try:
        with settings.open() as reader:
            on_log = _cross_check(reader, codec, topics, config)
            state, _, _ = replay_decisions(reader, codec, topics, config if on_log is None else None, lambda _s, d: d)
    except NoConfigOnLog:
        return config or AllocatorConfig()
    except LogError as exc:
        raise UsageError(f"cannot read the configuration from the log: {exc}") from exc
    return state.portfolio.config


def _log_line(args: argparse.Namespace, book: str | None, cycle: Callable[[], int | None] = lambda: None) -> LogLine:
    from cli.observe import LogLine

    return LogLine(args.log_format, book=book, cycle=cycle)


def _metrics_server(
    args: argparse.Namespace, registry: CollectorRegistry, ready: Callable[[], bool]
) -> MetricsServer | None:
    """The /metrics, /healthz and /readyz server on --metrics-port, or None when the flag is absent."""
    if args.metrics_port is None:
        return None
    from cli.observe import MetricsServer

    try:
        return MetricsServer(registry, ready, args.metrics_port, args.metrics_host).start()
    except OSError as exc:
        raise UsageError(f"--metrics-port {args.metrics_port}: cannot listen on it ({exc.strerror or exc})") from exc


def _log_settings(args: argparse.Namespace) -> LogSettings:
    from allocator.service.backends import LogSettings

    return LogSettings.resolve(args.kafka, args.log, getattr(args, "kafka_config", None))


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
            default=None,
            help="topic names are PREFIX.proposals, ... (default: the only book of an embedded log; on Kafka "
            "allocator)",
        )
    else:
        parser.add_argument(
            "--topic-prefix", default="allocator", help="topic names are PREFIX.proposals, ... (default: allocator)"
        )
    if registry:
        parser.add_argument("--schema-registry", help="schema registry URL (default: single-object encoding)")


def _observe_options(parser: argparse.ArgumentParser) -> None:
    """The metrics endpoint and the log format of a long-running command (serve, project)."""
    parser.add_argument(
        "--metrics-port", type=int, help="serve /metrics, /healthz and /readyz on this port (default: off; 0: any)"
    )
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics port binds (default 0.0.0.0)")
    parser.add_argument(
        "--log-format", choices=["human", "json"], default=argparse.SUPPRESS,
        help="human lines (default) or one JSON object per line for log shippers",
    )  # fmt: skip


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
    serve.add_argument(
        "--config",
        help="JSON file of configuration keys (default: the configuration the log records; on an empty log the "
        "defaults of docs/rules.md); one that differs from the log's takes effect and is recorded on the next decision",
    )
    serve.add_argument("--max-cycles", type=int, help="stop after this cycle number")
    serve.add_argument("--duration", type=float, help="stop after this many seconds")
    _observe_options(serve)
    serve.add_argument("--signing-key", help="sign every decision with this Ed25519 key file (allocator keys new)")
    serve.add_argument("--trusted-keys", help="public key file or folder of *.pub files trusted besides its own")
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
    audit.add_argument("--trusted-keys", help="public key file or folder of *.pub files whose decisions verify")
    audit.add_argument("--head", help="the chain head (decision hash) the log must reach; exit 1 when it does not")
    audit.add_argument("--jobs", type=int, help="re-solve on a local pool of N worker processes (default: 1, here)")
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
    init.add_argument("--partitions", type=int, default=1, help="partitions of each input topic (default: 1)")
    init.add_argument("--replication-factor", type=int, default=1, help="replication factor (default: 1)")
    init.add_argument(
        "--config", help="the book's JSON configuration: each of its `agents` also gets its own PREFIX.proposals.AGENT"
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
        if name == "replay":
            p.add_argument("--batch-size", type=int, default=5_000, help="events per database transaction")
            p.add_argument("--config", help="a JSON configuration to cross-check against the one the log records")
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
            help=f"a {role} principal (SCRAM user name)" + ("; repeatable" if many else ""),
        )  # fmt: skip
    for p in (apply, acl_sub.add_parser(
        "user",
        help="create a SCRAM-SHA-512 user or rotate its password (from $ALLOCATOR_NEW_PASSWORD or a prompt)",
    )):  # fmt: skip
        p.add_argument("--kafka", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)")
        p.add_argument("--kafka-config", help="the admin's client properties file (default: $KAFKA_CONFIG_FILE)")
        if p is apply:
            p.add_argument("--topic-prefix", default="allocator", help="the book's topic prefix (default: allocator)")
            p.set_defaults(handler=_cmd_acl_apply)
        else:
            p.add_argument("name", help="the user name; the password is never an argument and never printed")
            p.set_defaults(handler=_cmd_acl_user)

    control = sub.add_parser(
        "control",
        help="an operator's command to the governors: halt, resume, reset-kill-switch (who and why are required)",
        description="Publish a ControlCommand on the book's control topic. The allocator acts on it in its next "
        "cycle; the command stays in the log and the projection with its operator and reason.",
    )
    control.add_argument("action", choices=["halt", "resume", "reset-kill-switch"], help="the command")
    control.add_argument("--reason", required=True, help="why, in the operator's words")
    control.add_argument("--operator", required=True, help="who sends it")
    control.add_argument("--key", help="sign the command with this operator's Ed25519 key file")
    _log_options(control)
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
    _log_options(propose)
    propose.set_defaults(handler=_cmd_propose)

    fill = sub.add_parser(
        "fill",
        help="an executor's fills from JSON (object, array or JSON lines; - for stdin), field types checked",
        description="Read fills as JSON, check each field's type and produce them to PREFIX.fills. time defaults "
        "to now and reason to null. Exit 2, naming the line and the field, when any is invalid: nothing is sent.",
    )
    fill.add_argument("file", help="JSON file of fills, or - for stdin")
    _log_options(fill)
    fill.set_defaults(handler=_cmd_fill)

    tail = sub.add_parser(
        "tail",
        help="print committed decisions, governor events or dead letters (JSON lines with --json)",
        description="Print the committed records of PREFIX.decisions, PREFIX.governor or PREFIX.deadletter, "
        "from the end (or the beginning), one per line: a one-line summary, or with --json the record as JSON "
        "(enums as their names, bytes as base64). Stops after --max records or --timeout seconds, else follows.",
    )
    tail.add_argument("what", choices=["decisions", "governor", "deadletter"], help="which topic")
    tail.add_argument("--from-beginning", action="store_true", help="start at offset 0 instead of the end")
    tail.add_argument("--json", action="store_true", help="one JSON object per record")
    tail.add_argument("--max", type=int, help="stop after this many records")
    tail.add_argument("--timeout", type=float, help="stop after this many seconds")
    _log_options(tail)
    tail.set_defaults(handler=_cmd_tail)

    status = sub.add_parser(
        "status",
        help="the book now, from the projection: governors and why, equity and drawdown, exposure against caps",
    )
    status.add_argument(
        "--database", help="SQLAlchemy URL (default: $DATABASE_URL, else sqlite:///allocator-projections.sqlite)"
    )
    status.add_argument("--schema", help="PostgreSQL schema of the projection")
    status.add_argument(
        "--config",
        help="a JSON configuration to cross-check against the log's (the caps shown are the log's); used only "
        "when there is no log or it records no configuration",
    )
    _log_options(status, discover=True)
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
    return parser


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """The names of the top-level subcommands, in the order --help lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def main(argv: Sequence[str] | None = None) -> int:
    from allocator.engine.highs_banner import silence_highs_banner

    parser = build_parser()
    args = parser.parse_args(argv)
    silence_highs_banner()  # at the edge: the core's solver must not write to the stdout we print JSON on
    handler: Callable[[argparse.Namespace], int] = args.handler
    from eventlog.kafka_properties import KafkaPropertiesError

    try:
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
    except Exception as exc:
        from eventlog.port import LogError

        if not isinstance(exc, LogError):
            raise
        # A topic that is not there is the caller's to fix (exit 2); any other refusal of the log is a failure.
        print(f"allocator {args.command}: the log: {exc}", file=sys.stderr)
        return EXIT_USAGE if "does not exist" in str(exc) else EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
