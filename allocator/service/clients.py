"""The producer and consumer API of a book's log for everyone but the allocator: agents, executors, markets,
operators (an adapter). Agents only ever propose; executors act on decisions; nobody else touches capital."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from allocator.service.chain import DUPLICATE, ChainVerifier, Rejection, Trusted
from allocator.service.wire import not_text
from book.bounds import out_of_bounds
from eventlog.port import EventLog, LogError, Record, TopicPartition, Topics
from schemas.codec import EventCodec
from schemas.events import (
    Command,
    ControlCommand,
    DeadLetter,
    Decision,
    Event,
    Fill,
    MarketResolution,
    PnlMark,
    Proposal,
)


class ClientError(ValueError):
    """A client was asked to publish something it must not (the message names the field)."""


@dataclass
class BookClient:
    """Publishes to one book's input topics. Records are keyed so one market's events stay in order."""

    log: EventLog
    codec: EventCodec
    topics: Topics

    def propose(self, proposal: Proposal) -> None:
        """An agent's proposal. Its content is judged by the allocator (a bad field is REJECTED with the
        field named), not here: the log keeps what the agent said. When the book has agents (`topics.agents`),
        an agent's proposal goes to its own topic, the one the broker lets only it write (rules.md §11.1)."""
        self._send(self.proposals_topic(proposal.agent_id), proposal, proposal.market_id, proposal.created_at)

    def proposals_topic(self, agent_id: str) -> str:
        """Where a proposal of `agent_id` goes: its own topic if the book has that agent, else the shared one."""
        return self.topics.proposals_of(agent_id) if agent_id in self.topics.agents else self.topics.proposals

    def report_fill(self, fill: Fill) -> None:
        """An executor's report on one allocation of a decision."""
        self._send(self.topics.fills, fill, fill.market_id, fill.time)

    def mark(self, mark: PnlMark) -> None:
        if not (math.isfinite(mark.mark_price) and 0.0 <= mark.mark_price <= 1.0):
            raise ClientError(f"mark_price: {mark.mark_price!r} is not a price in [0, 1] ({mark.market_id})")
        self._send(self.topics.pnl, mark, mark.market_id, mark.time)

    def resolve(self, resolution: MarketResolution) -> None:
        self._send(self.topics.pnl, resolution, resolution.market_id, resolution.time)

    def command(self, command: ControlCommand) -> None:
        """An operator's command; who and why are required, so the log can say it later."""
        check_command(command)
        self._send(self.topics.control, command, "operator", command.time)

    def flush(self) -> None:
        self.log.flush()

    def _send(self, topic: str, event: Event, key: str, time_ms: int) -> None:
        self.log.produce(topic, self.codec.encode(event, topic), key=key.encode(), timestamp_ms=max(time_ms, 1))


