"""The portfolio fold: every event on the log folded into cash, holdings, marks, reservations and pending proposals.

One fold, used unchanged by the allocator service, the projector, replay and audit. It is pure (no I/O, no
clocks): `apply(event)` changes this small state object in place and returns the governor changes the event
caused, which the caller stamps into `GovernorEvent`s.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from book.bounds import EMPTY_ID, MAX_FILL_TIME_MS, MAX_ID_LENGTH, decision_name
from book.config import AllocatorConfig, ConfigError, check_configuration_only
from book.exactsum import rounded, units
from governors.state import (
    GovernorChange,
    GovernorLimits,
    GovernorStatus,
    on_command,
    on_equity,
    on_execution_report,
    on_solve,
)
from schemas.events import (
    AllocationStatus,
    Command,
    ControlCommand,
    Decision,
    Event,
    Fill,
    FillStatus,
    Governor,
    GovernorEvent,
    MarketResolution,
    Outcome,
    PnlMark,
    Proposal,
    ProposalKey,
    ReasonCode,
    Side,
    SolverPath,
)
from schemas.signing import check_signature, public_key_from_hex

_SIDES = (Side.BUY, Side.SELL)


class _Names:
    """The keys of a table (pending proposals, or conflicting re-sends) by the names rejections give them (a bad id
    is named by a bounded form, rules.md §2), for one decision's fold: built once, when a name is first not a key,
    so a decision naming many bad ids costs one pass over the table, not one per id."""

    def __init__(self, table: Mapping[ProposalKey, Proposal]) -> None:
        self.table = table
        self.by_name: dict[ProposalKey, ProposalKey] | None = None

    def key(self, name: ProposalKey) -> ProposalKey:
        """The key a rejection's (agent id, proposal id) names: itself when present, else the first whose names
        are those, else `name`."""
        if name in self.table:
            return name
        if self.by_name is None:
            self.by_name = {}
            for key in self.table:
                named = (decision_name(key[0]), decision_name(key[1] or EMPTY_ID))
                if named != key:
                    self.by_name.setdefault(named, key)
        return self.by_name.get(name, name)


def operator_refusal(command: ControlCommand, operator_keys: Mapping[str, str]) -> str | None:
    """Why the operator keyring refuses a command (unsigned, unknown key, bad signature), or None; an empty
    keyring accepts every command (rules.md §11)."""
    if not operator_keys:
        return None
    if command.signature is None or command.key_id is None:
        return "unsigned, and the book has an operator keyring"
    key_hex = operator_keys.get(command.key_id)
    if key_hex is None:
        return f"unknown key: key_id {command.key_id!r} is not in operator_keys"
    return check_signature(command, {command.key_id: public_key_from_hex(key_hex, "operator_keys")})


FINAL_STATUSES = frozenset(
    {AllocationStatus.FUNDED, AllocationStatus.CUT, AllocationStatus.REJECTED, AllocationStatus.NETTED,
     AllocationStatus.EXPIRED}
)  # fmt: skip


@dataclass(frozen=True)
class Position:
    """An open position as the cycle sizes against it: the stake's marked value and the contract's mark."""

    market_id: str
    side: Side
    size: float
    price: float
    correlation_key: str


@dataclass(frozen=True)
class Portfolio:
    """The book at the start of a cycle: equity E, available capital W, high-water mark, open positions."""

    equity: float
    available: float
    high_water_mark: float
    positions: tuple[Position, ...] = ()

    def market_exposure(self) -> dict[str, float]:
        """Signed exposure M_m per market: BUY stakes count +, SELL stakes -."""
        out: dict[str, float] = {}
        for p in self.positions:
            out[p.market_id] = out.get(p.market_id, 0.0) + p.side.sign * p.size
        return out

    def group_exposure(self) -> dict[str, float]:
        """Gross exposure X_k held under each correlation key."""
        out: dict[str, float] = {}
        for p in self.positions:
            out[p.correlation_key] = out.get(p.correlation_key, 0.0) + abs(p.size)
        return out


@dataclass
class Holding:
    """Contracts held in one market on one side; each pays 1 if that side wins."""

    market_id: str
    side: Side
    contracts: float
    cost: float
    correlation_key: str


@dataclass(frozen=True)
class Reservation:
    """Capital set aside for a funded allocation until its fill arrives."""

    decision_id: str
    proposal_id: str
    market_id: str
    side: Side
    size: float
    correlation_key: str
    decided_at: int
    agent_id: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """(decision id, agent id, proposal id): one allocation of one decision."""
        return (self.decision_id, self.agent_id, self.proposal_id)


class Repeat(Enum):
    """What a proposal seen before means (rules.md §2.2): the same content is ignored, other content conflicts."""

    NEW = "new"
    SAME = "same"
    CONFLICT = "conflict"


def classify_repeat(seen: dict[ProposalKey, Hashable], key: ProposalKey, content: Hashable) -> Repeat:
    """The one statement of the duplicate rule, per (agent id, proposal id); records a new key's content."""
    known = seen.get(key)
    if known is None:
        seen[key] = content
        return Repeat.NEW
    return Repeat.SAME if known == content else Repeat.CONFLICT


