"""The book's sequence: how input batches and decisions fold into state, the same way live, on restart and in audit.

The allocator is the log's sequencer. Each decision records the input position it saw; the inputs between two
decisions are one batch, folded in a canonical order (log time, then topic, partition, offset) so that the live
service, a restart and an audit all rebuild exactly the state each decision was made on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from allocator.engine.request import CycleRequest
from allocator.engine.validation import Submitted, rejected_duplicate, rejected_unauthorized, validate
from book.bounds import dead_letter_fields, out_of_bounds
from book.config import AllocatorConfig, ConfigError
from book.portfolio import PortfolioState
from eventlog.port import EventLog, Record, TopicPartition, Topics, decode_value
from governors.state import GovernorChange, on_command
from schemas.codec import EventCodec, UndecodableMessage
from schemas.events import (
    Command,
    DeadLetter,
    Decision,
    Event,
    Fill,
    GovernorEvent,
    GovernorState,
    InputPosition,
    Proposal,
)
from schemas.versions import single_object_version


@dataclass
class BookState:
    """The portfolio fold plus what the sequencer itself remembers."""

    portfolio: PortfolioState
    positions: dict[TopicPartition, int] = field(default_factory=dict)  # next offset folded, per input partition
    cycle: int = 0
    # Validation of each pending proposal, kept while it waits: a deferred proposal is not re-checked every cycle.
    validated: dict[Proposal, Submitted] = field(default_factory=dict)
    validated_rules: int = 0  # the `proposal_id_rules` those were checked under
    # The last configuration a decision recorded (None: the log holds none, as before wire version 2), and the
    # canonical JSON the next decision records (set when the book adopted a configuration for it).
    recorded_config: AllocatorConfig | None = None
    config_to_record: str | None = None

    @classmethod
    def new(cls, config: AllocatorConfig, book: str | None = None) -> BookState:
        """`book` is the book's name (`book_name`), which operator commands must name (rules.md §11.3)."""
        return cls(PortfolioState.new(config, book))


class NoConfigOnLog(ValueError):
    """The log holds no configuration (it was written before wire version 2) and none was given."""