class DecisionFeed:
    """What an executor reads: the book's committed decisions, in order, from where it left off.

    Only decisions that verify are returned (docs/security.md): signed by a key in `trusted`, linked to the
    previous verified decision, of a new cycle; decisions from before the chain are returned while no chained
    one has been seen. Every other record is a `Rejection`, kept in `rejections` and passed to `on_rejected`.
    The feed reads the topic from its start to know the chain, and returns decisions from `start` on."""

    def __init__(
        self,
        log: EventLog,
        codec: EventCodec,
        topics: Topics,
        start: Mapping[TopicPartition, int] | None = None,
        trusted: Trusted | None = None,
        on_rejected: Callable[[Rejection], None] | None = None,
        on_skip: Callable[[DeadLetter], None] | None = None,
    ):
        self.log = log
        self.codec = codec
        self.topics = topics
        self.start = dict(start or {})
        self.verifier = ChainVerifier(trusted or {}, codec)
        self.rejections: list[Rejection] = []
        self.on_rejected = on_rejected
        self._cycles: set[int] = set()
        self.on_skip = on_skip
        self.skipped: list[DeadLetter] = []
        log.assign([topics.decisions])
        for tp in log.assignment():
            log.seek(tp, 0)

    def poll(self, timeout_s: float = 0.2) -> list[Decision]:
        """The next decisions. A record that is not a decision is skipped, kept in `skipped` (as a dead letter
        naming its position and why) and handed to `on_skip`: one bad record never stops an executor."""
        out: list[Decision] = []
        for record, checked in self.poll_checked(timeout_s):
            if isinstance(checked, Rejection):
                self._reject(record, checked)
            else:
                out.append(checked)
        return out

    def poll_checked(self, timeout_s: float = 0.2) -> list[tuple[Record, Decision | Rejection]]:
        """The next records from `start` on, each with what verification made of it: its decision, or why it
        does not verify. `poll` keeps the decisions; `allocator tail decisions --trusted-keys` shows both."""
        out: list[tuple[Record, Decision | Rejection]] = []
        for record in self.log.poll(max_records=500, timeout_s=timeout_s):
            checked = self.verifier.check(record)
            if isinstance(checked, Decision) and checked.cycle in self._cycles:
                detail = f"cycle {checked.cycle} was already decided"
                checked = Rejection(DUPLICATE, record.topic, record.partition, record.offset, detail,
                                    checked.decision_id, checked.cycle, checked.key_id)  # fmt: skip
            if isinstance(checked, Decision):
                self._cycles.add(checked.cycle)
            if record.offset >= self.start.get(record.topic_partition, 0):
                out.append((record, checked))
        return out

    def _reject(self, record: Record, rejection: Rejection) -> None:
        """A record that does not verify: kept as a rejection and as a dead letter naming its position and why."""
        self.rejections.append(rejection)
        if self.on_rejected is not None:
            self.on_rejected(rejection)
        letter = DeadLetter(record.topic, record.partition, record.offset, f"{rejection.kind}: {rejection.detail}",
                            record.value, record.timestamp_ms)  # fmt: skip
        self.skipped.append(letter)
        if self.on_skip is not None:
            self.on_skip(letter)

    def drain(self, timeout_s: float = 30.0) -> list[Decision]:
        """Every decision committed so far that this feed has not returned yet."""
        ends = self.log.end_offsets([self.topics.decisions])
        out: list[Decision] = []
        polls = max(1, int(timeout_s / 0.1))
        for _ in range(polls):
            if all(self.log.position(tp) >= end for tp, end in ends.items()):
                return out
            out.extend(self.poll(0.1))
        raise TimeoutError(f"the decision feed did not reach the end of {self.topics.decisions} in {timeout_s} s")


def agents_with_topics(log: EventLog, topics: Topics, agent_ids: Iterable[str]) -> Topics:
    """`topics` with those of `agent_ids` whose own proposals topic exists on the log (`allocator init` or
    `serve` created it because the book configures the agent): what a writer that does not know the book's
    configuration uses. An id that cannot name a topic, or a topic this principal cannot see, is left out."""
    found: list[str] = list(topics.agents)
    for agent in dict.fromkeys(agent_ids):
        if agent in found or topics.agent_of(f"{topics.proposals}.{agent}") != agent:
            continue
        try:
            log.end_offsets([topics.proposals_of(agent)])
        except LogError:
            continue
        found.append(agent)
    return dataclasses.replace(topics, agents=tuple(found))


def check_command(command: ControlCommand) -> None:
    """What `BookClient.command` requires of an operator's command before it goes on the log (ClientError naming the
    field): who sent it and why, for SET_LIMITS at least one key, and every field within the fold's bounds."""
    for name in ("operator_id", "reason", "limits", "book"):
        found = not_text(getattr(command, name), name)
        if found is not None:
            raise ClientError(found)
    if not command.operator_id.strip():
        raise ClientError("operator_id: an operator command must say who sent it")
    if not command.reason.strip():
        raise ClientError("reason: an operator command must say why")
    if command.command is Command.SET_LIMITS and not command.limits:
        raise ClientError("limits: SET_LIMITS needs at least one configuration key")
    # The bounds the allocator's fold holds it to (a command past them becomes a dead letter there): an operator told
    # "sent" must not find the book still ACTIVE after an emergency HALT whose reason was too long.
    found = out_of_bounds(command, ())
    if found is not None:
        raise ClientError(found)