def _content_hash(proposal: Proposal) -> int:
    """A fingerprint of a proposal's content to tell an identical re-send from a conflicting one.

    Python's hash of the frozen record: fast, and only ever compared within one process (the fold is rebuilt
    from the log in each), so its per-process salt does not matter; 64 bits make a false "identical" negligible.
    """
    return hash(proposal)


@dataclass
class Funded:
    """One funded allocation of a committed decision, and the size fills took of it so far."""

    market_id: str
    side: Side
    size: float
    filled: float = 0.0
    reports: int = 0  # execution reports on it counted in the failure window (rules.md §7.4)
    # the proposal's price (of the side bought): the limit a fill's price is held to (`max_fill_price_improvement`);
    # None when the fold did not hold the proposal
    limit_price: float | None = None
    # a FILLED, FAILED or REJECTED report ended it (`fill_rules` 2): a later report on it is refused
    closed: bool = False
    # the least it must be filled to count as a success (`failure_report_rules` 3): the proposal's min size, at most
    # the funded size; 0 when the fold did not hold the proposal
    min_fill: float = 0.0


@dataclass
class PortfolioState:
    """What the book holds and owes, as the log says. Start from `PortfolioState.new(config)`.

    Change it only through `apply` (and `expire_reservations`): the marked value of each holding is kept beside
    it, so one mark or fill revalues only its own market's holdings instead of the whole book, and equity is
    read from an exact sum of those values (`book.exactsum`). Equity is therefore bit for bit
    `cash + math.fsum(value of every holding)` whatever the order of events that built the state.
    """

    config: AllocatorConfig  # in force: the base configuration with every accepted SET_LIMITS applied
    cash: float
    governor: GovernorStatus
    holdings: dict[tuple[str, Side], Holding] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)  # YES price per market
    # Proposals are keyed by (agent id, proposal id): ids are unique per agent (rules.md §2.2).
    reservations: dict[tuple[str, str, str], Reservation] = field(default_factory=dict)  # by `Reservation.key`
    pending: dict[ProposalKey, Proposal] = field(default_factory=dict)  # received, undecided, in arrival order
    received: dict[ProposalKey, int] = field(default_factory=dict)  # pending proposal -> log time it was received
    conflicts: dict[ProposalKey, Proposal] = field(default_factory=dict)  # re-sent with other content: DUPLICATE
    seen: dict[ProposalKey, Hashable] = field(default_factory=dict)  # proposal -> content hash, for duplicates
    # proposals from one agent's own topic naming another agent, and why: the next decision rejects them
    # UNAUTHORIZED; they claim no id (rules.md §11.1)
    refused: list[tuple[Proposal, str]] = field(default_factory=list)
    refused_writers: list[str] = field(default_factory=list)  # the agent whose topic each refused proposal came from
    keys: dict[ProposalKey, str] = field(default_factory=dict)  # funded proposal -> its correlation key
    # (decision id, proposal id) -> {agent id: what a committed decision funded and what fills took of it so far};
    # kept after the reservation expires, so a late fill still counts against its allocation (rules.md §11.1).
    # Grouped by proposal id so a fill written before Fill version 2 (no agent id) finds its one allocation.
    funded: dict[tuple[str, str], dict[str, Funded]] = field(default_factory=dict)
    resolved: set[str] = field(default_factory=set)  # markets that have resolved: nothing left to trade in them
    markets: set[str] = field(default_factory=set)  # every market a proposal, fill or mark named (book/bounds.py)
    last_time: int = 0  # the latest log time folded (set by the sequencer): a cycle's `as_of`
    cycles: int = 0
    last_decision_id: str | None = None
    reset_vote: tuple[str, int] | None = None  # the first of a two-person RESET_KILL_SWITCH: (key id, log time)
    # command ids of the commands a non-empty operator keyring let through: a signed command written again (a copy
    # of a record anyone can read on the log) is refused, so it can never move a governor twice (rules.md §11.3)
    commands: set[str] = field(default_factory=set)
    # every fill_id a fill report used, accepted or refused (`fill_rules` 2): a later report with one is the same
    # report delivered again, refused, so it can neither count twice nor replace the first (rules.md §11.1)
    fill_ids: set[str] = field(default_factory=set)
    # set by the sequencer while it folds the batch of a Decision version 1 (FILLS_UNCHECKED): fills fold by the rules
    # of that release, whatever `fill_rules` says
    legacy_fills: bool = field(default=False, compare=False)
    # the book this fold is, `<topic prefix>.<book id>` (set by the sequencer): a command naming another book is
    # refused (rules.md §11.3). None where a caller folds without one (a test, a benchmark): nothing to compare.
    book: str | None = None
    # The marked value of each holding (same keys as `holdings`) in exact 2**-1074 units, None if not finite,
    # and the sum of those units; `_nonfinite` counts the Nones (any leaves equity to `math.fsum`).
    _held_units: dict[tuple[str, Side], int | None] = field(default_factory=dict, init=False, repr=False, compare=False)
    _value_units: int = field(default=0, init=False, repr=False, compare=False)
    _nonfinite: int = field(default=0, init=False, repr=False, compare=False)
    # How many undecided proposals each writer has (`max_undecided_per_agent`): counted up as they come, rebuilt from
    # the tables after a decision (None until then).
    _waiting_by: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    limits: GovernorLimits = field(init=False, repr=False, compare=False)  # the config's, mapped once

    def __post_init__(self) -> None:
        self.limits = self.config.governor_limits()
        for key in self.holdings:
            self._revalue(key)

    @classmethod
    def new(cls, config: AllocatorConfig, book: str | None = None) -> PortfolioState:
        return cls(
            config=config,
            cash=config.initial_cash,
            governor=GovernorStatus.initial(config.initial_cash, config.governor_limits()),
            book=book,
        )

    # --- derived values ----------------------------------------------------------------------------------

    def contract_mark(self, market_id: str, side: Side, fallback: float) -> float:
        """Current price of the contract a side holds: the YES mark for BUY, 1 - mark for SELL."""
        yes = self.marks.get(market_id)
        if yes is None:
            return fallback
        return yes if side is Side.BUY else 1.0 - yes

    def holding_value(self, h: Holding) -> float:
        """Contracts at the contract's mark; at their average price until the market is marked."""
        yes = self.marks.get(h.market_id)
        if yes is not None:
            return h.contracts * (yes if h.side is Side.BUY else 1.0 - yes)
        return h.contracts * (h.cost / h.contracts if h.contracts > 0 else 0.0)

    @property
    def equity(self) -> float:
        """E = cash + marked value of the holdings, O(1): see the class docstring."""
        total = rounded(self._value_units) if not self._nonfinite else None
        if total is None:  # a zero, huge or non-finite sum: math.fsum's own answer, errors included
            total = math.fsum(self.holding_value(h) for h in self.holdings.values())
        return self.cash + total

    def _revalue(self, key: tuple[str, Side]) -> None:
        """Bring the kept value of one holding (gone, new or changed) up to date with its contracts and mark."""
        old = self._held_units.pop(key, 0)
        if old is None:
            self._nonfinite -= 1
        else:
            self._value_units -= old
        holding = self.holdings.get(key)
        if holding is None:
            return
        value = self.holding_value(holding)
        if math.isfinite(value):
            new = units(value)
            self._value_units += new
            self._held_units[key] = new
        else:
            self._nonfinite += 1
            self._held_units[key] = None

    @property
    def reserved(self) -> float:
        return math.fsum(r.size for r in self.reservations.values())

    @property
    def available(self) -> float:
        """W = E - value of open positions - reservations = cash - reservations."""
        return self.cash - self.reserved

    def portfolio(self) -> Portfolio:
        """The view the cycle sizes against. Reservations count as positions for the caps and the risk model."""
        positions: list[Position] = []
        for h in sorted(self.holdings.values(), key=lambda h: (h.market_id, h.side.value)):
            value = self.holding_value(h)
            if value <= 0:
                continue
            mark = self.contract_mark(h.market_id, h.side, h.cost / h.contracts if h.contracts else 0.5)
            positions.append(Position(h.market_id, h.side, value, min(max(mark, 1e-6), 1 - 1e-6), h.correlation_key))
        for r in sorted(self.reservations.values(), key=lambda r: (r.decision_id, r.proposal_id, r.agent_id)):
            mark = self.contract_mark(r.market_id, r.side, 0.5)
            positions.append(Position(r.market_id, r.side, r.size, min(max(mark, 1e-6), 1 - 1e-6), r.correlation_key))
        return Portfolio(
            equity=self.equity,
            available=self.available,
            high_water_mark=self.governor.high_water_mark,
            positions=tuple(positions),
        )

    def undecided(self) -> tuple[list[Proposal], list[Proposal]]:
        """What the next decision must name: the pending proposals, and the conflicting re-sends to reject."""
        return list(self.pending.values()), list(self.conflicts.values())

    # --- the fold ----------------------------------------------------------------------------------------

    def apply(self, event: Event) -> tuple[GovernorChange, ...]:
        """Fold one event. Returns the governor changes it caused (empty for most events)."""
        # Most frequent first: proposals, then marks and fills.
        if isinstance(event, Proposal):
            self._on_proposal(event)
            return ()
        if isinstance(event, PnlMark):
            return self._on_mark(event)
        if isinstance(event, Fill):
            return self._on_fill(event)
        if isinstance(event, Decision):
            return self._on_decision(event)
        if isinstance(event, MarketResolution):
            return self._on_resolution(event)
        if isinstance(event, ControlCommand):
            return self._on_command(event)
        if isinstance(event, GovernorEvent):
            return ()  # an output of the fold itself: the inputs already rebuilt it
        raise TypeError(f"no fold for {type(event).__name__}")

    def _on_mark(self, mark: PnlMark) -> tuple[GovernorChange, ...]:
        if not 0.0 <= mark.mark_price <= 1.0 or not math.isfinite(mark.mark_price):
            return ()  # an impossible mark is ignored, never folded into equity
        market = mark.market_id
        self.markets.add(market)
        self.marks[market] = mark.mark_price
        holdings = self.holdings
        for side in _SIDES:
            key = (market, side)
            if key in holdings:
                self._revalue(key)
        return self._equity_changed()

    def _on_proposal(self, proposal: Proposal) -> None:
        pid = (proposal.agent_id, proposal.proposal_id)
        self.markets.add(proposal.market_id)
        # The first sight of a key, by far the most frequent case, without a call: `classify_repeat`'s NEW branch.
        seen = self.seen
        if pid not in seen:
            seen[pid] = _content_hash(proposal)
            self.pending[pid] = proposal
            self.received[pid] = self.last_time
            self._count_waiting(proposal.agent_id)
        elif classify_repeat(seen, pid, _content_hash(proposal)) is Repeat.CONFLICT and pid not in self.conflicts:
            self.conflicts[pid] = proposal
            self._count_waiting(proposal.agent_id)

    def _count_waiting(self, writer: str) -> None:
        if self._waiting_by is not None:
            self._waiting_by[writer] = self._waiting_by.get(writer, 0) + 1

    def waiting_of(self, writer: str) -> int:
        """How many undecided proposals `writer` has: pending and conflicting re-sends under its agent id, and
        proposals refused on its own topic (rules.md §2.1)."""
        if self._waiting_by is None:
            counts: dict[str, int] = {}
            for agent, _ in (*self.pending, *self.conflicts):
                counts[agent] = counts.get(agent, 0) + 1
            for agent in self.refused_writers:
                counts[agent] = counts.get(agent, 0) + 1
            self._waiting_by = counts
        return self._waiting_by.get(writer, 0)

    def intake_refusal(self, proposal: Proposal, writer: str | None = None) -> str | None:
        """Why a proposal may not be received (rules.md §2.1), or None: the book already holds
        `max_undecided_proposals` undecided proposals, or its writer `max_undecided_per_agent` of them, and this one
        would add another (a repeat of a received one with the same content adds nothing and is let through, to be
        ignored). `writer` is the agent whose own topic it came from; None means its agent_id."""
        cap = self.config.max_undecided_proposals
        share = self.config.max_undecided_per_agent
        if cap <= 0 and share <= 0:
            return None
        waiting = len(self.pending) + len(self.conflicts) + len(self.refused)
        who = proposal.agent_id if writer is None else writer
        full = 0 < cap <= waiting
        if not full and (share <= 0 or self.waiting_of(who) < share):
            return None
        pid = (proposal.agent_id, proposal.proposal_id)
        # A copy of a received proposal adds nothing, except, under a per-agent bound, one on another agent's topic:
        # refused there, it adds a refusal.
        own = share <= 0 or writer is None or writer == proposal.agent_id
        if own and pid in self.seen and self.seen[pid] == _content_hash(proposal):
            return None
        again = "not received: send it again after the next decision"
        if full:
            return f"the book holds {waiting} undecided proposals (max_undecided_proposals {cap}); {again}"
        shown = who if len(who) <= 64 else f"{who[:64]}..."
        return (f"agent {shown!r} has {self.waiting_of(who)} undecided proposals (max_undecided_per_agent {share}); "
                f"{again}")  # fmt: skip

    def refuse_proposal(self, proposal: Proposal, why: str, writer: str) -> None:
        """A proposal its writer (the agent whose own topic it came from) may not make (rules.md §11.1): the next
        decision rejects it UNAUTHORIZED with `why`. It is not received: it claims no proposal id, names no market
        and moves no duplicate rule; it counts as one of `writer`'s undecided proposals."""
        self.refused.append((proposal, why))
        self.refused_writers.append(writer)
        self._count_waiting(writer)

    def _on_decision(self, decision: Decision) -> tuple[GovernorChange, ...]:
        self.cycles = max(self.cycles, decision.cycle)
        self.last_decision_id = decision.decision_id
        self._waiting_by = None  # the decision settles proposals: counted again when next asked
        if self.refused and any(r.code is ReasonCode.UNAUTHORIZED for a in decision.allocations for r in a.reasons):
            self.refused.clear()  # the decision built from this state named every refused proposal
            self.refused_writers.clear()
        pending_names, conflict_names = _Names(self.pending), _Names(self.conflicts)
        for a in decision.allocations:
            if any(r.code is ReasonCode.UNAUTHORIZED for r in a.reasons):
                continue  # a refused proposal: never pending, its id is not the rejection's to settle
            pid = (a.agent_id, a.proposal_id)
            if a.status is AllocationStatus.REJECTED and self.config.proposal_id_rules >= 2:
                # The rejection names a bad id by a bounded form (rules.md §2): settle the proposal it names.
                duplicate = any(r.code is ReasonCode.DUPLICATE for r in a.reasons)
                pid = (conflict_names if duplicate else pending_names).key(pid)
            if any(r.code is ReasonCode.DUPLICATE for r in a.reasons):
                # The re-send, not the original it conflicts with. A log of an earlier release, when ids were one
                # namespace for all agents, may reject another agent's proposal of a used id as DUPLICATE: it was
                # received as a proposal of its own here, and the decision settles it, so it is never decided again.
                if self.conflicts.pop(pid, None) is None and self.pending.pop(pid, None) is not None:
                    self.received.pop(pid, None)
                continue
            if a.status is AllocationStatus.DEFERRED:
                waiting = self.pending.get(pid)
                if waiting is not None and a.netted_size > 0:
                    # The matched part is done; only the residual waits for the next cycle.
                    self.pending[pid] = replace(waiting, requested_size=waiting.requested_size - a.netted_size)
                continue
            proposal = self.pending.pop(pid, None)
            self.received.pop(pid, None)
            if a.size > 0 and a.side is not None:
                key = proposal.correlation_key if proposal is not None else a.market_id
                self.keys[pid] = key
                reservation = Reservation(decision.decision_id, a.proposal_id, a.market_id, a.side, a.size, key,
                                          decision.decided_at, a.agent_id)  # fmt: skip
                self.reservations[reservation.key] = reservation
                by_agent = self.funded.setdefault((decision.decision_id, a.proposal_id), {})
                limit = proposal.price if proposal is not None else None
                least = min(proposal.min_size, a.size) if proposal is not None else 0.0
                by_agent[a.agent_id] = Funded(a.market_id, a.side, a.size, limit_price=limit, min_fill=least)
        if decision.solver_path is SolverPath.NOT_RUN:
            return ()
        timed_out = decision.solver_path is not SolverPath.MIP_OPTIMAL
        self.governor, changes = on_solve(self.governor, timed_out, self.limits)
        return changes

    def fill_refusal(self, fill: Fill) -> str | None:
        """Why the fold must not trust `fill` (rules.md §11.1), or None: a fill counts only for an allocation a
        committed decision funded, in its market and side, for at most the funded size in total, with a fee of at
        most `max_fee_rate` x filled_size. The sequencer turns a refused fill into a dead letter."""
        agent, allocation = self._allocation_of(fill)
        if allocation is None:
            if agent is None and len(self.funded.get((fill.decision_id, fill.proposal_id), ())) > 1:
                return (f"Fill.agent_id: null, but decision {fill.decision_id!r} funded proposal_id "
                        f"{fill.proposal_id!r} for several agents; the fill must name one")  # fmt: skip
            return (f"Fill.decision_id/agent_id/proposal_id: ({fill.decision_id!r}, {fill.agent_id!r}, "
                    f"{fill.proposal_id!r}) is not an allocation a committed decision funded")  # fmt: skip
        if self.config.fill_rules >= 2 and allocation.closed:
            return (f"Fill.status: the allocation ({fill.decision_id!r}, {agent!r}, {fill.proposal_id!r}) was ended "
                    "by a FILLED, FAILED or REJECTED report; it takes no more")  # fmt: skip
        if (fill.market_id, fill.side) != (allocation.market_id, allocation.side):
            return (f"Fill.market_id/side: {fill.market_id!r} {fill.side.name} is not the allocation's "
                    f"{allocation.market_id!r} {allocation.side.name}")  # fmt: skip
        moves = fill.filled_size if fill.status in (FillStatus.FILLED, FillStatus.PARTIAL) else 0.0
        if self.config.fill_rules >= 3:
            # A report says what was executed: a final failure executed nothing, a FILLED one something. A zero-size
            # FILLED counted as a success and ended the allocation, so the real FAILED after it was refused and the
            # failure window never saw it; a FAILED of 50 dropped the 50 it said were executed.
            if fill.status in (FillStatus.FAILED, FillStatus.REJECTED) and fill.filled_size > 0:
                return (f"Fill.filled_size: {fill.filled_size!r} on a {fill.status.value} report, which executes "
                        "nothing: what was filled is reported as PARTIAL first")  # fmt: skip
            if fill.status is FillStatus.FILLED and allocation.filled + fill.filled_size <= 0.0:
                return ("Fill.filled_size: a FILLED report of nothing (0, and nothing filled before it): an allocation "
                        "that did not execute is reported FAILED or REJECTED")  # fmt: skip
            if not 0 <= fill.time <= MAX_FILL_TIME_MS:
                return f"Fill.time: {fill.time!r} is not milliseconds since the epoch in [0, 2**62]"
        if allocation.filled + moves > allocation.size * (1 + 1e-9):
            return (f"Fill.filled_size: {fill.filled_size!r} after {allocation.filled!r} already filled exceeds the "
                    f"funded size {allocation.size!r}")  # fmt: skip
        limit = self.config.max_fee_rate * moves
        if fill.fee > limit:
            return f"Fill.fee: {fill.fee!r} exceeds max_fee_rate {self.config.max_fee_rate:g} x filled size = {limit!r}"
        # At most max_fill_price_improvement below the limit; a worse price buys fewer contracts and only lowers equity.
        improvement = self.config.max_fill_price_improvement
        if improvement < 1.0 and moves > 0 and allocation.limit_price is not None:
            floor = allocation.limit_price * (1.0 - improvement)
            if fill.price < floor:
                return (f"Fill.price: {fill.price!r} is more than {improvement:.0%} below the allocation's limit price "
                        f"{allocation.limit_price!r} (max_fill_price_improvement; at least {floor!r}): it would buy "
                        f"{fill.filled_size / fill.price:.6g} contracts for {fill.filled_size!r}")  # fmt: skip
        return None

    def resolved_refusal(self, event: Event) -> str | None:
        """Why a fill, mark or resolution of a market that has resolved may not count (`fill_rules` 2), or None. A
        fill there was valued at cost, hiding its loss from the kill switch; a mark revalued nothing real; a second
        resolution paid out again."""
        if self.config.fill_rules < 2 or not isinstance(event, Fill | PnlMark | MarketResolution):
            return None
        if event.market_id not in self.resolved:
            return None
        if (
            self.config.fill_rules >= 3
            and isinstance(event, Fill)
            and event.status in (FillStatus.FAILED, FillStatus.REJECTED)
            and event.filled_size == 0.0
        ):
            return None  # it trades nothing: it only ends its allocation and releases the reservation
        kind = type(event).__name__
        return f"{kind}.market_id: {event.market_id!r} has resolved; nothing is traded, marked or resolved there again"

    def fill_id_refusal(self, fill: Fill) -> str | None:
        """Why a fill's id may not count (`fill_rules` 2, rules.md §11.1), or None; the id is taken either way (the
        caller asks once per fill report, before any other check), so the projection's one row per id is the book's.
        From `fill_rules` 3 an empty id is refused, and taken by nothing."""
        rules = self.config.fill_rules
        if rules < 2:
            return None
        if rules >= 3 and not fill.fill_id:
            return "Fill.fill_id: empty; every report needs an id of its own"
        if fill.fill_id in self.fill_ids:
            shown = fill.fill_id if len(fill.fill_id) <= 64 else f"{fill.fill_id[:64]}..."
            if rules >= 3:
                return (f"Fill.fill_id: {shown!r} was taken by an earlier report, accepted or refused (a repeated id "
                        "is the same report delivered again; a new report needs a new, unguessable id: "
                        "docs/security.md)")  # fmt: skip
            return (f"Fill.fill_id: {shown!r} was reported already (a repeated id is the same report delivered "
                    "again; a new report needs a new id)")  # fmt: skip
        if len(fill.fill_id) <= MAX_ID_LENGTH:  # a longer one is refused by the bounds, and never taken
            self.fill_ids.add(fill.fill_id)
        return None

    def _allocation_of(self, fill: Fill) -> tuple[str | None, Funded | None]:
        """The agent and the funded allocation `fill` reports on, if a committed decision funded one. A fill with
        no agent id (written before Fill version 2) names the allocation of its proposal id only when the decision
        funded that id for one agent."""
        by_agent = self.funded.get((fill.decision_id, fill.proposal_id))
        if not by_agent:
            return fill.agent_id, None
        if fill.agent_id is not None:
            return fill.agent_id, by_agent.get(fill.agent_id)
        if len(by_agent) == 1:
            ((agent, allocation),) = by_agent.items()
            return agent, allocation
        return None, None

    def _on_fill(self, fill: Fill) -> tuple[GovernorChange, ...]:
        agent, allocation = self._allocation_of(fill)
        reservation = (
            self.reservations.pop((fill.decision_id, agent, fill.proposal_id), None) if agent is not None else None
        )
        if allocation is not None and fill.status in (FillStatus.FILLED, FillStatus.PARTIAL):
            allocation.filled += fill.filled_size
        if allocation is not None and self.config.fill_rules >= 2 and not self.legacy_fills:
            # A partial fill keeps what is left of the allocation reserved: releasing it all let new allocations
            # spend that capital and cap room while the rest could still be filled (a cap went to twice its size).
            # FILLED, FAILED and REJECTED end the allocation.
            allocation.closed = fill.status is not FillStatus.PARTIAL
            left = allocation.size - allocation.filled
            if reservation is not None and not allocation.closed and left > 0:
                self.reservations[reservation.key] = replace(reservation, size=left)
        self.markets.add(fill.market_id)
        changes: list[GovernorChange] = []
        if fill.filled_size > 0 and fill.status in (FillStatus.FILLED, FillStatus.PARTIAL) and 0 < fill.price < 1:
            key = (
                reservation.correlation_key
                if reservation
                else self.keys.get((agent or "", fill.proposal_id), fill.market_id)
            )
            holding = self.holdings.get((fill.market_id, fill.side))
            if holding is None:
                holding = Holding(fill.market_id, fill.side, 0.0, 0.0, key)
                self.holdings[(fill.market_id, fill.side)] = holding
            holding.contracts += fill.filled_size / fill.price
            holding.cost += fill.filled_size
            self._revalue((fill.market_id, fill.side))
            self.cash -= fill.filled_size
        if math.isfinite(fill.fee):
            self.cash -= fill.fee
        if self._counts_in_window(allocation, fill):
            failed = fill.status in (FillStatus.FAILED, FillStatus.REJECTED) or self._fell_short(allocation, fill)
            self.governor, report_changes = on_execution_report(self.governor, failed, self.limits)
            changes += report_changes
        changes += self._equity_changed()
        return tuple(changes)

    def _fell_short(self, allocation: Funded | None, fill: Fill) -> bool:
        """Whether a FILLED report ends its allocation filled below the proposal's min size, which
        `failure_report_rules` 3 counts as a failed execution (rules.md §7.4): the smallest size worth trading was
        not reached, and a FILLED report of next to nothing cannot stand in for the FAILED one."""
        if self.config.failure_report_rules < 3 or allocation is None or fill.status is not FillStatus.FILLED:
            return False
        return allocation.filled < allocation.min_fill * (1.0 - 1e-9)

    def _counts_in_window(self, allocation: Funded | None, fill: Fill) -> bool:
        """Whether an execution report on `allocation` counts in the failure window (rules.md §7.4): only its first
        `failure_reports_per_allocation` do, so one executor writing the same FAILED report again cannot pause the
        book, nor zero-size FILLED reports dilute real failures; under `failure_report_rules` 2 a PARTIAL report
        never does (the execution is not over), so an interim report cannot take the place of the final FAILED one.
        0 counts every report (books recorded before the key), and so does a fill trusted without an allocation
        (batches of Decision version 1)."""
        cap = self.config.failure_reports_per_allocation
        partial = fill.status is FillStatus.PARTIAL and not self.legacy_fills
        if allocation is not None and partial and self.config.failure_report_rules >= 2:
            return False
        if cap == 0 or allocation is None:
            return True
        if allocation.reports >= cap:
            return False
        allocation.reports += 1
        return True

    def _on_resolution(self, resolution: MarketResolution) -> tuple[GovernorChange, ...]:
        self.resolved.add(resolution.market_id)
        for side in _SIDES:
            holding = self.holdings.pop((resolution.market_id, side), None)
            if holding is None:
                continue
            self._revalue((resolution.market_id, side))
            if resolution.outcome is Outcome.VOID:
                self.cash += holding.cost
            elif (resolution.outcome is Outcome.YES) == (side is Side.BUY):
                self.cash += holding.contracts
        self.marks.pop(resolution.market_id, None)
        return self._equity_changed()

    def _on_command(self, command: ControlCommand) -> tuple[GovernorChange, ...]:
        refused = self._book_refusal(command) or operator_refusal(command, self.config.operator_keys)
        if refused is None and self.config.operator_keys:
            if command.command_id in self.commands:
                refused = f"replayed: command_id {command.command_id!r} was already taken by a signed command"
            else:
                self.commands.add(command.command_id)
        if refused is not None:
            return (self._operator_event(f"{command.command.value} {command.command_id} by {command.operator_id} "
                                         f"rejected, nothing changed: {refused}"),)  # fmt: skip
        if command.command is Command.SET_LIMITS:
            return self._set_limits(command)
        if command.command is Command.RESET_KILL_SWITCH and self.config.kill_switch_reset_quorum > 1:
            waiting = self._await_second_reset(command)
            if waiting is not None:
                return (waiting,)
        self.governor, changes = on_command(self.governor, command.command, command.reason, command.operator_id)
        return changes

    def _book_refusal(self, command: ControlCommand) -> str | None:
        """Why a book with an operator keyring refuses a command as not its own (rules.md §11.3), or None: it names
        another book, or, with `operator_commands_name_book`, none (signed before commands named their book, it
        would verify on every book that shares the keys). A book without a keyring authenticates nothing, so it
        takes any command on its control topic, as before."""
        if not self.config.operator_keys:
            return None
        if command.book is None:
            if self.config.operator_commands_name_book:
                return "it names no book (ControlCommand.book), and this book's commands must name it"
            return None
        if self.book is not None and command.book != self.book:
            return f"it is for book {command.book!r}, not this book {self.book!r}"
        return None

    def _operator_event(self, cause: str) -> GovernorChange:
        state = self.governor.state.value
        return GovernorChange(Governor.OPERATOR, state, state, cause)

    def _await_second_reset(self, command: ControlCommand) -> GovernorChange | None:
        """The two-person rule (rules.md §7.1): None when this signed reset completes the quorum, else the event
        saying it awaits a second key. Only a tripped kill switch collects votes."""
        if not self.governor.kill_switch_tripped:
            self.reset_vote = None
            return None
        key_id = command.key_id or ""
        window_ms = round(self.config.kill_switch_reset_window_s * 1000)
        first = self.reset_vote
        if first is not None and first[0] != key_id and self.last_time - first[1] <= window_ms:
            self.reset_vote = None
            return None
        if first is not None and first[0] == key_id and self.last_time - first[1] <= window_ms:
            cause = f"RESET_KILL_SWITCH {command.command_id} by {command.operator_id}: key {key_id} already signed"
            return self._operator_event(f"{cause} a reset; it awaits a second operator key")
        self.reset_vote = (key_id, self.last_time)
        return self._operator_event(
            f"RESET_KILL_SWITCH {command.command_id} by {command.operator_id} (key {key_id}) recorded: it awaits a "
            f"second operator key within {self.config.kill_switch_reset_window_s:g} s"
        )

    def _set_limits(self, command: ControlCommand) -> tuple[GovernorChange, ...]:
        """rules.md §7: validated exactly as the configuration file; any bad key and nothing changes, with an event
        naming it."""
        try:
            check_configuration_only(command.limits or {})
            config = self.config.with_limits(command.limits or {})
        except ConfigError as exc:
            state = self.governor.state.value
            cause = f"SET_LIMITS {command.command_id} by {command.operator_id} rejected, limits unchanged: {exc}"
            return (GovernorChange(Governor.OPERATOR, state, state, cause),)
        self.config = config
        self.limits = config.governor_limits()
        return ()

    def _equity_changed(self) -> tuple[GovernorChange, ...]:
        self.governor, changes = on_equity(self.governor, self.equity, self.limits)
        return changes

    def expire_reservations(self, now_ms: int, timeout_ms: int) -> list[Reservation]:
        """Release reservations whose fill never came within `timeout_ms` of their decision (log time)."""
        stale = [r for r in self.reservations.values() if now_ms - r.decided_at > timeout_ms]
        for r in stale:
            del self.reservations[r.key]
        return stale
