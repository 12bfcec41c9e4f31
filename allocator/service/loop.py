"""`allocator serve`: the book's allocator service — consume, fold, decide, publish exactly once (an adapter)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from allocator.engine.cycle import CycleOutcome, run_cycle
from allocator.engine.request import CycleRequest
from allocator.service.chain import (
    ChainSettings,
    Trusted,
    UnverifiedBook,
    VerifiedLog,
    cut_chain,
    report_rejections,
    unverified_chain,
    verify_log,
)
from allocator.service.metrics import ServiceMetrics
from allocator.service.sequencer import (
    CYCLE_FAILURE_SOURCE,
    BookState,
    book_name,
    build_request,
    contradicted,
    fold_batch,
    fold_decision,
    governor_events,
    halt_after_failure,
    prepare_cycle,
    replay_decisions,
    stamp_config,
    take_config,
)
from book.config import AllocatorConfig
from eventlog.port import (
    AbortableError,
    EventLog,
    LogError,
    NotAuthorizedError,
    Record,
    TopicPartition,
    Topics,
    normalise_book_id,
)
from governors.state import GovernorChange
from schemas.codec import EventCodec
from schemas.events import Decision

Say = Callable[[str], None]


class Contradicted(ValueError):
    """The log's inputs no longer rebuild the state one of its decisions records it was made on: deciding on the
    rebuilt state would undo what the decisions did (a tripped kill switch lifted by an edited mark)."""


class OtherBook(ValueError):
    """The log's decisions are another book's: a second book id on one topic prefix would spend the same inputs."""


Decide = Callable[[CycleRequest], CycleOutcome]


class CycleFailed(Exception):
    """A cycle raised even on a halted book: nothing was published, the state went back to the last commit."""


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


def transactional_id_of(topics: Topics) -> str:
    """The allocator's transactional id, one per topic prefix: a second allocator on the prefix fences the first,
    whichever book it names (one book per topic prefix: they would spend the same inputs), and no other."""
    return f"allocator-{topics.prefix}"


def legacy_transactional_id_of(topics: Topics, book_id: str) -> str:
    """The transactional id releases before the prefix-wide one wrote a book's decisions under: fenced at start, so
    an instance of such a release still running the book stops at its next commit."""
    return f"allocator-{topics.prefix}-{normalise_book_id(book_id)}"


def refuse_log(
    verified: VerifiedLog, trusted: Trusted, topics: Topics, book: str | None, *, signs: bool | None = None
) -> None:
    """Raises UnverifiedBook when the log's decisions are signed and none verifies (`unverified_chain`), when the
    verified chain is cut short (`cut_chain`), or when it began and this allocator would not sign (`signs` False;
    None: not asked); OtherBook when a verified decision is another book's than `book` (`<prefix>.<id>`; None: any
    book)."""
    unverified = unverified_chain(verified, trusted)
    if unverified is not None:
        raise UnverifiedBook(
            f"{unverified}: serving would start the book over from nothing beside its chain; pass the key that "
            "signs its decisions (--signing-key), and after a key rotation the earlier keys too (--trusted-keys)"
        )
    cut = cut_chain(verified, trusted, book)
    if cut is not None:
        raise UnverifiedBook(
            f"{cut}: serving would decide those cycles again beside them. `allocator audit` names every record "
            "involved; restore the log from a copy (or the broker's replicas) before serving the book"
        )
    if signs is False and verified.began:
        raise UnverifiedBook(
            "the book's decisions are signed and verify, and this allocator has no --signing-key: it would append "
            "unsigned decisions that every reader of the chain refuses (and that a signed restart decides again); "
            "pass the key that signs the book's decisions (--signing-key)"
        )
    if book is None:
        return
    others = sorted({d.book_id for _, d in verified.accepted if book_name(topics, d.book_id) != book})
    mine = sum(1 for _, d in verified.accepted if book_name(topics, d.book_id) == book)
    if others and mine:
        # This book's decisions and another's on one prefix: suggesting the other book would be as wrong.
        counts: dict[str, int] = {}
        first: dict[str, str] = {}
        for record, d in verified.accepted:
            name = book_name(topics, d.book_id)
            counts[name] = counts.get(name, 0) + 1
            first.setdefault(name, f"{record.topic}/{record.partition}/{record.offset}")
        named = ", ".join(
            f"{name}: {count} (the first at {first[name]})" for name, count in sorted(counts.items()) if name != book
        )
        raise OtherBook(
            f"the decisions on this log are {book}'s ({mine}) and another book's ({named}): one book per topic prefix, "
            "so serving either would fold the other's decisions. `allocator audit` names each; remove the other "
            "book's decisions from this log (restore it from a copy), or sign the book's decisions (--signing-key) so "
            "that no other writer's count"
        )
    if others:
        named = ", ".join(book_name(topics, other) for other in others)
        raise OtherBook(
            f"the decisions on this log are book {named}'s, not {book}'s: "
            "one book per topic prefix (they share its proposals, fills and control topics); serve --book "
            f"{others[0]}, or give the new book its own --topic-prefix"
        )


def rebuild(
    reader: EventLog,
    codec: EventCodec,
    topics: Topics,
    config: AllocatorConfig | None,
    say: Say,
    chain: ChainSettings | None = None,
    book: str | None = None,
    verified: VerifiedLog | None = None,
) -> BookState:
    """The state the last published decision left, rebuilt from the log alone (see `replay_decisions`), with the
    configuration in force: the log's, unless `config` (a file) differs from it (`take_config`). `verified`, when
    given, is the decisions topic as `verify_log` read it, still whole.

    Only decisions that verify are folded (`allocator/service/chain.py`); a record that does not (undecodable,
    forged, out of the chain) is named and skipped, and the signer's head moves to the last that does. Raises
    NoConfigOnLog when the log records no configuration and `config` is None, UnverifiedBook when the log's decisions
    are signed and none verifies (`unverified_chain`), OtherBook when its decisions are another book's, Contradicted
    when the state rebuilt for a decision is not the one it records it was made on (`contradicted`)."""
    chain = chain or ChainSettings()
    verified = verified or verify_log(reader, codec, topics, chain.trusted)
    refuse_log(verified, chain.trusted, topics, book, signs=chain.signer is not None)
    report_rejections(verified.rejections, say)
    if chain.signer is not None:
        chain.signer.head = verified.head

    def check(rebuilt: BookState, recorded: Decision) -> Decision:
        why = contradicted(rebuilt, recorded)
        if why is not None:
            raise Contradicted(
                f"decision {recorded.decision_id} (cycle {recorded.cycle}) records {why}: the log's inputs no longer "
                "rebuild the state it was decided on (changed after it was written?); serving would decide on a "
                "state the book's own decisions contradict. `allocator audit` names every decision affected"
            )
        return recorded

    state, decisions, events = replay_decisions(reader, codec, topics, config, check, verified.accepted)
    if decisions:
        say(f"rebuilt from the log: {decisions} decisions, {events} input events, cycle {state.cycle}")
    if book is not None:
        state.portfolio.book = book
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
        log_append_time: bool = True,
        metrics: ServiceMetrics | None = None,
        chain: ChainSettings | None = None,
    ) -> None:
        """`decide` is the cycle: the allocator's own, unless a caller (the demo's naive baseline) swaps it.
        Input topics the service has to create stamp records with the log's append time; a simulation that
        drives log time through its writers' timestamps passes `log_append_time=False` (rules.md §1.5).
        `metrics`, when given, is told of the start, each published cycle, aborts and idle polls. `config` is the
        configuration file's, or None to run with the one the log records."""
        self.log = log
        self.reader = reader
        self.codec = codec
        self.book_id = normalise_book_id(book_id)
        self.book = book_name(topics, self.book_id)  # what this book's operator commands name (rules.md §11.3)
        self.config = config
        self.topics = topics
        self.say = say
        self.clock = clock
        self.decide = decide
        self.log_append_time = log_append_time
        self.metrics = metrics
        self.chain = chain or ChainSettings()
        self.state = BookState.new(config or AllocatorConfig(), self.book)
        self.buffer: list[Record] = []
        self.pending_proposals = 0

    def start(self) -> None:
        """Fence older instances, then rebuild the state from the log before deciding anything.

        The transactional id is the topic prefix's, so two allocators on one prefix never both publish, whichever
        books they name: the later fences the earlier (docs/operations.md: one book per topic prefix). A book whose
        prefix holds another book's decisions, or signed ones none of whose keys it was given, is refused before it
        fences anyone (a mistaken `--book` or a missing key does not stop the running book), and again after (that
        book may have committed a decision in between; both then stop, and nothing is published twice). The id an
        earlier release used for this book is fenced too."""
        # Topics that exist are used as they are, whatever their partition count; missing ones are created.
        self.log.create_topics(list(self.topics.inputs), None, log_append_time=self.log_append_time)
        self.log.create_topics(list(self.topics.outputs), None)
        trusted, decisions = self.chain.trusted, [self.topics.decisions]
        ends = self.reader.end_offsets(decisions)
        verified = verify_log(self.reader, self.codec, self.topics, trusted)
        refuse_log(verified, trusted, self.topics, self.book, signs=self.chain.signer is not None)
        self._fence_legacy_id()
        self.log.init_transactions(transactional_id_of(self.topics))
        # Read again only if a decision was committed meanwhile (another allocator's, before this one fenced it).
        whole = verified if self.reader.end_offsets(decisions) == ends else None
        self.state = rebuild(self.reader, self.codec, self.topics, self.config, self.say, self.chain, self.book, whole)
        self._add_agent_topics()
        self._assign_inputs({})
        if self.metrics is not None:
            self.metrics.on_start(self.state, self.log, self._positions())

    def _fence_legacy_id(self) -> None:
        """Fence the id an earlier release wrote this book under, `allocator-<prefix>-<book>`, unless it is not that:
        it is also the id of today's allocator of the prefix `<prefix>-<book>`, and fencing it stopped that book
        (an outside probe: restarting book main on prefix pk stopped the allocator of prefix pk-main, which said
        "another instance took over"). So it is left alone when that prefix's decisions topic exists, and when
        this principal may not use the id (`allocator acl apply` grants it no longer: only a deployment that ran an
        earlier release has the grant, and only there can an instance of that release still run)."""
        legacy = legacy_transactional_id_of(self.topics, self.book_id)
        other = Topics(legacy.removeprefix("allocator-"))
        try:
            owned = bool(self.reader.end_offsets([other.decisions]))
        except LogError:
            owned = False  # absent, or not this principal's to see: the fence's own authorization decides
        if owned:
            self.say(f"allocator serve: {legacy!r}, the id earlier releases wrote book {self.book_id} under, is the "
                     f"id of the allocator of prefix {other.prefix}, whose topics exist: not fenced")  # fmt: skip
            return
        with contextlib.suppress(NotAuthorizedError):  # never granted here: no earlier release writes under it
            self.log.fence(legacy)

    def _add_agent_topics(self) -> tuple[str, ...]:
        """The agents' own proposals topics among the inputs (rules.md §11.1): of every agent the configuration in
        force names (the log's or the file's, with every SET_LIMITS folded), and of every agent whose topic a
        decision has read, so an agent removed later is still read, live and after a restart alike (its proposals
        are rejected UNKNOWN_AGENT, with a reason). Missing topics are created (existing ones are used as they
        are). Returns the agents added."""
        read = sorted({a for tp in self.state.positions if (a := self.topics.agent_of(tp.topic)) is not None})
        wanted = dict.fromkeys((*(self.state.portfolio.config.agents or ()), *read))
        missing = tuple(a for a in wanted if a not in self.topics.agents)
        if missing:
            self.log.create_topics(
                [self.topics.proposals_of(a) for a in missing], None, log_append_time=self.log_append_time
            )
            self.topics = dataclasses.replace(self.topics, agents=(*self.topics.agents, *missing))
        return missing

    def _assign_inputs(self, positions: Mapping[TopicPartition, int]) -> None:
        """Read every input partition from `positions`, else from where the book's decisions read it to (0 for a
        partition no decision has read: a new agent's topic is read from its start)."""
        self.log.assign(list(self.topics.inputs))
        for tp in self.log.assignment():
            self.log.seek(tp, positions[tp] if tp in positions else self.state.positions.get(tp, 0))

    def _follow_new_agents(self) -> None:
        """After a committed cycle: an agent a SET_LIMITS of its batch added is read from now on, without a restart.
        The next decision's `inputs` name the new topic's position, so a restart, a replay and the audit fold
        exactly the records of it this service folds (rules.md §11.1)."""
        if all(a in self.topics.agents for a in self.state.portfolio.config.agents or ()):
            return
        positions = self._positions()  # the other partitions go on from where they are
        added = self._add_agent_topics()
        self._assign_inputs(positions)
        topics = ", ".join(self.topics.proposals_of(a) for a in added)
        self.say(f"the configuration now names {', '.join(added)}: reading {topics} from its start")

    def _positions(self) -> dict[TopicPartition, int]:
        return {tp: self.log.position(tp) for tp in self.log.assignment()}

    def poll(self, timeout_s: float) -> int:
        records = self.log.poll(max_records=5_000, timeout_s=timeout_s)
        self.buffer.extend(records)
        self.pending_proposals += sum(1 for r in records if self.topics.is_proposals(r.topic))
        if self.metrics is not None and not records:
            self.metrics.on_idle(self.log, self._positions(), len(self.buffer))
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
            outcome, halted = self._decide_or_halt(inputs)
            decision = stamp_config(self.state, outcome.decision)
            decision_changes = fold_decision(self.state, decision)
            changes = [
                *folded.changes,
                *((c, decision.decided_at, CYCLE_FAILURE_SOURCE) for c in halted),
                *((c, decision.decided_at, decision.decision_id) for c in decision_changes),
            ]
            events = governor_events(self.book_id, decision.decision_id, changes)
            if self.chain.signer is not None:  # linked and signed (docs/security.md)
                decision, message = self.chain.signer.seal(decision, self.codec, self.topics.decisions)
            else:
                message = self.codec.encode(decision, self.topics.decisions)
            self.log.begin()
            for dead in folded.dead_letters:
                self.log.produce(self.topics.deadletter, self.codec.encode(dead, self.topics.deadletter))
            for event in events:
                self.log.produce(self.topics.governor, self.codec.encode(event, self.topics.governor))
            self.log.produce(
                self.topics.decisions,
                message,
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
            self.state = rebuild(self.reader, self.codec, self.topics, self.config, self.say, self.chain, self.book)
            self.buffer = []
            self.pending_proposals = 0
            raise
        self.buffer = []
        self.pending_proposals = 0
        self._follow_new_agents()
        return CycleReport(decision, len(batch), len(folded.dead_letters), len(events))

    def _decide_or_halt(self, inputs: dict[TopicPartition, int]) -> tuple[CycleOutcome, tuple[GovernorChange, ...]]:
        """Decide the cycle; if deciding raises, halt the book (rules.md §11.2: an operator must RESUME) and decide
        again on the halted book, which funds nothing and defers every pending proposal with its reason. The halt
        is published with the decision, so a restart and the audit find the book halted at the same cycle."""
        request = build_request(self.state, self.topics, self.book_id, inputs)
        try:
            return self.decide(request), ()
        except Exception as exc:
            halted = halt_after_failure(self.state, request.cycle, exc)
            self.say(f"cycle {request.cycle} failed ({type(exc).__name__}: {exc}); the book is halted until RESUME")
            if not halted:
                raise CycleFailed(f"cycle {request.cycle} failed on a halted book: {exc}") from exc
        try:
            return self.decide(build_request(self.state, self.topics, self.book_id, inputs)), halted
        except Exception as again:
            raise CycleFailed(f"cycle {request.cycle} failed again on the halted book: {again}") from again

    def _recover(self) -> None:
        """Back to the last commit: the consumer rewound, the state rebuilt from the log, the batch dropped."""
        self.log.rewind_to_committed()
        # Rare: rebuild what the last commit left from the log itself (copying the state every cycle to
        # restore it cost tens of ms a cycle, growing with every proposal id ever seen). With the chain's keys:
        # without them a signed book's own decisions would not verify and would not be folded.
        self.state = rebuild(self.reader, self.codec, self.topics, self.config, self.say, self.chain, self.book)
        self.buffer = []
        self.pending_proposals = 0

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
                if self.metrics is not None:
                    self.metrics.on_abort()
                continue
            except CycleFailed as exc:
                # Even the halted book's cycle raised: nothing was written; the batch is read again after the
                # next interval (quiet: no events, no decision) until an operator's command or a fix lets it pass.
                self.say(f"{exc}; nothing published, the batch waits")
                self._recover()
                last = started
                continue
            last = started  # the interval runs from cycle start to cycle start, not from the end of the last
            published += 1
            if self.metrics is not None:
                self.metrics.on_cycle(self.state, report.decision, report.inputs, report.dead_letters,
                                      self.clock() - started, self.log, self._positions())  # fmt: skip
            d = report.decision
            funded = sum(1 for a in d.allocations if a.size > 0)
            self.say(
                f"cycle {d.cycle}: {report.inputs} events in, {len(d.allocations)} decided, {funded} funded, "
                f"{d.solver_path.value} in {d.solve_ms:.1f} ms, governor {d.governor_state.value}"
                + (f", {report.dead_letters} dead letters" if report.dead_letters else "")
            )
        return published
