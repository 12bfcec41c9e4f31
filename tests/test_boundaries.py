"""Every constraint of rules.md §4 at exact equality, through `run_cycle`: a min size that fits exactly is fundable."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.events import AllocationStatus, ReasonCode, SolverPath
from tests.test_cycle import by_id, codes, decide, proposal

LOOSE = {"cvar_limit": 1.0}  # CVaR far from binding unless a test says otherwise


def _pair(**shared: Any) -> list[dict[str, Any]]:
    """`a` asks for 2,000 (all or nothing), `b` for 1,500 with a min of 1,000: together at least 3,000."""
    return [
        proposal("a", requested_size=2_000.0, min_size=2_000.0, expected_profit=0.08, **shared),
        proposal("b", requested_size=1_500.0, min_size=1_000.0, expected_profit=0.08, **shared),
    ]


def _assert_both_fit_exactly(snapshot: dict[str, Any], code: ReasonCode) -> None:
    out = decide(snapshot)
    a, b = by_id(out)["a"], by_id(out)["b"]
    assert (a.status, a.size) == (AllocationStatus.FUNDED, 2_000.0)
    assert (b.status, b.size) == (AllocationStatus.CUT, 1_000.0), (b, out.decision.solver_path)
    assert code in codes(b)
    assert out.decision.solver_path is SolverPath.MIP_OPTIMAL


def test_a_min_size_that_fits_exactly_in_the_capital_left_is_funded() -> None:
    # The case: available 3,000, one proposal funded at 2,000, another with min 1,000. It used to be
    # DEFERRED with no reason while the decision claimed MIP_OPTIMAL (the solvers kept a slack below capital).
    _assert_both_fit_exactly({"available": 3_000.0, "proposals": _pair(), "config": LOOSE}, ReasonCode.CAPITAL)
    exact = decide(
        {
            "available": 3_000.0,
            "proposals": [
                proposal("a", requested_size=2_000.0, min_size=2_000.0),
                proposal("b", requested_size=1_000.0, min_size=1_000.0),
            ],
            "config": LOOSE,
        }
    )
    funded = [(a.status, a.size) for a in exact.decision.allocations]
    assert funded == [(AllocationStatus.FUNDED, 2_000.0), (AllocationStatus.FUNDED, 1_000.0)]


def test_a_min_size_equal_to_the_position_cap_is_funded_at_the_cap() -> None:
    out = decide({"proposals": [proposal("a", requested_size=5_000.0, min_size=2_000.0)], "config": LOOSE})
    a = by_id(out)["a"]
    assert (a.status, a.size, codes(a)) == (AllocationStatus.CUT, 2_000.0, [ReasonCode.POSITION_CAP])


def test_a_min_size_that_fits_exactly_in_the_market_cap_is_funded() -> None:
    # Market cap 10,000; 7,000 held long: 3,000 of room for the two buys together.
    held = [{"market_id": "m", "side": "BUY", "size": 7_000.0, "price": 0.5, "correlation_key": "h"}]
    snapshot = {"positions": held, "proposals": _pair(market_id="m"), "config": {**LOOSE, "group_cap": 1.0}}
    _assert_both_fit_exactly(snapshot, ReasonCode.MARKET_CAP)


def test_a_min_size_that_fits_exactly_in_the_group_cap_is_funded() -> None:
    snapshot = {"proposals": _pair(correlation_key="g"), "config": {**LOOSE, "group_caps": {"g": 3_000.0}}}
    _assert_both_fit_exactly(snapshot, ReasonCode.GROUP_CAP)


@pytest.mark.parametrize("market", ["same", "separate"])
def test_a_min_size_that_fits_exactly_in_the_cvar_limit_is_funded(market: str) -> None:
    # Twenty scenarios at alpha 0.95: the tail is the single worst one. Both bets lose their whole stake in
    # scenario 0 and gain elsewhere, so the CVaR is exactly the sum of the sizes; the limit is 3% of 100,000.
    assert 0.03 * 100_000.0 == 3_000.0
    returns = [-1.0] + [0.5] * 19
    shared = {"price": None, "market_id": "m"} if market == "same" else {"price": None}
    snapshot = {
        "proposals": _pair(**shared),
        "scenarios": {"returns": {"a": returns, "b": returns}},
        "config": {"cvar_limit": 0.03, "cvar_alpha": 0.95},
    }
    _assert_both_fit_exactly(snapshot, ReasonCode.CVAR_LIMIT)
