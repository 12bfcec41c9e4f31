"""What one cycle decides on: the book as the fold saw it, the governor state, the submitted proposals, the
configuration in force, and scenarios when the caller supplies them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from allocator.engine.validation import Submitted
from book.config import AllocatorConfig
from book.portfolio import Portfolio
from schemas.events import GovernorState, InputPosition, ProposalKey


@dataclass(frozen=True)
class SuppliedScenarios:
    """Scenario returns given by the caller instead of the default risk model (rules.md §8, last sentence),
    keyed by proposal id, or by "agent_id/proposal_id" where two agents use one proposal id."""

    returns: Mapping[str, tuple[float, ...]]
    book_losses: tuple[float, ...]

    def returns_of(self, agent_id: str, proposal_id: str) -> tuple[float, ...]:
        """One proposal's returns: under "agent_id/proposal_id" if given so, else under its proposal id."""
        found = self.returns.get(f"{agent_id}/{proposal_id}")
        return found if found is not None else self.returns.get(proposal_id, ())

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
    # markets the log says have resolved: nothing left to trade (above); (agent id, proposal id) -> the log time
    # each pending proposal was received (rules.md §1.5)
    received_at: Mapping[ProposalKey, int] = field(default_factory=dict)
