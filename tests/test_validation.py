"""rules.md §2 and §3 at their boundaries: each invalid field named, expiry exactly at the lifetime, priority."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocator.engine.validation import InvalidProposal, is_expired, parse_proposal, priority, validate
from schemas.events import Proposal, ReasonCode, Side


def raw(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "proposal_id": "p-1",
        "agent_id": "alpha",
        "strategy_tag": "arb",
        "market_id": "m-1",
        "side": "BUY",
        "price": 0.4,
        "expected_profit": 0.04,
        "confidence": 0.9,
        "requested_size": 1000.0,
        "min_size": 100.0,
        "execution_risk": 0.05,
        "urgency": 0.1,
        "correlation_key": "k",
        "created_at": 1_790_000_000_000,
    }
    base.update(overrides)
    return base


def details(result: object) -> list[str]:
    assert isinstance(result, InvalidProposal), result
    assert all(r.code is ReasonCode.INVALID_FIELD for r in result.reasons)
    return [r.detail or "" for r in result.reasons]


def test_a_well_formed_proposal_parses() -> None:
    p = parse_proposal(raw(), "x")
    assert isinstance(p, Proposal)
    assert p.side is Side.BUY and p.requested_size == 1000.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("proposal_id", ""),
        ("proposal_id", "x" * 129),
        ("agent_id", 7),
        ("market_id", ""),
        ("side", "HOLD"),
        ("price", 0.0),
        ("price", 1.0),
        ("price", math.nan),
        ("expected_profit", 0.0),
        ("expected_profit", -0.01),
        ("expected_profit", math.inf),
        ("expected_profit", math.nan),
        ("confidence", 0.0),
        ("confidence", 1.0000001),
        ("requested_size", 0.0),
        ("requested_size", -math.inf),
        ("min_size", 0.0),
        ("min_size", 1000.01),
        ("execution_risk", 1.0),
        ("execution_risk", -0.1),
        ("urgency", 0.0),
        ("urgency", math.nan),
        ("created_at", -1),
        ("created_at", 1.5),
        ("created_at", True),
        ("correlation_key", None),
    ],
)
def test_each_invalid_field_is_rejected_with_its_name(field: str, value: Any) -> None:
    problems = details(parse_proposal(raw(**{field: value}), "x"))
    assert any(d.startswith(f"{field}:") for d in problems), problems


@pytest.mark.parametrize(
    ("field", "value"),
    [("confidence", 1.0), ("execution_risk", 0.0), ("min_size", 1000.0), ("price", None), ("strategy_tag", "")],
)
def test_boundary_values_that_are_allowed(field: str, value: Any) -> None:
    assert isinstance(parse_proposal(raw(**{field: value}), "x"), Proposal)


def test_missing_and_unknown_fields_are_named() -> None:
    data = raw(colour="red")
    del data["urgency"]
    problems = details(parse_proposal(data, "proposals[3]"))
    assert "urgency: is missing" in problems
    assert "colour: is not a field of Proposal" in problems


def test_a_proposal_without_a_usable_id_is_named_by_its_place() -> None:
    result = parse_proposal(raw(proposal_id=None), "proposals[3]")
    assert isinstance(result, InvalidProposal) and result.proposal_id == "proposals[3]"


def test_decoded_proposals_are_range_checked_too() -> None:
    bad = Proposal("p", "a", "s", "m", Side.SELL, 0.5, math.nan, 0.9, 10.0, 1.0, 0.1, 1.0, "k", 0)
    assert any(d.startswith("expected_profit:") for d in details(validate(bad)))
    good = Proposal("p", "a", "s", "m", Side.SELL, 0.5, 0.02, 0.9, 10.0, 1.0, 0.1, 1.0, "k", 0)
    assert validate(good) is good


def test_expiry_is_at_the_lifetime_exactly() -> None:
    p = parse_proposal(raw(urgency=0.5, created_at=1_000), "x")  # 1/urgency = 2 s
    assert isinstance(p, Proposal)
    assert not is_expired(p, 3_000, opportunity_window_ms=300_000)
    assert is_expired(p, 3_001, opportunity_window_ms=300_000)
    # the opportunity window shortens it when smaller
    assert is_expired(p, 2_001, opportunity_window_ms=1_000)
    assert not is_expired(p, 2_000, opportunity_window_ms=1_000)


def test_priority_formula() -> None:
    p = parse_proposal(raw(expected_profit=0.05, confidence=0.8, execution_risk=0.2, urgency=0.5), "x")
    assert isinstance(p, Proposal)
    assert priority(p) == pytest.approx(0.05 * 0.8 / (0.2 * (1 + 2.0)))
    floor = parse_proposal(raw(execution_risk=0.0), "x")
    at_floor = parse_proposal(raw(execution_risk=0.01), "x")
    assert isinstance(floor, Proposal) and isinstance(at_floor, Proposal)
    assert priority(floor) == priority(at_floor)  # execution risk is floored at 1%


@given(st.floats(0.01, 10.0), st.floats(0.01, 10.0))
def test_more_urgency_never_lowers_priority(u1: float, u2: float) -> None:
    a, b = parse_proposal(raw(urgency=min(u1, u2)), "x"), parse_proposal(raw(urgency=max(u1, u2)), "x")
    assert isinstance(a, Proposal) and isinstance(b, Proposal)
    assert priority(b) >= priority(a)
