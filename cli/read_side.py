"""The read side's commands: audit, project and replay the log, and the database's upgrade and roles."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from allocator.service.backends import LogSettings

from cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    _audit_engine,
    _config_file,
    _cross_check,
    _log_line,
    _log_settings,
    _metrics_server,
    _new_secret,
    _numeric_warning,
    _projection_chain,
    _projection_url,
    _projector_setup,
    _topic_prefix,
    _trusted_keys,
    counted,
)


def _database_said(exc: BaseException) -> str:
    """What the database's driver said, on one line (never SQLAlchemy's statement and parameters)."""
    cause = getattr(exc, "orig", None) or exc
    said = str(cause).strip()
    return said.splitlines()[0] if said else type(cause).__name__


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    import os

    from sqlalchemy.exc import SQLAlchemyError

    from projections.migrate import current_revision, is_ancestor, known_revision, newest_revision, upgrade

    url = args.database or os.environ.get("DATABASE_URL")
    if not url:
        print("allocator db upgrade: no database: pass --database URL or set DATABASE_URL", file=sys.stderr)
        return EXIT_USAGE
    from projections.database import not_a_projection, sqlite_file

    file = sqlite_file(url)
    if file is not None and file.is_file():
        why = not_a_projection(file)
        if why is not None:  # an event log given as the database got the projection's tables added to it
            raise UsageError(f"--database {url}: the file {why}; name a projection database")
    target = known_revision(args.revision)
    if target is None:
        raise UsageError(f"--revision {args.revision!r}: no such migration (the newest is {newest_revision()}, "
                         "also named head)")  # fmt: skip
    where = f" in schema {args.schema}" if args.schema else ""
    try:
        before = current_revision(url, args.schema)
        if before is not None and known_revision(before) is None:
            print(f"allocator db upgrade: the projection schema{where} is at {before}, a revision this release does "
                  f"not know (a newer release migrated it; this one's newest is {newest_revision()}); nothing changed",
                  file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        if before is not None and before != target and is_ancestor(target, before):
            # Alembic's upgrade to an earlier revision does nothing; saying "at <target>" would be untrue.
            print(f"allocator db upgrade: the projection schema{where} is at {before}, past {target}: "
                  "db upgrade never goes back; nothing changed", file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        upgrade(url, schema=args.schema, revision=target)
        after = current_revision(url, args.schema)
    except SQLAlchemyError as exc:  # a database that is away, locked or not writable: one line, not a traceback
        print(f"allocator db upgrade: cannot migrate the projection database ({_database_said(exc)}); nothing "
              "changed", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    newest = " (the newest)" if after == newest_revision() else ""
    change = "already there" if before == after else f"was {before or 'empty'}"
    print(f"projection schema{where} is at {after}{newest}; {change}")
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    import time

    from allocator.service.audit import audit_log, summary_table, write_report
    from allocator.service.chain import verify_log
    from allocator.service.sequencer import NoConfigOnLog
    from eventlog.port import Topics
    from schemas.codec import make_codec

    config = _config_file(args)
    _check_report_path(args.report)  # before the audit's work, not after it
    _numeric_warning("audit")
    settings = _log_settings(args)
    args.topic_prefix = _topic_prefix(args, settings)

    started = time.monotonic()
    # At a terminal one line is rewritten in place; into a file or a pipe, one line each time.
    in_place = sys.stderr.isatty()
    line_open = [False]

    def progress(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            rate = done / max(time.monotonic() - started, 1e-9)
            text = f"audited {done}/{total} decisions, {rate:,.1f} re-derived/s"
            if in_place:
                line_open[0] = done < total
                print(f"\r{text}", end="" if done < total else "\n", file=sys.stderr, flush=True)
            else:
                print(text, file=sys.stderr, flush=True)

    trusted = _trusted_keys(args)
    head = args.head.strip().lower() if args.head is not None else None
    if head is not None and (len(head) != 64 or any(c not in "0123456789abcdef" for c in head)):
        raise UsageError(f"--head {args.head!r}: a decision hash is 64 hex characters")
    codec, topics = make_codec(args.schema_registry), Topics(args.topic_prefix)
    engine = _audit_engine(args)
    try:
        with settings.open() as reader:
            # One read of the decisions topic, verified, feeds both the configuration's cross-check and the audit.
            verified = verify_log(reader, codec, topics, trusted)
            _cross_check(verified, config)  # says when --config differs from the log's
            workers = counted(engine.workers, "worker")
            print(f"allocator audit: re-solving on {engine.name} ({workers})", file=sys.stderr)
            # The file stands in only where the first verified decision records no configuration (the log's is
            # used otherwise), also when a later one records one: the message below tells the user to pass it.
            report = audit_log(reader, codec, topics, config, progress, engine, head=head, verified=verified)
    except NoConfigOnLog as exc:
        raise UsageError(str(exc)) from exc
    except KeyboardInterrupt:
        if line_open[0]:
            print(file=sys.stderr)  # end the progress line before the "interrupted" one
        if os.path.exists(args.report):
            print(f"allocator audit: no report written; {args.report} is an earlier run's", file=sys.stderr)
        raise
    finally:
        engine.close()
    print(summary_table(report))
    try:
        write_report(report, args.report)
    except OSError as exc:  # checked before the audit began; a full disk, say, can still refuse it now
        print(f"allocator audit: the report was not written to {args.report}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"report written to {args.report}")
    if report.config_missing is not None:
        print(f"allocator audit: {len(report.not_rederived)} decision(s) not re-derived: {report.config_missing}; "
              "pass --config with the configuration the log ran with to re-run them", file=sys.stderr)  # fmt: skip
    if not trusted and any(f.verdict == "FORGED" for f in report.findings):
        print("allocator audit: the decisions are signed by keys this audit was not told to trust: pass "
              "--trusted-keys with the allocator's public key(s) (docs/security.md)", file=sys.stderr)  # fmt: skip
    return EXIT_FAILURE if report.mismatches or report.errors else EXIT_OK


def _not_a_report(path: str) -> str | None:
    """Why an existing file is not an earlier audit report (a phrase), or None: an empty file, a JSON object, or no
    regular file at all (a device such as /dev/null: the write says what it makes of it)."""
    import json
    import stat

    from projections.database import SQLITE_HEADER

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            head = f.read(16)
            if not head:
                return None
            if head == SQLITE_HEADER:
                return "an SQLite database (an event log or a projection)"
            f.seek(0)
            report = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return "not an audit report (not JSON)"
    return None if isinstance(report, dict) else "not an audit report (JSON, but no object)"


def _check_report_path(path: str) -> None:
    """A report path the audit could not write to is a usage error before the audit runs (it used to be found only
    once every decision had been re-derived): an empty name, a folder, a missing or read-only folder, a file that
    cannot be written."""
    if not path:
        raise UsageError("--report: an empty file name")
    if os.path.isdir(path):
        raise UsageError(f"--report {path}: a folder; name a file in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--report {path}: no folder {folder}")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise UsageError(f"--report {path}: the file cannot be written (permissions)")
        why = _not_a_report(path)
        if why is not None:
            # A report replaces its file: `--report book.sqlite` replaced the event log being audited.
            raise UsageError(f"--report {path}: {why}; the report would replace it: name another file")
    elif not os.access(folder, os.W_OK):
        raise UsageError(f"--report {path}: the folder {folder} cannot be written (permissions)")


def _cmd_project(args: argparse.Namespace) -> int:
    import os
    import signal

    from sqlalchemy.exc import SQLAlchemyError

    from eventlog.port import Topics
    from projections.database import DEFAULT_EMBEDDED_DATABASE, engine_for
    from projections.metrics import ProjectorMetrics
    from projections.migrate import upgrade
    from projections.projector import ProjectionWriteError, Projector, StaleProjectorError, foreign_projection

    settings, topic_names, codec = _projector_setup(args)
    say = _log_line(args, None)
    chain, on_unverified = _projection_chain(
        args, "project", codec, lambda line: say.write("warning", line, "trust", {"verified": False})
    )
    url = _projection_url(args.database or os.environ.get("DATABASE_URL") or DEFAULT_EMBEDDED_DATABASE, settings)
    metrics = ProjectorMetrics()
    try:
        upgrade(url, schema=args.schema)
    except SQLAlchemyError as exc:  # a database that is away, locked or unreadable at start: one line, no traceback
        say.error(f"allocator project: cannot migrate the projection database ({_database_said(exc)}); nothing "
                  "projected", event="error")  # fmt: skip
        return EXIT_FAILURE
    server = _metrics_server(args, metrics.registry, metrics.ready)
    engine = engine_for(url, args.schema)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    try:
        with settings.open() as log:
            projector = Projector(log, engine, codec, topic_names, say=say, metrics=metrics, chain=chain,
                                  on_unverified=on_unverified, carries=Topics(args.topic_prefix).carries,
                                  on_refused=lambda why: say.write("warning", f"allocator project: {why}", "trust",
                                                                   {"verified": False}))  # fmt: skip
            projector.interrupted = lambda: stop["now"]
            foreign = foreign_projection(engine, log, topic_names, Topics(args.topic_prefix).decisions, codec,
                                         projector.consumer)  # fmt: skip
            if foreign is not None:
                say.error(f"allocator project: not this log's projection: {foreign}; name this log's projection or "
                          "a new file (allocator replay rebuilds one)", event="error")  # fmt: skip
                return EXIT_USAGE
            projector.start()
            verifying = f"; decisions verified against {', '.join(args.trusted_keys)}" if chain is not None else ""
            say.info(f"allocator project: {settings.describe()} -> {engine.url.render_as_string()}{verifying}"
                     + (f"; metrics on port {server.port}" if server else ""), event="start")  # fmt: skip
            ends = log.end_offsets(topic_names) if args.once else None
            new_topics = _AgentTopics(settings, args.topic_prefix, topic_names)
            try:
                while True:
                    stats = projector.run(lambda: stop["now"] or (ends is not None and projector.caught_up(ends))
                                          or (ends is None and new_topics.found()))  # fmt: skip
                    if stop["now"] or ends is not None:
                        break
                    # An agent added while projecting (serve made its topic): read it too, from the stored offsets.
                    say.info(f"allocator project: reading {', '.join(new_topics.added)} as well", event="message")
                    projector.topics.extend(new_topics.take())
                    projector.start()
            except StaleProjectorError as exc:
                say.error(f"allocator project: {exc}", event="stale")
                return 3
            except ProjectionWriteError as exc:
                say.error(f"allocator project: {exc} ({engine.url.render_as_string()}); stopping", event="error")
                return EXIT_FAILURE
    finally:
        if server is not None:
            server.close()
    stopped = f"stopped after {counted(stats.records, 'event')} in {counted(stats.batches, 'batch', 'batches')}"
    say.info(f"allocator project: {stopped}", event="stop", records=stats.records, batches=stats.batches)
    return EXIT_OK


class _AgentTopics:
    """The agents' own proposals topics that appear while `project` runs (an agent a SET_LIMITS added), looked
    for every `every_s` seconds."""

    def __init__(self, settings: LogSettings, prefix: str, known: list[str], every_s: float = 5.0) -> None:
        self.settings, self.prefix, self.known, self.every_s = settings, prefix, set(known), every_s
        self.added: list[str] = []
        self._next = time.monotonic() + every_s

    def found(self) -> bool:
        from allocator.service.discovery import agent_proposal_topics
        from eventlog.port import Topics

        if not self.added and time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every_s
            present = agent_proposal_topics(self.settings, Topics(self.prefix))
            self.added = [name for name in present if name not in self.known]
        return bool(self.added)

    def take(self) -> list[str]:
        added, self.added = self.added, []
        self.known.update(added)
        return added


def _cmd_replay(args: argparse.Namespace) -> int:
    import os
    import time

    from sqlalchemy.exc import SQLAlchemyError

    from eventlog.port import Topics
    from projections.database import (
        DEFAULT_EMBEDDED_DATABASE,
        check_rebuildable_schema,
        fresh_schema,
        is_projection_file,
        sqlite_file,
    )
    from projections.projector import Projector, ProjectorStats

    settings, topic_names, codec = _projector_setup(args)
    unverified: list[str] = []  # said after the progress bar
    refused: list[str] = []
    chain, on_unverified = _projection_chain(args, "replay", codec, unverified.append)
    url = _projection_url(args.database or os.environ.get("DATABASE_URL") or DEFAULT_EMBEDDED_DATABASE, settings)
    target = sqlite_file(url)
    if target is not None and target.exists() and not is_projection_file(target):
        raise UsageError(f"{target} exists and is not a projection database; a replay replaces its target, "
                         "so remove it yourself or name another file")  # fmt: skip
    if args.schema is not None:
        try:
            check_rebuildable_schema(args.schema)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if args.config is not None:
        from allocator.service.chain import unverified_chain, verify_log

        config, trusted = _config_file(args), _trusted_keys(args)
        with settings.open() as reader:
            verified = verify_log(reader, codec, Topics(args.topic_prefix), trusted)
        warning = unverified_chain(verified, trusted)
        if warning is not None:
            print(f"allocator replay: no cross-check of --config: {warning}", file=sys.stderr)
        else:
            _cross_check(verified, config)
    # Every input checked (the log, the keys, --config and its cross-check): only now is the old projection replaced.
    # A bad --config used to delete the target first and then refuse.
    if target is not None and target.exists():
        target.unlink()  # a replay starts from nothing
    try:
        engine = fresh_schema(url, args.schema)
    except SQLAlchemyError as exc:
        print(f"allocator replay: cannot create the projection database ({_database_said(exc)}); nothing replayed",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    started = time.monotonic()
    in_place = sys.stderr.isatty()  # at a terminal one line rewritten in place; into a file or a pipe, one line each
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
            chain=chain,
            on_unverified=on_unverified,
            on_refused=refused.append,
            carries=Topics(args.topic_prefix).carries,
        )

        def progress(stats: ProjectorStats) -> None:
            # By offsets, not events: a transactional topic's end counts its commit markers too, so counting
            # events against it never reached the end.
            read = sum(min(log.position(tp), end) for tp, end in ends.items())
            rate = stats.records / max(time.monotonic() - started, 1e-9)
            left = (total - read) * stats.records / read / rate if read and rate > 0 else None
            width = 30
            filled = int(width * read / total) if total else width
            eta = f"ETA {left:,.0f} s" if left is not None and read < total else "done" if read >= total else "ETA -"
            line = (f"[{'#' * filled}{'.' * (width - filled)}] {read / total if total else 1:.0%} of the log, "
                    f"{stats.records} events, {rate:,.0f}/s, {eta}")  # fmt: skip
            if in_place:
                print(f"\r{line}", end="", file=sys.stderr, flush=True)
            else:
                print(line, file=sys.stderr, flush=True)

        projector.start()
        projector.catch_up(ends, on_batch=progress)
        progress(projector.stats)  # caught up: every partition at its end, markers included
    elapsed = time.monotonic() - started
    if in_place:
        print(file=sys.stderr)
    for line in unverified:
        print(line, file=sys.stderr)
    if refused:
        shown = 5
        print(f"allocator replay: WARNING: {len(refused)} decision(s) did not verify with --trusted-keys and were not "
              "projected (each is a dead letter at its position):", file=sys.stderr)  # fmt: skip
        for why in refused[:shown]:
            print(f"  {why}", file=sys.stderr)
        if len(refused) > shown:
            print(f"  ... and {len(refused) - shown} more (table dead_letters)", file=sys.stderr)
    print(f"replayed {projector.stats.records} events into {engine.url.render_as_string()}"
          + (f" schema {args.schema}" if args.schema else "") + f" in {elapsed:.1f} s "
          f"({projector.stats.records / max(elapsed, 1e-9):,.0f} events/s)")  # fmt: skip
    return EXIT_OK


def _cmd_db_grant_reader(args: argparse.Namespace) -> int:
    from projections.roles import grant_reader

    return _grant_role(args, grant_reader, "can read schema {schema} (SELECT only)")


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
