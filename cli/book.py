"""The book's commands: serve it, steer it (control), see it (status), keys, a snapshot's decision, the demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from allocator.service.backends import LogSettings
    from allocator.service.chain import VerifiedLog
    from eventlog.port import EventLog, Record, TopicPartition, Topics
    from schemas.codec import EventCodec
    from schemas.events import Decision

from cli.common import (
    DEFAULT_BOOK,
    DEFAULT_PREFIX,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    _chain_settings,
    _config_file,
    _existing_log,
    _log_line,
    _metrics_server,
    _numeric_warning,
    _say_trust,
    _signing_key,
    _status_config,
    _topic_prefix,
    _trusted_keys,
    counted,
)


def _cmd_allocate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from allocator.engine.cycle import run_cycle
    from allocator.service.snapshot import SnapshotError, decision_json, load_snapshot

    if not args.snapshot:
        raise UsageError("the snapshot path is empty")
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

    from allocator.service.chain import UnverifiedBook
    from allocator.service.loop import AllocatorService, Contradicted, OtherBook, group_of
    from allocator.service.metrics import ServiceMetrics
    from allocator.service.sequencer import BookState, NoConfigOnLog
    from eventlog.port import FencedError, LogError, NotALogError, Topics, normalise_book_id
    from schemas.codec import make_codec

    config = _config_file(args)
    _numeric_warning("serve")
    try:
        args.book = normalise_book_id(args.book)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    # Like every command but init: an embedded log that does not exist is a typo or a missing `init`, not a new
    # book (an outside probe: `serve --log typo.sqlite` started an empty book with fresh cash, deciding nothing).
    settings = _existing_log(args)
    args.topic_prefix = _serve_prefix(args, settings)
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
    deadline = time.monotonic() + args.duration if args.duration is not None else None  # 0: stop after starting
    chain = _chain_settings(args)
    log = settings.open(group_of(Topics(args.topic_prefix), args.book))
    reader = settings.open()
    service = AllocatorService(
        log, reader, make_codec(args.schema_registry), args.book, config, Topics(args.topic_prefix),
        say=say, metrics=metrics, chain=chain,
    )  # fmt: skip
    holder["service"] = service
    say.info(f"allocator serve: book {args.book} (topics {args.topic_prefix}.*) on {settings.describe()}"
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
    except (NoConfigOnLog, UnverifiedBook, OtherBook, Contradicted) as exc:
        raise UsageError(str(exc)) from exc
    except FencedError as exc:
        metrics.on_fenced()
        say.error(f"allocator serve: another instance took over book {args.book}; stopping ({exc})", event="fenced")
        return 3
    except LogError as exc:
        say.error(f"allocator serve: the log failed: {exc}", event="log_failed")
        return EXIT_USAGE if isinstance(exc, NotALogError) else EXIT_FAILURE
    finally:
        reader.close()
        log.close()
        if server is not None:
            server.close()
    stopped = f"stopped after {counted(published, 'decision')} (cycle {service.state.cycle})"
    say.info(f"allocator serve: {stopped}", event="stop", decisions=published)
    return EXIT_OK


def _cmd_keys_new(args: argparse.Namespace) -> int:
    import json

    from allocator.service.keys import load_trusted_keys, new_key_pair, public_key_hex
    from schemas.signing import SigningKeyError

    try:
        key_id, private, public = new_key_pair(args.out)
        raw = public_key_hex(load_trusted_keys(public)[key_id])
    except SigningKeyError as exc:
        raise UsageError(str(exc)) from exc
    print(f"key id {key_id}")
    print(f"public key {public}")
    # What a book's operator keyring takes (operator_keys: key id -> raw public key in hex), ready to paste.
    print(f"operator_keys entry {json.dumps({key_id: raw})}")
    others = sorted(p.name for p in private.parent.glob(f"*{private.suffix}") if p != private)
    if others:
        # A folder names a key only while it holds one (`signing_key_file`): say so now, not at the next serve.
        print(f"allocator keys new: {private.parent} now holds {len(others) + 1} private keys ({', '.join(others)} "
              f"before); --signing-key and --key must name the file: {private}", file=sys.stderr)  # fmt: skip
    return EXIT_OK


def _serve_prefix(args: argparse.Namespace, settings: LogSettings) -> str:
    """serve's topic prefix: --topic-prefix, else an embedded log's only book, else `allocator` (a new log, or
    Kafka). Serving `allocator` beside another prefix's book made a second, empty book on the log, and every command
    that finds the book itself then refused it ("holds several books")."""
    from pathlib import Path

    from allocator.service.discovery import BookNotFound, book_prefixes, embedded_topics

    if args.topic_prefix is not None:
        return str(args.topic_prefix)
    if settings.kafka_bootstrap is not None or not Path(settings.embedded_path).is_file():
        return DEFAULT_PREFIX
    try:
        books = sorted(book_prefixes(embedded_topics(Path(settings.embedded_path))))
    except BookNotFound as exc:
        raise UsageError(str(exc)) from exc
    if len(books) > 1:
        raise UsageError(f"the event log {settings.embedded_path} holds several books: "
                         f"{', '.join(f'--topic-prefix {b}' for b in books)}; pass one")  # fmt: skip
    return books[0] if books else DEFAULT_PREFIX


def _cmd_control(args: argparse.Namespace) -> int:
    import dataclasses
    import uuid

    from allocator.service.clients import BookClient, ClientError, check_command
    from allocator.service.sequencer import book_name
    from eventlog.port import LogError, NotALogError, Topics, normalise_book_id, wall_clock_ms
    from schemas.codec import make_codec
    from schemas.events import Command, ControlCommand

    key = _signing_key(args.key, "control") if args.key else None
    # With --trusted-keys only verified decisions name the book and its keyring: an unverified one appended to the
    # log (a forgery naming other operator keys or another book) could otherwise make this refuse a genuine HALT.
    trusted = _trusted_keys(args) if args.trusted_keys is not None else None
    # Until the log is opened, a provisional prefix and book: the command's own fields are checked first.
    prefix = args.topic_prefix or DEFAULT_PREFIX
    try:
        # One spelling of the book (`Main` is `main`): the command names it as the book names itself.
        chosen = normalise_book_id(args.book) if args.book is not None else None
        book = book_name(Topics(prefix), chosen or DEFAULT_BOOK)
    except ValueError as exc:
        raise UsageError(f"--book: {exc}") from exc
    command = ControlCommand(
        command_id=f"cmd-{uuid.uuid4().hex}",
        operator_id=args.operator,
        command=Command(args.action.upper().replace("-", "_")),
        reason=args.reason,
        limits=_limits(args.action, args.limits),
        time=wall_clock_ms(),
        book=book,
    )
    try:
        check_command(command)  # the command's own fields first, then whether its log exists
    except ClientError as exc:
        print(f"allocator control: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if command.limits is not None and not args.unchecked:
        _check_limits(command.limits)
    settings = _existing_log(args)
    args.topic_prefix = _topic_prefix(args, settings)  # an embedded log's only book, unless --topic-prefix names one
    topics = Topics(args.topic_prefix)
    codec = make_codec(args.schema_registry)
    try:
        with settings.open() as log:
            books, configured, newest, doubt = (
                ([], None, None, None) if args.unchecked else _decision_books(log, topics, codec, trusted)
            )
            if doubt is not None:
                print(f"allocator control: warning: {doubt}", file=sys.stderr)
            if books and configured is None:
                print("allocator control: warning: no decision recording the book's configuration was found (within "
                      f"the last {_SCAN_LIMIT:,} offsets of its decisions, or in a log written before the book "
                      "recorded one): the command is not checked against its keyring or limits; the book judges it",
                      file=sys.stderr)  # fmt: skip
            if chosen is not None and books and chosen not in books:
                # One book per topic prefix: a command for another book on this log is an operator's slip (a book
                # without operator_keys would act on it, rules.md §11.3).
                named = " and ".join(books)
                raise UsageError(f"--book {args.book}: the decisions on this log are book {named}'s; a command for "
                                 f"another book goes to that book's log{_unverified_hint(trusted)}")  # fmt: skip
            if chosen is None and len(books) > 1:
                # The first and the newest decision name different books: one of them is not this book's (a forged
                # decision appended to the log chose the default, and the book refused the HALT sent to it).
                raise UsageError(f"the decisions on this log name books {' and '.join(books)}: pass --book"
                                 + _unverified_hint(trusted))  # fmt: skip
            wanted = book_name(topics, chosen if chosen is not None else books[0] if books else DEFAULT_BOOK)
            if wanted != command.book:
                command = dataclasses.replace(command, book=wanted)
            if key is not None:
                from schemas.signing import sign

                command = sign(command, key)
            refusal = _operator_keys_refusal(configured, command.key_id)
            if refusal is not None and doubt is None:
                raise UsageError(f"{refusal}, nothing sent{_unverified_hint(trusted)}")
            if refusal is not None:
                # The verified decisions may not be the book's newest: a refusal drawn from them must not hold back
                # what may be a genuine emergency command. Sent, with the reason the book may refuse it.
                print(f"allocator control: warning: {refusal}; sent anyway, since the log's newest decisions could "
                      "not be verified: the book judges it", file=sys.stderr)  # fmt: skip
            refusal = _limits_refusal(configured, command.limits)
            # A SET_LIMITS folded since the configuration was recorded changed the one in force when the newest
            # decision's config_hash is not the recorded one's: a judgement by the recorded one may be wrong either
            # way (it refused a command the book took, and passed one the book refused), so it is only said.
            changed = (
                command.limits is not None and configured is not None and newest is not None
                and not _in_force(configured, newest)
            )  # fmt: skip
            if refusal is not None and doubt is None and not changed:
                way_out = _unverified_hint(trusted) or "; --unchecked sends it without this check"
                raise UsageError(f"{refusal}, nothing sent{way_out}")
            if refusal is not None:
                why = ("a SET_LIMITS has changed the configuration in force since (the newest decision's config_hash "
                       "is not that configuration's)" if changed else "the log's newest decisions could not be "
                       "verified")  # fmt: skip
                print(f"allocator control: warning: {refusal}; sent anyway, since {why}: the book judges it",
                      file=sys.stderr)  # fmt: skip
            elif changed and configured is not None:
                print(f"allocator control: warning: the limits were checked against the configuration cycle "
                      f"{configured.cycle}'s decision recorded, which a SET_LIMITS has changed since (the newest "
                      "decision's config_hash is not its): the book judges them", file=sys.stderr)  # fmt: skip
            client = BookClient(log, codec, topics)
            client.command(command)
            client.flush()
    except ClientError as exc:
        print(f"allocator control: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LogError as exc:
        print(f"allocator control: the log refused the command: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, NotALogError) else EXIT_FAILURE
    from schemas.text import printable

    checks = ", nor its limits against the configuration's rules" if command.limits is not None else ""
    print(f"sent {command.command.value} {command.command_id} by {printable(command.operator_id)} for book "
          f"{command.book}"
          + (f" signed by key {command.key_id}" if command.key_id else " unsigned")
          + (f" (not checked against the log's decisions{checks}: --unchecked)" if args.unchecked else "")
          + f" to {topics.control} on "
          f"{settings.describe()}; the allocator acts on it in its next cycle")  # fmt: skip
    return EXIT_OK


def _decision_books(
    log: EventLog, topics: Topics, codec: EventCodec, trusted: Mapping[str, Ed25519PublicKey] | None
) -> tuple[list[str], Decision | None, Decision | None, str | None]:
    """The book ids of the first and the newest decision on the decisions topic, distinct, in that order (empty: no
    decision, or this principal may not read the topic), the last decision that records a configuration (None: none
    does), the newest decision, and why the newest may not be the book's (None: nothing says so). A decision records
    the configuration only when the book adopts one (its first decision, or a `serve --config` that differs from the
    one in force), so the newest seldom does: the last that does is the configuration the log last recorded, what
    `recorded_config` folds. A forged decision appended to the log makes the ids differ. With `trusted` keys, only the
    decisions that verify count (the whole topic is read and its chain checked, `verify_log`): keys that verify none
    of a signed book's decisions, or only the later ones of a rotation, are a usage error; a chain cut or altered at
    its start, or decisions after the last verified one that do not verify, are the doubt returned."""
    from allocator.service.chain import cut_chain, signing_keys, unverified_chain, verify_log
    from eventlog.port import LogError

    if trusted is None:
        return (*_newest_decisions(log, topics, codec), None)
    try:
        verified = verify_log(log, codec, topics, trusted)
    except LogError as exc:  # an operator's principal may not read decisions (docs/security.md)
        _unread(exc)
        return [], None, None, None
    signers = set(signing_keys(verified))
    if not verified.accepted and not verified.rejections:
        return [], None, None, None  # no decision yet
    if not signers:
        read = [d for _, d in verified.accepted]
        books, newest = _books_of(read)
        unsigned = "the book's decisions are unsigned, so --trusted-keys verified none of them"
        return books, _last_configured(read), newest, unsigned
    why = unverified_chain(verified, trusted)
    if why is not None:
        if not signers & set(trusted) or signers - set(trusted):  # the wrong keys, or only a rotation's later one
            raise UsageError(f"--trusted-keys: {why}; nothing sent")
        # Every decision names a trusted key and the first does not verify: altered, so none verifies. The book and
        # its keyring are read as written, and only said.
        return (*_newest_decisions(log, topics, codec), why)
    kept = [decision for _, decision in verified.accepted]
    books, newest = _books_of(kept)
    assert newest is not None  # the chain began: a decision verified
    later = [r for r in verified.rejections if (r.cycle or 0) > newest.cycle]
    doubt = cut_chain(verified, trusted)
    if doubt is None and later:
        doubt = (f"{len(later)} decision(s) after cycle {newest.cycle}, the last that verifies, do not verify under "
                 f"--trusted-keys (the first: {later[0].describe()}); they were not counted, and if the book's key "
                 "was rotated, trust the new key too")  # fmt: skip
    return books, _last_configured(kept), newest, doubt


def _unread(exc: Exception) -> None:
    """Said when the decisions topic cannot be read, the command then unchecked: a damaged log file, or a principal
    the broker does not let read it (operators may since `acl apply` grants it; one granted before may not). Left
    unsaid, an unsigned `halt` on a book with operator keys looked sent and the book refused it (an outside probe)."""
    from eventlog.port import NotAuthorizedError

    if isinstance(exc, NotAuthorizedError):
        print("allocator control: warning: this principal may not read the book's decisions, so the command is not "
              "checked against the book's name, keyring or limits; the book judges it (`allocator acl apply "
              "--operator NAME` grants an operator READ on the decisions topic)", file=sys.stderr)  # fmt: skip
        return
    print(f"allocator control: warning: the book's decisions could not be read ({exc}): the command is not "
          "checked against its name, keyring or limits; the book judges it", file=sys.stderr)  # fmt: skip


def _last_configured(decisions: list[Decision]) -> Decision | None:
    """The last of `decisions` that records a configuration (`recorded_config`'s rule), or None."""
    return next((d for d in reversed(decisions) if d.config is not None), None)


def _books_of(decisions: list[Decision]) -> tuple[list[str], Decision | None]:
    """The distinct book ids of the first and the last of `decisions`, and the last."""
    return list(dict.fromkeys(d.book_id for d in decisions[:1] + decisions[-1:])), (
        decisions[-1] if decisions else None
    )


_NEWEST_SPAN = 16
"""How many offsets below its end `_newest_decisions` reads for a partition's newest decision."""
_SCAN_SPAN = 512
"""The most offsets one window of `_configured_before` reads."""
_SCAN_LIMIT = 20_000
"""The most offsets `_configured_before` reads back before it gives up (nothing is judged): a check before an
emergency HALT must not read a long log whole."""


def _newest_decisions(
    log: EventLog, topics: Topics, codec: EventCodec
) -> tuple[list[str], Decision | None, Decision | None]:
    """`_decision_books` read as written: the book ids of the first decision of each partition and of its newest,
    without the rest, the last decision that records a configuration (`_configured_before`), and the newest."""
    from eventlog.port import LogError, decode_value, record_at, records_before
    from schemas.codec import UndecodableMessage
    from schemas.events import Decision

    def decision(record: Record) -> Decision | None:
        try:
            event = decode_value(record, codec)
        except UndecodableMessage:
            return None
        return event if isinstance(event, Decision) else None

    topic = topics.decisions
    try:
        ends = {tp: end for tp, end in log.end_offsets([topic]).items() if end > 0}
    except LogError as exc:  # an operator's principal may not read decisions (docs/security.md): no book to compare
        _unread(exc)
        return [], None, None
    found: list[tuple[int, int, Decision]] = []
    configured: list[tuple[int, int, Decision]] = []
    for tp, end in ends.items():
        first = record_at(log, tp, 0, polls=4)
        # The newest: on Kafka the last offsets are commit (or abort) markers, not records.
        newest = records_before(log, tp, end, span=_NEWEST_SPAN, polls=4)
        for record in ([first] if first is not None else []) + newest[::-1]:
            event = decision(record)
            if event is not None:
                found.append((record.timestamp_ms, record.offset, event))
                if record is not first:
                    break
        # The configuration the log last recorded: in those newest records, or further back (what that reads:
        # `_configured_before`).
        last = _configured_before(log, tp, max(end - _NEWEST_SPAN, 0), newest, decision, first)
        if last is not None:
            configured.append((last[0].timestamp_ms, last[0].offset, last[1]))
    found.sort(key=lambda item: item[:2])
    configured.sort(key=lambda item: item[:2])
    books, newest_decision = _books_of([d for _, _, d in found])
    return books, configured[-1][2] if configured else None, newest_decision


def _configured_before(
    log: EventLog,
    tp: TopicPartition,
    bottom: int,
    read: list[Record],
    decision: Callable[[Record], Decision | None],
    first: Record | None = None,
) -> tuple[Record, Decision] | None:
    """The last decision of one partition that records a configuration, and its record, or None (none does, or a
    window could not be read whole, or none within `_SCAN_LIMIT`). `read` are the partition's newest records, from
    offset `bottom` to its end, already read, and `first` its record at offset 0.

    What it reads: nothing more where the newest decision in `read` has a `config_hash` (the configuration in force
    when it was made, SET_LIMITS included) that is the hash of the configuration `first` records: that one is then in
    force, exactly (a book whose configuration never changed). Otherwise the partition backwards below `bottom`, in
    windows of offsets each twice as long as the one before up to `_SCAN_SPAN`, until a decision that records a
    configuration (the decision of a `serve --config` that changed it, or else the book's first; a record that is
    undecodable, or no decision, is skipped), and at most `_SCAN_LIMIT` offsets: past that nothing is judged. A
    window read short (the reader's position below its top: the helpers stop at an empty poll, as on a slow broker)
    is read once more; if still short the scan stops and nothing is judged (None), rather than judging by a
    configuration older than one it may have missed."""
    from eventlog.port import records_before

    for record in reversed(read):
        event = decision(record)
        if event is not None and event.config is not None:
            return record, event
    newest = next((d for d in map(decision, reversed(read)) if d is not None), None)
    started = decision(first) if first is not None else None
    if first is not None and started is not None and newest is not None and _in_force(started, newest):
        return first, started
    span, floor = _NEWEST_SPAN, bottom - _SCAN_LIMIT
    floor = max(floor, 0)
    while bottom > floor:
        span = min(span * 2, _SCAN_SPAN)
        for _ in range(2):
            window = records_before(log, tp, bottom, span=min(span, bottom - floor))
            # Past the window's top: the offsets it spans were all read, markers and aborted records stepped over.
            if log.position(tp) >= bottom:
                break
        else:
            return None
        for record in reversed(window):
            event = decision(record)
            if event is not None and event.config is not None:
                return record, event
        bottom = max(bottom - span, floor)
    return None


def _in_force(recorded: Decision, newest: Decision) -> bool:
    """Whether the configuration `recorded` records is the one in force at `newest` (its `config_hash`)."""
    from allocator.service.sequencer import config_from_json

    if recorded.config is None:
        return False
    try:
        return config_from_json(recorded.config).config_hash == newest.config_hash
    except ValueError:  # a configuration this release cannot read
        return False


def _unverified_hint(trusted: Mapping[str, Ed25519PublicKey] | None) -> str:
    """What a refusal drawn from decisions read without --trusted-keys adds: anyone who can write the log could
    have appended the decision it rests on, and how to count only the allocator's own."""
    if trusted is not None:
        return ""
    return ("; this was read from the log's decisions unverified: if one may be forged, pass --trusted-keys with "
            "the allocator's public key(s) and only the decisions that verify count, or --unchecked to send it "
            "without this check (the book judges it; docs/security.md)")  # fmt: skip


def _operator_keys_refusal(configured: Decision | None, key_id: str | None) -> str | None:
    """Why the book would refuse this command for its signature (rules.md §11.3), or None: a book whose configuration
    names operator keys counts only commands signed by one of them. Told before sending: an unsigned emergency HALT
    was "sent" (exit 0) and the book refused it. `configured` is the last decision that records a configuration,
    the configuration the log last recorded; operator_keys is configuration only, so no SET_LIMITS since has
    changed it. None when the log holds no decision that records a configuration."""
    import json

    from book.config import AllocatorConfig, ConfigError

    if configured is None or not configured.config:
        return None
    try:
        keys = AllocatorConfig.from_recorded(json.loads(configured.config)).operator_keys
    except (ValueError, ConfigError):
        return None  # a configuration this release cannot read: the allocator judges the command
    if not keys or (key_id is not None and key_id in keys):
        return None
    named = ", ".join(sorted(keys))
    whose = (f"(its keyring as the log last recorded its configuration, in the decision of cycle "
             f"{configured.cycle})")  # fmt: skip
    if key_id is None:
        return (f"book {configured.book_id} takes only commands signed by one of its operator keys ({named}): pass "
                f"--key FILE; an unsigned command would be refused {whose}")  # fmt: skip
    return (f"--key: key {key_id} is not one of book {configured.book_id}'s operator keys ({named}); the command "
            f"would be refused {whose}")  # fmt: skip


def _check_limits(limits: Mapping[str, float]) -> None:
    """A SET_LIMITS the book would refuse whatever its configuration (an unknown or configuration-only key, a value
    of the wrong type or out of its key's range, a malformed `agent:` key; the book's rule, `check_set_limits`) is a
    usage error before anything is sent: the book answers it with a governor event, but `control` said "sent"."""
    from book.config import ConfigError, check_set_limits

    try:
        check_set_limits(limits)
    except ConfigError as exc:
        raise UsageError(f"--set: {exc}; the book refuses this under any configuration, nothing sent") from exc


def _limits_refusal(configured: Decision | None, limits: Mapping[str, float] | None) -> str | None:
    """Why the book would refuse this SET_LIMITS under the configuration the log last recorded, in `configured`, the
    last decision that records one (a rule between a key given and one not given, such as min_window_s <=
    opportunity_window_s, or an `agent:` key on a book that accepts every agent), or None: the book's own rule,
    `AllocatorConfig.with_limits`. A SET_LIMITS folded since that decision may have changed the configuration, and
    the message says which decision's configuration it judged by. None when the log holds no decision that records a
    configuration, or one this release cannot read."""
    import json

    from book.config import AllocatorConfig, ConfigError

    if limits is None or configured is None or not configured.config:
        return None
    try:
        recorded = AllocatorConfig.from_recorded(json.loads(configured.config))
    except (ValueError, ConfigError):
        return None  # a configuration this release cannot read: the allocator judges the command
    try:
        recorded.with_limits(limits)
    except ConfigError as exc:
        return (f"--set: {exc}, under book {configured.book_id}'s configuration as the log last recorded it, in the "
                f"decision of cycle {configured.cycle} (a SET_LIMITS folded since may have changed it); the book "
                "would refuse the command")  # fmt: skip
    return None


def _limits(action: str, pairs: list[str] | None) -> dict[str, float] | None:
    """set-limits' `--set KEY=VALUE` pairs as the command's limits (numbers: they travel as doubles); whether each
    key and value is a valid configuration is checked before sending (`_check_limits`, `_limits_refusal`) and judged
    by the allocator, where the fold answers a bad one."""
    import math

    if action != "set-limits":
        if pairs:
            raise UsageError(f"--set is for set-limits, not {action}")
        return None
    if not pairs:
        raise UsageError("set-limits needs at least one --set KEY=VALUE")
    limits: dict[str, float] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or not key or not math.isfinite(value):
            raise UsageError(f"--set {pair!r}: must be KEY=NUMBER (e.g. position_cap=0.01, agent:gamma=1)")
        if key in limits:
            raise UsageError(f"--set {key}: given twice")
        limits[key] = value
    return limits


def _cmd_status(args: argparse.Namespace) -> int:
    import json
    import os

    from sqlalchemy.exc import SQLAlchemyError

    from eventlog.port import Topics
    from projections.database import DEFAULT_EMBEDDED_DATABASE, engine_for, sqlite_file
    from projections.status import format_status, read_status
    from schemas.codec import make_codec

    shown = _status_config(args)
    url = args.database or os.environ.get("DATABASE_URL") or DEFAULT_EMBEDDED_DATABASE
    missing = sqlite_file(url)
    if missing is not None and not missing.exists():
        # Reading must not create: SQLite would make an empty file where no projection is.
        print(f"allocator status: no projection at {url}: no such file (has `allocator project` run?)",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    engine = engine_for(url, args.schema)
    try:
        status = read_status(engine, shown.config, decisions=args.decisions)
    except SQLAlchemyError as exc:
        where = engine.url.render_as_string()
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        print(f"allocator status: cannot read the projection at {where}: {problem} (has `allocator project` run? "
              "one made by an older release needs `allocator db upgrade`)", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    finally:
        engine.dispose()
    mixed = _another_logs_projection(
        status, shown.verified, Topics(args.topic_prefix).decisions, make_codec(args.schema_registry)
    )
    if mixed is not None:
        print(f"allocator status: {mixed}; name the log and the projection of one book", file=sys.stderr)
        return EXIT_USAGE
    # What the reader made of the log's decisions: the projection records every one as written (docs/security.md).
    # With no trusted key that signed any, a decision is unverified, not told apart from a forgery.
    rejected = shown.verified.rejections if shown.verified is not None else []
    refused = {(r.topic, r.partition, r.offset): "unverified" if shown.warning else r.kind for r in rejected}
    for d in status["decisions"]:
        d["refused"] = refused.get((d["log_topic"], d["log_partition"], d["log_offset"]))
    status["log_cycle"] = _newest_cycle(shown.verified, {(p, o) for p, o in status["dead_decisions"]})
    status["configuration"] = shown.configuration_json()
    status["chain"] = shown.chain_json()
    print(json.dumps(status, indent=1, default=str) if args.json else format_status(status))
    return EXIT_OK


def _newest_cycle(verified: VerifiedLog | None, dead: set[tuple[int, int]]) -> int | None:
    """The newest cycle among the log's decisions that verified (None: no log read, or no decision), for status to
    say when the projection is behind it (an outside probe: it showed cycle 2 of a log that held 3, and no word),
    leaving out those at a position (partition, offset) in `dead`, the ones the projector dead-lettered: the
    projection will never hold them (an outside probe: one forged decision kept status saying "behind" for good)."""
    cycles = [d.cycle for r, d in verified.accepted if (r.partition, r.offset) not in dead] if verified else []
    return max(cycles) if cycles else None


def _another_logs_projection(
    status: dict[str, Any], verified: VerifiedLog | None, decisions_topic: str, codec: EventCodec
) -> str | None:
    """Why the projection status read was not made from the log it read (a sentence), or None: its decisions came
    from another topic, a position of the log holds another decision than the projection says (another id, or the
    same id with another hash: another log of a book of the same name), or the projection has decisions past the
    log's end. `status` then showed one book's state against another's caps and chain, and said nothing. A
    projection behind its log is only behind."""
    from allocator.service.chain import canonical_of
    from schemas.signing import decision_hash

    latest = [status["latest_decision"]] if status.get("latest_decision") else []
    shown = [*status["decisions"], *latest]  # the newest is checked even when --decisions 0 lists none
    if verified is None or not shown:
        return None
    topics = sorted({str(d["log_topic"]) for d in shown})
    if topics != [decisions_topic]:
        return f"the projection was made from {', '.join(topics)}, but the log's decisions are on {decisions_topic}"
    on_log = {(r.topic, r.partition, r.offset): (r, d) for r, d in verified.accepted}
    ends: dict[int, int] = {}
    for r, _ in verified.accepted:
        ends[r.partition] = max(ends.get(r.partition, -1), r.offset)
    for x in verified.rejections:
        ends[x.partition] = max(ends.get(x.partition, -1), x.offset)
    refused = {(x.topic, x.partition, x.offset) for x in verified.rejections}
    for d in shown:
        where = f"{d['log_topic']}[{d['log_partition']}]@{d['log_offset']}"
        found = on_log.get((d["log_topic"], d["log_partition"], d["log_offset"]))
        if found is None:
            if d["log_offset"] > ends.get(d["log_partition"], -1):
                return f"the projection has {d['decision_id']} at {where}, past the end of the log's decisions"
            if (d["log_topic"], d["log_partition"], d["log_offset"]) not in refused:
                # Neither a decision of the log nor one it refused there: a row the projector never wrote (an outside
                # probe inserted cycle 99 at offset -1, and status showed it as the book's state, no word said).
                return f"the projection has {d['decision_id']} at {where}, where the log holds no decision"
            continue
        record, decision = found
        if decision.decision_id != d["decision_id"]:
            return f"the projection has {d['decision_id']} at {where}, but the log has {decision.decision_id} there"
        if record.value is not None and d.get("decision_hash"):
            on_disk = decision_hash(decision, canonical_of(record.value, decision, codec))
            if on_disk != d["decision_hash"]:
                return (f"the projection's {d['decision_id']} at {where} has hash {str(d['decision_hash'])[:12]}, the "
                        f"log's {on_disk[:12]}: another log of a book of the same name")  # fmt: skip
        # What status shows of it is the log's: an outside probe set a PAUSED book's row to ACTIVE in the database,
        # and status showed ACTIVE, --trusted-keys or not.
        shown_fields = (
            ("cycle", decision.cycle),
            ("governor_state", decision.governor_state.value),
            ("equity", decision.equity),
            ("opportunity_window_ms", decision.opportunity_window_ms),
        )
        for field, on_log_value in shown_fields:
            if field in d and d[field] != on_log_value:
                return (f"the projection's {d['decision_id']} at {where} has {field} {d[field]!r}, the log's "
                        f"{on_log_value!r}: the projection was changed outside the projector")  # fmt: skip
    return None


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from book.config import ConfigError
    from simulation.demo import DemoError, DemoOptions, demo_config, pick_scenarios, run_demo

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
        try:
            demo_config(options.scenario_count)  # the book's configuration, checked before anything runs
        except ConfigError as exc:
            raise DemoError(f"--scenario-count {options.scenario_count}: {exc}") from exc
        return run_demo(options, say=lambda line: print(line, flush=True))
    except DemoError as exc:
        print(f"allocator demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
