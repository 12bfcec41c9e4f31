"""Typed, frozen event classes that mirror the Avro records in this folder, field for field."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        """+1 for BUY, -1 for SELL: the sign of the exposure a trade adds to its market."""
        return 1 if self is Side.BUY else -1


class FillStatus(StrEnum):
    FILLED = "FILLED"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"
    REJECTED = "REJECTED"


class Outcome(StrEnum):
    YES = "YES"
    NO = "NO"
    VOID = "VOID"


class GovernorState(StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    HALTED = "HALTED"


class SolverPath(StrEnum):
    MIP_OPTIMAL = "MIP_OPTIMAL"
    MIP_TIME_LIMIT = "MIP_TIME_LIMIT"
    PRIORITY_FALLBACK = "PRIORITY_FALLBACK"
    NOT_RUN = "NOT_RUN"
    MIP_WORK_LIMIT = "MIP_WORK_LIMIT"


class AllocationStatus(StrEnum):
    FUNDED = "FUNDED"
    CUT = "CUT"
    REJECTED = "REJECTED"
    NETTED = "NETTED"
    DEFERRED = "DEFERRED"
    EXPIRED = "EXPIRED"


class ReasonCode(StrEnum):
    INVALID_FIELD = "INVALID_FIELD"
    DUPLICATE = "DUPLICATE"
    UNKNOWN_AGENT = "UNKNOWN_AGENT"
    EXPIRED = "EXPIRED"
    POSITION_CAP = "POSITION_CAP"
    MARKET_CAP = "MARKET_CAP"
    GROUP_CAP = "GROUP_CAP"
    BELOW_MIN_AFTER_NETTING = "BELOW_MIN_AFTER_NETTING"
    KILL_SWITCH = "KILL_SWITCH"
    PAUSED = "PAUSED"
    CAPITAL = "CAPITAL"
    CVAR_LIMIT = "CVAR_LIMIT"
    SOLVER_BUDGET = "SOLVER_BUDGET"
    UNAUTHORIZED = "UNAUTHORIZED"


class Governor(StrEnum):
    KILL_SWITCH = "KILL_SWITCH"
    FAILURE_RATE = "FAILURE_RATE"
    SOLVER_TIMEOUT = "SOLVER_TIMEOUT"
    OPERATOR = "OPERATOR"


class Command(StrEnum):
    HALT = "HALT"
    RESUME = "RESUME"
    RESET_KILL_SWITCH = "RESET_KILL_SWITCH"
    SET_LIMITS = "SET_LIMITS"


@dataclass(frozen=True, slots=True)
class Proposal:
    proposal_id: str
    agent_id: str
    strategy_tag: str
    market_id: str
    side: Side
    price: float | None
    expected_profit: float
    confidence: float
    requested_size: float
    min_size: float
    execution_risk: float
    urgency: float
    correlation_key: str
    created_at: int


# A proposal's identity: (agent_id, proposal_id). Proposal ids are unique per agent, not across agents (rules.md
# §2.2): two agents may both send "p-1" and each is decided on its own.
ProposalKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Fill:
    fill_id: str
    decision_id: str
    proposal_id: str
    market_id: str
    side: Side
    requested_size: float
    filled_size: float
    price: float
    fee: float
    status: FillStatus
    reason: str | None
    time: int
    agent_id: str | None = None  # the allocation's agent; None in fills written before Fill version 2


@dataclass(frozen=True, slots=True)
class PnlMark:
    market_id: str
    mark_price: float
    time: int


@dataclass(frozen=True, slots=True)
class MarketResolution:
    market_id: str
    outcome: Outcome
    time: int


@dataclass(frozen=True, slots=True)
class InputPosition:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Reason:
    code: ReasonCode
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Allocation:
    proposal_id: str
    agent_id: str
    market_id: str
    side: Side | None
    size: float
    netted_size: float
    status: AllocationStatus
    reasons: tuple[Reason, ...]


@dataclass(frozen=True, slots=True)
class Order:
    market_id: str
    side: Side
    size: float


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    book_id: str
    cycle: int
    decided_at: int
    inputs: tuple[InputPosition, ...]
    config_version: str
    config_hash: str
    scenario_seed: int
    governor_state: GovernorState
    opportunity_window_ms: int
    equity: float
    available: float
    high_water_mark: float
    solver_path: SolverPath
    solve_ms: float
    objective: float
    gap: float | None
    allocations: tuple[Allocation, ...]
    orders: tuple[Order, ...]
    work_used: int = 0
    config: str | None = None
    previous_hash: str | None = None
    key_id: str | None = None
    signature: bytes | None = None


@dataclass(frozen=True, slots=True)
class GovernorEvent:
    event_id: str
    book_id: str
    governor: Governor
    old_state: str
    new_state: str
    cause: str
    measured: float | None
    limit: float | None
    source: str | None
    time: int


@dataclass(frozen=True, slots=True)
class ControlCommand:
    command_id: str
    operator_id: str
    command: Command
    reason: str
    limits: dict[str, float] | None
    time: int
    # The book the command is for, `<topic prefix>.<book id>` (version 3; None in older commands): signed with it.
    book: str | None = None
    key_id: str | None = None
    signature: bytes | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    error: str
    payload: bytes | None
    time: int


Event = Proposal | Fill | PnlMark | MarketResolution | Decision | GovernorEvent | ControlCommand | DeadLetter

EVENT_TYPES: tuple[type[Event], ...] = (
    Proposal,
    Fill,
    PnlMark,
    MarketResolution,
    Decision,
    GovernorEvent,
    ControlCommand,
    DeadLetter,
)
"""Every top-level record on the log; each has a schema file `<ClassName>.avsc` beside this module."""
