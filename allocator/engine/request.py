"""What one cycle decides on: the book as the fold saw it, the governor state, the submitted proposals, the
configuration in force, and scenarios when the caller supplies them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from allocator.engine.validation import Submitted
from book.config import AllocatorConfig
from book.portfolio import Portfolio
from schemas.events import GovernorState, InputPosition


@dataclass(frozen=True)
class SuppliedScenarios:
    """Scenario returns given by the caller instead of the default risk model (rules.md §8, last sentence)."""

    returns: Mapping[str, tuple[float, ...]]
    book_losses: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.book_losses)


@dataclass(frozen=True)
class CycleRequest:
    decision_id: str
    book_id: str
    cycle: int
    as_of: int
    portfolio: Portfolio
    governor_state: GovernorState
    window_ms: int
    submitted: tuple[Submitted, ...]
    config: AllocatorConfig
    governor_reason: str | None = None
    inputs: tuple[InputPosition, ...] = ()
    scenarios: SuppliedScenarios | None = None
    resolved_markets: frozenset[str] = frozenset()
    received_at: Mapping[str, int] = field(
        default_factory=dict
    )  # proposal id -> log time received (rules.md §1.5)  # markets the log says have resolved: nothing left to trade
