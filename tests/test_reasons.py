"""Every proposal the allocator does not fund in full says why (rules.md §4, §5): also after a cut-short solve."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import AllocationStatus
from tests.test_cycle import books, decide, proposal

NEEDS_A_REASON = (AllocationStatus.CUT, AllocationStatus.DEFERRED, AllocationStatus.REJECTED)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    book=books(),
    # A tiny work budget or time limit cuts the solve short; a generous one lets it finish.
    limits=st.sampled_from([{}, {"solver_work_limit": 1}, {"solver_work_limit": 50}, {"solver_time_limit_ms": 0.01}]),
)
def test_every_cut_deferred_or_rejected_allocation_names_a_reason(book: dict[str, Any], limits: dict[str, Any]) -> None:
    book["config"] = {**book["config"], **limits}
    decision = decide(book).decision
    for a in decision.allocations:
        if a.status in NEEDS_A_REASON:
            assert a.reasons, (a, decision.solver_path)
            assert all(r.detail for r in a.reasons if r.code.value in ("CAPITAL", "GROUP_CAP", "MARKET_CAP"))


def test_a_proposal_not_chosen_by_a_cut_short_solve_says_so() -> None:
    # Six bets with room for all (capital, caps, CVaR loose) and a work budget that stops after the priority
    # greedy: whatever it leaves unfunded is blocked by no constraint, and the reason says the solve stopped.
    bets = [proposal(f"p{i}", expected_profit=0.01 + 0.001 * i, urgency=0.1 + i) for i in range(6)]
    out = decide({"proposals": bets, "config": {"cvar_limit": 1.0, "solver_work_limit": 1}})
    assert out.solution is not None and out.solution.work_limited and out.solution.work_used >= 1
    for a in out.decision.allocations:
        assert a.status is AllocationStatus.FUNDED or a.reasons, a