def canonical_config(config: AllocatorConfig) -> str:
    """The configuration as a decision records it: canonical JSON, keys sorted (what `config_hash` hashes)."""
    return json.dumps(config.to_mapping(), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_from_json(text: str) -> AllocatorConfig:
    """The configuration a decision recorded (validated exactly as a configuration file is; a key its release did
    not have takes the value that release ran with: `AllocatorConfig.from_recorded`). ValueError (ConfigError) names
    what is wrong when the text is not one."""
    values = json.loads(text)
    if not isinstance(values, dict):
        raise ConfigError(f"must be a JSON object of configuration keys, got {type(values).__name__}")
    return AllocatorConfig.from_recorded(values)


def config_problem(decision: Decision) -> str | None:
    """Why the configuration `decision` records cannot be read, or None. A decision the allocator wrote always can;
    one forged or damaged on the log is skipped and named like an undecodable record (rules.md §11.2), never folded:
    reading it would stop every restart and every audit of the book."""
    if decision.config is None:
        return None
    try:
        config_from_json(decision.config)
    except (ValueError, RecursionError) as exc:
        return f"Decision.config is not a configuration: {str(exc)[:300]}"
    return None


def adopt_config(state: BookState, text: str) -> AllocatorConfig:
    """The one fold rule for a recorded configuration, run before the batch of the decision that carries it:
    the book adopts it. Before the book's first decision the book starts from it (its initial cash included);
    later it replaces the configuration in force, earlier SET_LIMITS included (later ones apply on top)."""
    config = config_from_json(text)
    if state.cycle == 0 and not state.positions:
        state.portfolio = PortfolioState.new(config, state.portfolio.book)
    else:
        state.portfolio.config = config
        state.portfolio.limits = config.governor_limits()
    state.recorded_config = config
    state.config_to_record = text
    return config


def take_config(state: BookState, wanted: AllocatorConfig | None) -> str | None:
    """A starting allocator's configuration, after the log was folded into `state`: the log's unless `wanted`
    (a configuration file) differs from the one in force, which the next decision then records. On an empty log
    the file's, or the defaults, are recorded on the first decision. Returns what to tell the operator.

    Raises NoConfigOnLog when the log has decisions but no configuration (before wire version 2) and none is
    given."""
    in_force = state.portfolio.config
    if state.recorded_config is None:
        if state.cycle > 0 and wanted is None:
            raise NoConfigOnLog(
                "the log holds no configuration (its decisions were written before wire version 2, or the "
                "decision that recorded it is missing): pass --config with the configuration it ran with"
            )
        # Nothing on the log yet: record what is in force (the file's, or the defaults, with any SET_LIMITS).
        adopt_config(state, canonical_config(in_force))
        return None
    if wanted is None or wanted.config_hash == in_force.config_hash:
        return None
    # A three-way merge, so that a restart with the book's own file does not undo an operator: the keys the file
    # changes from the configuration the log recorded take effect; every other key keeps its value in force, which
    # the SET_LIMITS accepted since may have changed (rules.md §7.7: they stay in force). A restart with an
    # unchanged file used to put the file's position_cap back over an operator's tighter one, and drop an agent.
    base = state.recorded_config
    names = [f.name for f in dataclasses.fields(AllocatorConfig)]
    edited = {n: getattr(wanted, n) for n in names if getattr(wanted, n) != getattr(base, n)}
    kept = sorted(n for n in names if n not in edited and getattr(in_force, n) != getattr(base, n))
    try:
        merged = dataclasses.replace(in_force, **edited)
    except ConfigError as exc:  # the operator's limits and the file's changes do not fit together: the file wins
        merged, kept = wanted, []
        dropped = f"; the limits set by operators since could not be kept with it ({exc}) and are dropped"
    else:
        dropped = ""
    if merged.config_hash == in_force.config_hash:
        return (f"your file has hash {wanted.config_hash[:12]}, the configuration the log recorded; the limits "
                f"operators set since stay in force ({', '.join(kept)})")  # fmt: skip
    adopt_config(state, canonical_config(merged))
    changed = ", ".join(sorted(edited)) or "none"
    staying = f"; the limits operators set since stay in force ({', '.join(kept)})" if kept else ""
    return (
        f"the log ran with hash {in_force.config_hash[:12]}, your file has {wanted.config_hash[:12]}; "
        f"the file's changes take effect now ({changed}; recorded on the next decision){staying}{dropped}"
    )


def stamp_config(state: BookState, decision: Decision) -> Decision:
    """The decision as published: with the configuration the book adopted for it, if any."""
    if state.config_to_record is None or decision.config == state.config_to_record:
        return decision
    return dataclasses.replace(decision, config=state.config_to_record)


@dataclass(frozen=True)
class Folded:
    """What folding one batch produced besides the new state."""

    changes: tuple[tuple[GovernorChange, int, str], ...]  # (change, log time, source position)
    dead_letters: tuple[DeadLetter, ...]


def canonical_order(records: Iterable[Record], topics: Topics) -> list[Record]:
    # By log time, then the topic's rank (every agent's own proposals topic ranks as the shared one), then the
    # topic's name (which tells two proposals topics apart), partition and offset.
    records = list(records)
    rank = {t: topics.input_rank(t) for t in {r.topic for r in records}}
    return sorted(records, key=lambda r: (r.timestamp_ms, rank[r.topic], r.topic, r.partition, r.offset))


def dead_letter(record: Record, error: str) -> DeadLetter:
    """The dead letter naming `record` by its position, with why (cut to fit: `dead_letter_fields`)."""
    error, payload = dead_letter_fields(error, record.value)
    return DeadLetter(record.topic, record.partition, record.offset, error, payload, record.timestamp_ms)


def decode(record: Record, codec: EventCodec, topics: Topics) -> Event | DeadLetter:
    """The record's event, or the dead letter that says why it cannot be one."""
    try:
        event = decode_value(record, codec)
    except UndecodableMessage as exc:
        return dead_letter(record, exc.reason)
    if not isinstance(event, topics.accepts(record.topic)):
        return dead_letter(record, f"a {type(event).__name__} does not belong on {record.topic}")
    return event


# Upcaster of a rule, not of a record: decisions written with Decision version 1 were made while every input
# record, an undecodable one included, moved the book's clock. Replaying their batches the same way keeps those
# logs auditable.
DEAD_LETTERS_MOVED_THE_CLOCK = frozenset({("Decision", 1)})


# Upcaster of a rule: batches of decisions written with Decision version 1 folded every in-bounds fill, funded
# or not (a fill after its reservation expired, over its size, with any fee). They replay the same way; the rule of
# rules.md §11.1 (PortfolioState.fill_refusal) applies to every later decision's batch and to the live service.
FILLS_UNCHECKED = frozenset({("Decision", 1)})


def unauthorized(record: Record, proposal: Proposal, writer: str) -> str | None:
    """Why a proposal read from agent `writer`'s own topic may not count (its agent_id is another's), or None
    (rules.md §11.1): the broker lets only that agent write there, so the topic says who wrote it."""
    if proposal.agent_id == writer:
        return None
    claimed = proposal.agent_id if len(proposal.agent_id) <= 64 else f"{proposal.agent_id[:64]}..."
    return (
        f"agent_id {claimed!r} on {record.topic}, the proposals topic of agent {writer!r}: "
        f"only {writer!r} may propose there, and only as itself"
    )


def fold_one(
    book: PortfolioState, record: Record, event: Event, *, trust_fills: bool = False, writer: str | None = None
) -> tuple[GovernorChange, ...] | DeadLetter:
    """Fold one decoded input event, or the dead letter that rejects it: a field out of its bounds
    (book/bounds.py) or a fill no committed decision funded (rules.md §11.1; skipped with `trust_fills`, see
    FILLS_UNCHECKED) is rejected before the fold sees it, and a fold that raises anyway is contained here, so no
    record can stop the sequencer (rules.md §11.2). Only an event the fold accepts moves the book's clock.

    `writer` is the agent whose own proposals topic the record came from (None: any other topic). A proposal
    there naming another agent is refused (`PortfolioState.refuse_proposal`): the next decision rejects it
    UNAUTHORIZED, and its id stays free for the agent it names."""
    if isinstance(event, Proposal) and not trust_fills:
        full = book.intake_refusal(event, writer)
        if full is not None:
            return dead_letter(record, f"rejected, no effect on the book: {full}")
    if writer is not None and isinstance(event, Proposal):
        why = unauthorized(record, event, writer)
        if why is not None:
            if record.timestamp_ms > book.last_time:
                book.last_time = record.timestamp_ms
            book.refuse_proposal(event, why, writer)
            return ()
    repeated = book.fill_id_refusal(event) if not trust_fills and isinstance(event, Fill) else None
    problem = repeated or out_of_bounds(event, book.markets)
    if problem is None and not trust_fills:
        problem = book.resolved_refusal(event)
    if problem is None and not trust_fills and isinstance(event, Fill):
        problem = book.fill_refusal(event)
    if problem is not None:
        return dead_letter(record, f"rejected, no effect on the book: {problem}")
    if record.timestamp_ms > book.last_time:
        book.last_time = record.timestamp_ms
    try:
        return book.apply(event)
    except Exception as exc:  # the last resort: the bounds above should leave nothing for it
        return dead_letter(record, f"the fold failed on this {type(event).__name__}: {type(exc).__name__}: {exc}")


def fold_batch(
    state: BookState,
    records: Sequence[Record],
    codec: EventCodec,
    topics: Topics,
    *,
    legacy_clock: bool = False,
    trust_fills: bool = False,
) -> Folded:
    """Fold one batch of input records (any order: they are put in the canonical one first).

    A dead letter never moves the book's clock (rules.md §1.5), except with `legacy_clock`, for the batch of a
    decision written before that rule (see DEAD_LETTERS_MOVED_THE_CLOCK). `trust_fills` folds unfunded fills, for
    the batch of a decision written before rules.md §11.1 was enforced (see FILLS_UNCHECKED)."""
    changes: list[tuple[GovernorChange, int, str]] = []
    dead: list[DeadLetter] = []
    book = state.portfolio
    # The next offset per input partition, kept by (topic, partition) while folding and written into
    # `state.positions` once per partition (also if a fold raises): a TopicPartition per record cost more
    # than folding its event.
    ends: dict[tuple[str, int], int] = {}
    # The batch of a Decision version 1 folds fills by the rules of its release: any report releases its reservation.
    book.legacy_fills = trust_fills
    try:
        for record in canonical_order(records, topics):
            where = (record.topic, record.partition)
            end = record.next_offset
            if end > ends.get(where, 0):
                ends[where] = end
            if legacy_clock and record.timestamp_ms > book.last_time:
                book.last_time = record.timestamp_ms
            event = decode(record, codec, topics)
            if isinstance(event, DeadLetter):
                dead.append(event)
                continue
            writer = topics.agent_of(record.topic) if isinstance(event, Proposal) else None
            caused = fold_one(book, record, event, trust_fills=trust_fills, writer=writer)
            if isinstance(caused, DeadLetter):
                dead.append(caused)
                continue
            if caused:
                source = f"{record.topic}/{record.partition}/{record.offset}"
                changes.extend((change, record.timestamp_ms, source) for change in caused)
    finally:
        book.legacy_fills = False
        for (topic, partition), end in ends.items():
            tp = TopicPartition(topic, partition)
            state.positions[tp] = max(state.positions.get(tp, 0), end)
    return Folded(tuple(changes), tuple(dead))


def book_name(topics: Topics, book_id: str) -> str:
    """A book's name, `<topic prefix>.<book id>`: what its decision ids start with and its operator commands name
    (`ControlCommand.book`, rules.md §11.3)."""
    return f"{topics.prefix}.{book_id}"


def decision_id_of(topics: Topics, book_id: str, cycle: int) -> str:
    """A decision's id, unique per topic prefix, book and cycle; the risk model's scenarios are seeded from it."""
    return f"{book_name(topics, book_id)}-{cycle:010d}"


def build_request(
    state: BookState,
    topics: Topics,
    book_id: str,
    inputs: Mapping[TopicPartition, int],
    decision_id: str | None = None,
) -> CycleRequest:
    """The request the next cycle decides: run after the batch was folded and stale reservations released.

    An audit passes the recorded decision's id, so the re-run draws the scenarios the recorded one drew."""
    book = state.portfolio
    config = book.config
    pending, conflicts = book.undecided()
    rules = config.proposal_id_rules
    kept = state.validated if state.validated_rules == rules else {}
    state.validated = {p: kept.get(p) or validate(p, rules) for p in pending}
    state.validated_rules = rules
    submitted: list[Submitted] = list(state.validated.values())
    submitted.extend(rejected_duplicate(p, rules) for p in conflicts)
    submitted.extend(rejected_unauthorized(p, why, rules) for p, why in book.refused)
    cycle = state.cycle + 1
    return CycleRequest(
        decision_id=decision_id or decision_id_of(topics, book_id, cycle),
        book_id=book_id,
        cycle=cycle,
        as_of=book.last_time,
        portfolio=book.portfolio(),
        governor_state=book.governor.state,
        governor_reason=book.governor.reason,
        window_ms=book.governor.window_ms,
        submitted=tuple(submitted),
        config=config,
        inputs=tuple(
            InputPosition(tp.topic, tp.partition, offset)
            for tp, offset in sorted(inputs.items(), key=lambda kv: (kv[0].topic, kv[0].partition))
        ),
        resolved_markets=frozenset(book.resolved),
        received_at={
            key: at for p in pending if (at := book.received.get(key := (p.agent_id, p.proposal_id))) is not None
        },
    )


def prepare_cycle(state: BookState) -> None:
    """Release reservations whose fill never came (log time), before the cycle sizes against the book."""
    book = state.portfolio
    book.expire_reservations(book.last_time, round(book.config.fill_timeout_s * 1000))


def fold_decision(state: BookState, decision: Decision) -> tuple[GovernorChange, ...]:
    state.cycle = max(state.cycle, decision.cycle)
    state.config_to_record = None
    return state.portfolio.apply(decision)


CYCLE_FAILURE_SOURCE = "allocator:cycle-failure"
"""The `source` of the governor event that halts the book after a cycle raised: replay finds the halt by it."""


def halt_after_failure(state: BookState, cycle: int, error: BaseException) -> tuple[GovernorChange, ...]:
    """A cycle raised (the engine, the independent check, anything): the book halts as an operator's HALT would,
    so every later cycle funds nothing and defers every pending proposal until an operator RESUMEs. Returns the
    change to publish (none when the book was halted already)."""
    book = state.portfolio
    text = f"{type(error).__name__}: {error}"
    if len(text) > 500:
        text = f"{text[:480]}... ({len(text)} chars)"
    reason = f"cycle {cycle} failed: {text}; halted until an operator RESUMEs"
    book.governor, changes = on_command(book.governor, Command.HALT, reason, "allocator")
    return changes


def failure_halts(reader: EventLog, codec: EventCodec, topics: Topics) -> dict[str, str]:
    """The decisions made after a failed cycle halted the book, by decision id, with the failure's cause: what
    the halt event on the governor topic says (its id is the decision's id plus `-g<i>`)."""
    out: dict[str, str] = {}
    for r in read_records(reader, [topics.governor], reader.end_offsets([topics.governor])):
        if r.value is None:
            continue
        try:
            event = codec.decode(r.value, r.topic, r.partition, r.offset)
        except UndecodableMessage:
            continue
        if isinstance(event, GovernorEvent) and event.source == CYCLE_FAILURE_SOURCE:
            out[event.event_id.rsplit("-g", 1)[0]] = event.cause
    return out


def governor_events(
    book_id: str, decision_id: str, changes: Sequence[tuple[GovernorChange, int, str]]
) -> list[GovernorEvent]:
    """The governor changes of one cycle as events, with ids derived from the decision so a replay names them alike."""
    return [
        GovernorEvent(
            event_id=f"{decision_id}-g{i}",
            book_id=book_id,
            governor=change.governor,
            old_state=change.old_state,
            new_state=change.new_state,
            cause=change.cause,
            measured=change.measured,
            limit=change.limit,
            source=source,
            time=time,
        )
        for i, (change, time, source) in enumerate(changes)
    ]


def read_records(reader: EventLog, topic_names: Sequence[str], ends: Mapping[TopicPartition, int]) -> list[Record]:
    """Every committed record of the topics below `ends` (next offsets), read from the start."""
    reader.assign(list(topic_names))
    for tp in reader.assignment():
        reader.seek(tp, 0)
    # Never wait for offsets the log does not have (a decision naming positions beyond the end would hang here).
    present = reader.end_offsets(list(topic_names))
    ends = {tp: min(end, present.get(tp, 0)) for tp, end in ends.items()}
    out: list[Record] = []
    while any(reader.position(tp) < ends.get(tp, 0) for tp in reader.assignment()):
        for r in reader.poll(max_records=5_000, timeout_s=1.0):
            if r.offset < ends.get(r.topic_partition, 0):
                out.append(r)
    return out


OnUndecodable = Callable[[Record, str], None]
"""Given a record on the decisions topic that is not a decision, and why (its position is the record's)."""


def decode_decision(record: Record, codec: EventCodec) -> Decision | str:
    """The decision a record on the decisions topic holds, or why it holds none (rules.md §11.2: a bad record
    there is skipped and named, never a crash)."""
    try:
        event = decode_value(record, codec)
    except UndecodableMessage as exc:
        return exc.reason
    if not isinstance(event, Decision):
        return f"a {type(event).__name__} does not belong on {record.topic}"
    return config_problem(event) or event


def read_decisions(
    reader: EventLog, codec: EventCodec, topics: Topics, on_undecodable: OnUndecodable | None = None
) -> list[tuple[Record, Decision]]:
    """Every committed decision, in log order, with the record it came in. A record that is not a decision is
    skipped and handed to `on_undecodable` with the reason."""
    out: list[tuple[Record, Decision]] = []
    for r in read_records(reader, [topics.decisions], reader.end_offsets([topics.decisions])):
        event = decode_decision(r, codec)
        if isinstance(event, Decision):
            out.append((r, event))
        elif on_undecodable is not None:
            on_undecodable(r, event)
    return out


OnDecision = Callable[[BookState, Decision], Decision]
"""Given the state a recorded decision saw (batch folded, reservations released) and that decision, return the
decision to fold forward: the recorded one to rebuild, or a recomputed one to audit."""
OnDuplicate = Callable[[Decision, Decision], None]
"""Given the decision folded for a cycle and a later record claiming the same cycle."""

ReplaySteps = Generator[tuple[BookState, Decision], Decision, tuple[BookState, int, int]]
"""Yields (the state a recorded decision saw, that decision) and is sent the decision to fold forward; returns
the state after the last decision, the number of decisions and of input events folded."""


def first_decision_missing(first: Decision) -> str | None:
    """Why the configuration the book started with is not on a log whose first decision read (or verified) is
    `first` (a sentence), or None. A book's first decision records its configuration, so a first one of a later
    cycle that records none means the decisions before it are gone (deleted, or refused as unreadable); a first
    one of cycle 1 that records none was written before wire version 2 (`--config` stands for it)."""
    if first.config is not None or first.cycle <= 1:
        return None
    return (
        f"no decision before {first.decision_id} (cycle {first.cycle}) is on the log: the book's first decision, "
        "which records the configuration it started with, is missing (deleted, or refused as unreadable)"
    )


def replay_steps(
    reader: EventLog,
    codec: EventCodec,
    topics: Topics,
    config: AllocatorConfig | None,
    decisions: Sequence[tuple[Record, Decision]] | None = None,
    on_duplicate: OnDuplicate | None = None,
) -> ReplaySteps:
    """Fold the log decision by decision: each decision's recorded input position closes one batch; a decision
    carrying a configuration has the book adopt it first (`adopt_config`). `config` is the configuration of a log
    that records none (written before wire version 2); without it such a log raises NoConfigOnLog.

    A record claiming a cycle already replayed is never folded; `on_duplicate` sees it beside the decision that
    was folded for that cycle.
    """
    state = BookState.new(config or AllocatorConfig())
    recorded = list(decisions) if decisions is not None else read_decisions(reader, codec, topics)
    if not recorded:
        return state, 0, 0
    first = recorded[0][1]
    if config is None and first.config is None:
        missing = first_decision_missing(first)
        if missing is not None:
            raise NoConfigOnLog(f"{missing}: pass --config with the configuration the log ran with")
        raise NoConfigOnLog(
            f"decision {first.decision_id} records no configuration (written before wire version 2): "
            "pass --config with the configuration the log ran with"
        )
    state.portfolio.book = book_name(topics, recorded[0][1].book_id)  # the book the decisions are of
    ends: dict[TopicPartition, int] = {}
    for _, d in recorded:
        for pos in d.inputs:
            tp = TopicPartition(pos.topic, pos.partition)
            ends[tp] = max(ends.get(tp, 0), pos.offset)
    # The inputs the decisions name, agents' own proposals topics included whether or not `topics` knows them.
    names = sorted({*topics.inputs, *(tp.topic for tp in ends if topics.accepts(tp.topic))})
    records = read_records(reader, names, ends)
    halts = failure_halts(reader, codec, topics)
    by_partition: dict[TopicPartition, list[Record]] = {}
    for r in records:
        by_partition.setdefault(r.topic_partition, []).append(r)
    cursor = dict.fromkeys(by_partition, 0)
    seen: dict[int, Decision] = {}
    for decision_record, d in recorded:
        if d.cycle in seen:
            if on_duplicate is not None:
                on_duplicate(seen[d.cycle], d)
            continue
        if d.config is not None:
            adopt_config(state, d.config)
        batch: list[Record] = []
        for pos in d.inputs:
            tp = TopicPartition(pos.topic, pos.partition)
            rows = by_partition.get(tp, [])
            i = cursor.get(tp, 0)
            while i < len(rows) and rows[i].offset < pos.offset:
                batch.append(rows[i])
                i += 1
            cursor[tp] = i
        written = single_object_version(decision_record.value or b"")
        fold_batch(
            state,
            batch,
            codec,
            topics,
            legacy_clock=written in DEAD_LETTERS_MOVED_THE_CLOCK,
            trust_fills=written in FILLS_UNCHECKED,
        )
        prepare_cycle(state)
        # The cycle failed live and was decided on the halted book: so here too. The governor topic is not
        # signed, so a halt event counts only for a decision that records a book not ACTIVE (a verified decision
        # says so): a forged one cannot stop a book whose decisions went on (rules.md §11.3).
        if d.decision_id in halts and d.governor_state is not GovernorState.ACTIVE:
            halt_after_failure(state, d.cycle, RuntimeError(halts[d.decision_id]))
        folded = yield state, d
        seen[d.cycle] = folded
        fold_decision(state, folded)
        for pos in d.inputs:  # the committed position, markers included
            state.positions[TopicPartition(pos.topic, pos.partition)] = pos.offset
    return state, len(seen), len(records)


def replay_decisions(
    reader: EventLog,
    codec: EventCodec,
    topics: Topics,
    config: AllocatorConfig | None,
    on_decision: OnDecision,
    decisions: Sequence[tuple[Record, Decision]] | None = None,
    on_duplicate: OnDuplicate | None = None,
) -> tuple[BookState, int, int]:
    """`replay_steps` with each decision to fold forward chosen by `on_decision`."""
    steps = replay_steps(reader, codec, topics, config, decisions, on_duplicate)
    try:
        state, recorded = next(steps)
        while True:
            state, recorded = steps.send(on_decision(state, recorded))
    except StopIteration as stop:
        result: tuple[BookState, int, int] = stop.value
        return result


SIZE_REL_TOL = 1e-9
"""How far a re-derived amount may be from a decision's record, relative (the audit's and the restart's test)."""


def close_enough(a: float, b: float, margin: float = 0.0) -> bool:
    """Whether a re-derived amount `b` is the recorded `a`: within SIZE_REL_TOL, plus `margin` (currency)."""
    return a == b or abs(a - b) <= SIZE_REL_TOL * max(abs(a), abs(b), 1.0) + margin


def contradicted(state: BookState, decision: Decision) -> str | None:
    """What the state replay rebuilt for `decision` (its inputs folded, just before its cycle) contradicts of what the
    decision records it was made on — its cycle (the next after the last folded), its time (the log time of its
    inputs), the governor state, equity, available capital, high-water mark — or None. The live cycle built its
    request from that same state, so they agree unless the log changed after the decision (an edited input, a
    decision removed or forged) or the fold changed under it."""
    portfolio = state.portfolio.portfolio()
    found: list[str] = []
    if decision.cycle != state.cycle + 1:
        found.append(f"cycle {decision.cycle} (the next after the decisions before it is {state.cycle + 1})")
    if decision.decided_at != state.portfolio.last_time:
        found.append(f"decided_at {decision.decided_at} (its inputs' log time is {state.portfolio.last_time})")
    rebuilt_governor = state.portfolio.governor.state
    if rebuilt_governor is not decision.governor_state:
        found.append(f"governor {decision.governor_state.value} (rebuilt {rebuilt_governor.value})")
    for name in ("equity", "available", "high_water_mark"):
        recorded, rebuilt = float(getattr(decision, name)), float(getattr(portfolio, name))
        if not close_enough(recorded, rebuilt):
            found.append(f"{name} {recorded!r} (rebuilt {rebuilt!r})")
    return ", ".join(found) if found else None


def recorded_config(decisions: Iterable[tuple[Record, Decision]]) -> AllocatorConfig | None:
    """The last configuration the log recorded, or None (a log written before wire version 2)."""
    text = None
    for _, d in decisions:
        if d.config is not None:
            text = d.config
    return config_from_json(text) if text is not None else None
