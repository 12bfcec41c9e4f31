"""`allocator serve`: the book's allocator service — consume, fold, decide, publish exactly once (an adapter)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from allocator.engine.cycle import CycleOutcome, run_cycle
from allocator.engine.request import CycleRequest
from allocator.service.sequencer import (
    BookState,
    build_request,
    fold_batch,
    fold_decision,
    governor_events,
    prepare_cycle,
    replay_decisions,
    stamp_config,
    take_config,
)
from book.config import AllocatorConfig
from eventlog.port import AbortableError, EventLog, Record, Topics, normalise_book_id
from schemas.codec import EventCodec
from schemas.events import Decision

Say = Callable[[str], None]
Decide = Callable[[CycleRequest], CycleOutcome]


class ServiceStopped(Exception):
    """The service must stop: another instance took over the book, or the log refused it for good."""


@dataclass(frozen=True)
class CycleReport:
    decision: Decision
    inputs: int
    dead_letters: int
    governor_events: int


def group_of(topics: Topics, book_id: str) -> str:
    """The allocator's consumer group: one per book and topic prefix, so books under other prefixes never share it."""
    return f"allocator-{topics.prefix}-{normalise_book_id(book_id)}"


def transactional_id_of(topics: Topics, book_id: str) -> str:
    """The allocator's transactional id: a second instance of the same book and prefix fences the first, and only
    that one."""
    return f"allocator-{topics.prefix}-{normalise_book_id(book_id)}"


def rebuild(reader: EventLog, codec: EventCodec, topics: Topics, config: AllocatorConfig | None, say: Say) -> BookState:
    """The state the last published decision left, rebuilt from the log alone (see `replay_decisions`), with the
    configuration in force: the log's, unless `config` (a file) differs from it (`take_config`).

    Raises NoConfigOnLog when the log records no configuration and `config` is None."""
    state, decisions, events = replay_decisions(reader, codec, topics, config, lambda _state, recorded: recorded)
    if decisions:
        say(f"rebuilt from the log: {decisions} decisions, {events} input events, cycle {state.cycle}")
    note = take_config(state, config)
    if note is not None:
        say(note)
    return state


class AllocatorService:
    """One book's allocator: the single writer of its decisions."""

    def __init__(
        self,
        log: EventLog,
        reader: EventLog,
        codec: EventCodec,
        book_id: str,
        config: AllocatorConfig | None,
        topics: Topics,
        say: Say = print,
        clock: Callable[[], float] = time.monotonic,
        decide: Decide = run_cycle,
    ) -> None:
        """`decide` is the cycle: the allocator's own, unless a caller (the demo's naive baseline) swaps it.
        `config` is the configuration file's, or None to run with the one the log records."""
        self.log = log
        self.reader = reader
        self.codec = codec
        self.book_id = normalise_book_id(book_id)
        self.config = config
        self.topics = topics
        self.say = say
        self.clock = clock
        self.decide = decide
        self.state = BookState.new(config or AllocatorConfig())
        self.buffer: list[Record] = []
        self.pending_proposals = 0

    def start(self) -> None:
        """Fence older instances, then rebuild the state from the log before deciding anything."""
        self.log.create_topics([*self.topics.inputs, *self.topics.outputs])
        self.log.init_transactions(transactional_id_of(self.topics, self.book_id))
        self.state = rebuild(self.reader, self.codec, self.topics, self.config, self.say)
        self.log.assign(list(self.topics.inputs))
        for tp in self.log.assignment():
            self.log.seek(tp, self.state.positions.get(tp, 0))

    def poll(self, timeout_s: float) -> int:
        records = self.log.poll(max_records=5_000, timeout_s=timeout_s)
        self.buffer.extend(records)
        self.pending_proposals += sum(1 for r in records if r.topic == self.topics.proposals)
        return len(records)

    def due(self, last_cycle_at: float) -> bool:
        if not self.buffer:
            return False
        waiting = len(self.state.portfolio.pending) + self.pending_proposals
        config = self.state.portfolio.config
        return self.clock() - last_cycle_at >= config.cycle_interval_s or waiting >= config.max_pending

    def cycle(self) -> CycleReport:
        """Fold the buffered batch, decide, and publish decision, governor events and dead letters in one
        transaction with the consumed offsets. On an abortable error the state and the consumer go back to
        the last commit and the batch is read again."""
        batch = self.buffer
        try:
            folded = fold_batch(self.state, batch, self.codec, self.topics)
            prepare_cycle(self.state)
            inputs = {tp: self.log.position(tp) for tp in self.log.assignment()}
            request = build_request(self.state, self.topics, self.book_id, inputs)
            outcome = self.decide(request)
            decision = stamp_config(self.state, outcome.decision)
            decision_changes = fold_decision(self.state, decision)
            changes = [*folded.changes, *((c, decision.decided_at, decision.decision_id) for c in decision_changes)]
            events = governor_events(self.book_id, decision.decision_id, changes)
            self.log.begin()
            for dead in folded.dead_letters:
                self.log.produce(self.topics.deadletter, self.codec.encode(dead, self.topics.deadletter))
            for event in events:
                self.log.produce(self.topics.governor, self.codec.encode(event, self.topics.governor))
            self.log.produce(
                self.topics.decisions,
                self.codec.encode(decision, self.topics.decisions),
                key=self.book_id.encode(),
                timestamp_ms=max(decision.decided_at, 1),
            )
            self.log.commit(inputs, group_of(self.topics, self.book_id))
        except AbortableError as exc:
            self.say(f"transaction aborted ({exc}); rewinding to the last commit and retrying")
            self.log.abort()
            self.log.rewind_to_committed()
            # Rare: rebuild what the last commit left from the log itself (copying the state every cycle to
            # restore it cost tens of ms a cycle, growing with every proposal id ever seen).
            self.state = rebuild(self.reader, self.codec, self.topics, self.config, self.say)
            self.buffer = []
            self.pending_proposals = 0
            raise
        self.buffer = []
        self.pending_proposals = 0
        return CycleReport(decision, len(batch), len(folded.dead_letters), len(events))

    def run(self, should_stop: Callable[[], bool], poll_timeout_s: float = 0.2) -> int:
        """Poll and decide until `should_stop()`; returns the number of decisions published."""
        published = 0
        last = self.clock()
        while not should_stop():
            self.poll(poll_timeout_s)
            if not self.due(last):
                continue
            started = self.clock()
            try:
                report = self.cycle()
            except AbortableError:
                continue
            last = started  # the interval runs from cycle start to cycle start, not from the end of the last
            published += 1
            d = report.decision
            funded = sum(1 for a in d.allocations if a.size > 0)
            self.say(
                f"cycle {d.cycle}: {report.inputs} events in, {len(d.allocations)} decided, {funded} funded, "
                f"{d.solver_path.value} in {d.solve_ms:.1f} ms, governor {d.governor_state.value}"
                + (f", {report.dead_letters} dead letters" if report.dead_letters else "")
            )
        return published
