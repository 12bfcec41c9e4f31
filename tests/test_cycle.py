"""One cycle, end to end through the pure core: every rule at its boundary, and properties over random books."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocator.engine.cycle import CycleOutcome, run_cycle
from allocator.service.snapshot import load_snapshot, parse_snapshot
from cli.main import main
from schemas.events import Allocation, AllocationStatus, GovernorState, ReasonCode, SolverPath

ROOT = Path(__file__).resolve().parent.parent
AS_OF = 1_790_000_000_000
SMALL = {"scenario_count": 400}  # keeps the unit tests fast; the rules do not depend on S


def proposal(pid: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "proposal_id": pid,
        "agent_id": "alpha",
        "strategy_tag": "test",
        "market_id": f"m-{pid}",
        "side": "BUY",
        "price": 0.5,
        "expected_profit": 0.04,
        "confidence": 0.9,
        "requested_size": 500.0,
        "min_size": 100.0,
        "execution_risk": 0.05,
        "urgency": 0.1,
        "correlation_key": f"k-{pid}",
        "created_at": AS_OF - 1_000,
    }
    base.update(overrides)
    return base


def decide(snapshot: dict[str, Any]) -> CycleOutcome:
    data = {"as_of": AS_OF, "equity": 100_000.0, **snapshot}
    data["config"] = {**SMALL, **data.get("config", {})}
    return run_cycle(parse_snapshot(data, "test-decision"))


def by_id(outcome: CycleOutcome) -> dict[str, Allocation]:
    return {a.proposal_id: a for a in outcome.decision.allocations}


def codes(a: Allocation) -> list[ReasonCode]:
    return [r.code for r in a.reasons]


# --- governors -------------------------------------------------------------------------------------------


def test_drawdown_of_exactly_fifteen_percent_halts_and_rejects_everything() -> None:
    out = decide({"equity": 85_000.0, "high_water_mark": 100_000.0, "proposals": [proposal("a"), proposal("b")]})
    assert out.decision.governor_state is GovernorState.HALTED
    assert out.decision.solver_path is SolverPath.NOT_RUN and out.decision.orders == ()
    for a in out.decision.allocations:
        assert (a.status, codes(a), a.size) == (AllocationStatus.REJECTED, [ReasonCode.KILL_SWITCH], 0.0)


def test_drawdown_just_below_fifteen_percent_still_allocates() -> None:
    out = decide({"equity": 85_001.0, "high_water_mark": 100_000.0, "proposals": [proposal("a")]})
    assert out.decision.governor_state is GovernorState.ACTIVE
    assert by_id(out)["a"].status is AllocationStatus.FUNDED


@pytest.mark.parametrize(
    ("reports", "failures", "state"),
    [(50, 15, GovernorState.ACTIVE), (50, 16, GovernorState.PAUSED), (19, 19, GovernorState.ACTIVE)],
    ids=["exactly-30%", "just-above", "too-few-reports"],
)
def test_failure_rate_pause(reports: int, failures: int, state: GovernorState) -> None:
    out = decide({"executions": {"reports": reports, "failures": failures}, "proposals": [proposal("a")]})
    assert out.decision.governor_state is state
    a = by_id(out)["a"]
    if state is GovernorState.PAUSED:
        assert (a.status, codes(a)) == (AllocationStatus.DEFERRED, [ReasonCode.PAUSED])
    else:
        assert a.status is AllocationStatus.FUNDED


def test_halted_outranks_paused() -> None:
    out = decide(
        {
            "equity": 80_000.0,
            "high_water_mark": 100_000.0,
            "executions": {"reports": 50, "failures": 50},
            "proposals": [proposal("a")],
        }
    )
    assert out.decision.governor_state is GovernorState.HALTED


# --- caps ------------------------------------------------------------------------------------------------


def test_position_cap_cuts_to_two_percent_of_equity() -> None:
    out = decide({"proposals": [proposal("a", requested_size=5_000.0, min_size=100.0)]})
    a = by_id(out)["a"]
    assert (a.status, a.size, codes(a)) == (AllocationStatus.CUT, 2_000.0, [ReasonCode.POSITION_CAP])


def test_a_cap_below_the_min_size_rejects_with_that_cap() -> None:
    out = decide({"proposals": [proposal("a", requested_size=5_000.0, min_size=2_000.01)]})
    assert codes(by_id(out)["a"]) == [ReasonCode.POSITION_CAP]
    assert by_id(out)["a"].status is AllocationStatus.REJECTED


def test_market_cap_counts_held_exposure_and_a_reducing_trade_always_has_room() -> None:
    held = [{"market_id": "m", "side": "BUY", "size": 9_900.0, "price": 0.5, "correlation_key": "k"}]
    buy = proposal("buy", market_id="m", correlation_key="k2", min_size=150.0)
    out = decide({"positions": held, "proposals": [buy]})
    assert (by_id(out)["buy"].status, codes(by_id(out)["buy"])) == (AllocationStatus.REJECTED, [ReasonCode.MARKET_CAP])
    breached = [{"market_id": "m", "side": "BUY", "size": 12_000.0, "price": 0.5, "correlation_key": "k"}]
    sell = proposal("sell", market_id="m", side="SELL", correlation_key="k2")
    out = decide({"positions": breached, "proposals": [sell], "config": {"group_cap": 0.5, "cvar_limit": 0.5}})
    assert by_id(out)["sell"].status is AllocationStatus.FUNDED


def test_group_cap_binds_across_markets_sharing_a_key() -> None:
    bets = [proposal(f"s{i}", correlation_key="election", requested_size=2_000.0, min_size=500.0) for i in range(4)]
    out = decide({"proposals": bets, "config": {"cvar_limit": 1.0}})
    funded = sum(a.size for a in out.decision.allocations)
    assert funded == pytest.approx(5_000.0)  # 5% of equity, although 8,000 was asked for
    assert any(ReasonCode.GROUP_CAP in codes(a) for a in out.decision.allocations)


def test_configured_group_cap_overrides_the_default() -> None:
    bets = [proposal(f"s{i}", correlation_key="election", requested_size=2_000.0, min_size=500.0) for i in range(4)]
    out = decide({"proposals": bets, "config": {"cvar_limit": 1.0, "group_caps": {"election": 1_000.0}}})
    assert sum(a.size for a in out.decision.allocations) == pytest.approx(1_000.0)


def test_capital_is_shared_and_the_binding_constraint_is_named() -> None:
    bets = [proposal(f"p{i}", requested_size=1_000.0, min_size=1_000.0) for i in range(5)]
    out = decide({"available": 2_500.0, "proposals": bets, "config": {"cvar_limit": 1.0}})
    statuses = sorted(a.status for a in out.decision.allocations)
    assert statuses.count(AllocationStatus.FUNDED) == 2
    deferred = [a for a in out.decision.allocations if a.status is AllocationStatus.DEFERRED]
    assert len(deferred) == 3 and all(ReasonCode.CAPITAL in codes(a) for a in deferred)


# --- netting, expiry, duplicates, agents -----------------------------------------------------------------


def test_netting_then_the_residual_is_sized() -> None:
    out = decide(
        {"proposals": [proposal("b", market_id="m", requested_size=800.0), proposal("s", market_id="m", side="SELL")]}
    )
    b, s = by_id(out)["b"], by_id(out)["s"]
    assert (s.status, s.netted_size, s.size) == (AllocationStatus.NETTED, 500.0, 0.0)
    assert (b.status, b.netted_size, b.size) == (AllocationStatus.FUNDED, 500.0, 300.0)
    assert [(o.market_id, o.side.value, o.size) for o in out.decision.orders] == [("m", "BUY", 300.0)]


def test_a_residual_below_its_min_size_after_netting_is_rejected() -> None:
    out = decide(
        {
            "proposals": [
                proposal("b", market_id="m", requested_size=800.0, min_size=400.0),
                proposal("s", market_id="m", side="SELL", requested_size=500.0),
            ]
        }
    )
    b = by_id(out)["b"]
    assert (b.status, codes(b), b.netted_size) == (
        AllocationStatus.REJECTED,
        [ReasonCode.BELOW_MIN_AFTER_NETTING],
        500.0,
    )


def test_expiry_at_the_lifetime_boundary() -> None:
    alive = proposal("alive", urgency=0.5, created_at=AS_OF - 2_000)  # age = 1/urgency exactly
    dead = proposal("dead", urgency=0.5, created_at=AS_OF - 2_001)
    window = proposal("window", urgency=0.001, created_at=AS_OF - 300_001)  # past the 300 s window
    out = decide({"proposals": [alive, dead, window]})
    assert by_id(out)["alive"].status is AllocationStatus.FUNDED
    assert codes(by_id(out)["dead"]) == [ReasonCode.EXPIRED] and by_id(out)["dead"].status is AllocationStatus.EXPIRED
    assert by_id(out)["window"].status is AllocationStatus.EXPIRED


def test_a_proposal_on_a_market_that_has_resolved_expires_and_says_so() -> None:
    out = decide(
        {"proposals": [proposal("late", market_id="m-gone"), proposal("live")], "resolved_markets": ["m-gone"]}
    )
    late = by_id(out)["late"]
    assert late.status is AllocationStatus.EXPIRED and late.size == 0.0
    assert late.reasons[0].code is ReasonCode.EXPIRED and late.reasons[0].detail == "market 'm-gone' has resolved"
    assert by_id(out)["live"].status is AllocationStatus.FUNDED


def test_unknown_agents_are_rejected_and_without_a_list_every_agent_is_accepted() -> None:
    listed = decide({"proposals": [proposal("a", agent_id="mallory")], "config": {"agents": ["alpha"]}})
    assert codes(by_id(listed)["a"]) == [ReasonCode.UNKNOWN_AGENT]
    open_door = decide({"proposals": [proposal("a", agent_id="mallory")]})
    assert by_id(open_door)["a"].status is AllocationStatus.FUNDED


def test_duplicates_identical_ignored_conflicting_rejected() -> None:
    out = decide({"proposals": [proposal("a"), proposal("a"), proposal("a", requested_size=600.0)]})
    named = [(a.proposal_id, a.status) for a in out.decision.allocations]
    assert named == [("a", AllocationStatus.FUNDED), ("a", AllocationStatus.REJECTED)]
    assert codes(out.decision.allocations[1]) == [ReasonCode.DUPLICATE]


@pytest.mark.parametrize(
    ("field", "value"),
    [("expected_profit", math.nan), ("confidence", math.inf), ("price", -math.inf), ("urgency", 0), ("side", "X")],
)
def test_invalid_fields_are_rejected_with_the_field_named(field: str, value: Any) -> None:
    out = decide({"proposals": [proposal("bad", **{field: value}), proposal("good")]})
    bad = by_id(out)["bad"]
    assert bad.status is AllocationStatus.REJECTED and codes(bad) == [ReasonCode.INVALID_FIELD]
    assert bad.reasons[0].detail is not None and bad.reasons[0].detail.startswith(field)
    assert by_id(out)["good"].status is AllocationStatus.FUNDED


# --- tail risk -------------------------------------------------------------------------------------------


def test_a_book_already_breaching_cvar_funds_only_trades_that_do_not_raise_tail_risk() -> None:
    # Ten scenarios at alpha 0.8: the tail is the worst two. The book loses 9,000 in scenarios 0 and 1,
    # so its own CVaR (9,000) is above the 5,000 limit and becomes the bound.
    book = [9_000.0, 9_000.0, 0, 0, 0, 0, 0, 0, 0, 0]
    hedge = [2.0, 2.0, -1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]  # pays in the book's bad scenarios
    aligned = [-1.0, -1.0, 1.0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]  # loses in them

    def alone(pid: str, returns: list[float]) -> Allocation:
        out = decide(
            {
                "positions": [{"market_id": "x", "side": "BUY", "size": 9_000.0, "price": 0.5, "correlation_key": "x"}],
                "proposals": [proposal(pid, price=None, expected_profit=0.2)],
                "scenarios": {"returns": {pid: returns}, "book_losses": book},
                "config": {"cvar_alpha": 0.8, "cvar_limit": 0.05},
            }
        )
        return by_id(out)[pid]

    assert alone("hedge", hedge).status is AllocationStatus.FUNDED
    refused = alone("aligned", aligned)
    assert refused.status is AllocationStatus.DEFERRED and codes(refused) == [ReasonCode.CVAR_LIMIT]


def test_two_agents_one_proposal_id_each_with_its_own_supplied_returns() -> None:
    """rules.md §2.2: a snapshot may hold alpha's and beta's "p"; returns keyed "agent_id/proposal_id" tell them
    apart, so the trade that adds nothing to the tail is funded and the one that loses in it is not."""
    book = [9_000.0, 9_000.0, 0, 0, 0, 0, 0, 0, 0, 0]
    out = decide(
        {
            "positions": [{"market_id": "x", "side": "BUY", "size": 9_000.0, "price": 0.5, "correlation_key": "x"}],
            "proposals": [
                proposal("p", price=None, expected_profit=0.2),
                proposal("p", agent_id="beta", market_id="m-q", price=None, expected_profit=0.2),
            ],
            "scenarios": {
                "returns": {
                    "alpha/p": [0.0, 0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
                    "beta/p": [-1.0, -1.0, 1.0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
                },
                "book_losses": book,
            },
            "config": {"cvar_alpha": 0.8, "cvar_limit": 0.05},
        }
    )
    status = {a.agent_id: (a.status, codes(a)) for a in out.decision.allocations}
    assert status == {
        "alpha": (AllocationStatus.FUNDED, []),
        "beta": (AllocationStatus.DEFERRED, [ReasonCode.CVAR_LIMIT]),
    }


# --- properties ------------------------------------------------------------------------------------------


def _independent_cvar(losses: np.ndarray, alpha: float) -> float:
    """CVaR by the textbook definition, written here again so the test does not trust the code under test."""
    ordered = np.sort(losses)[::-1]
    k = (1.0 - alpha) * len(losses)
    whole = math.floor(k)
    total = ordered[:whole].sum() + (k - whole) * (ordered[whole] if whole < len(ordered) else 0.0)
    return float(total / k)


@st.composite
def books(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 12))
    markets = draw(st.integers(1, max(1, n)))
    keys = draw(st.integers(1, 3))
    proposals = []
    for i in range(n):
        requested = draw(st.floats(100.0, 4_000.0))
        proposals.append(
            proposal(
                f"p{i}",
                market_id=f"m{draw(st.integers(0, markets - 1))}",
                correlation_key=f"k{draw(st.integers(0, keys - 1))}",
                side=draw(st.sampled_from(["BUY", "SELL"])),
                price=draw(st.floats(0.15, 0.85)),
                expected_profit=draw(st.floats(0.01, 0.09)),
                confidence=draw(st.floats(0.3, 1.0)),
                requested_size=requested,
                min_size=requested * draw(st.floats(0.1, 1.0)),
                execution_risk=draw(st.floats(0.0, 0.5)),
                urgency=draw(st.floats(0.01, 2.0)),
            )
        )
    positions = [
        {
            "market_id": f"m{draw(st.integers(0, markets - 1))}",
            "side": draw(st.sampled_from(["BUY", "SELL"])),
            "size": draw(st.floats(0.0, 8_000.0)),
            "price": draw(st.floats(0.2, 0.8)),
            "correlation_key": f"k{draw(st.integers(0, keys - 1))}",
        }
        for _ in range(draw(st.integers(0, 3)))
    ]
    return {
        "equity": 100_000.0,
        "available": draw(st.floats(0.0, 30_000.0)),
        "positions": positions,
        "proposals": proposals,
        "config": {"cvar_limit": draw(st.sampled_from([0.01, 0.02, 0.05])), "scenario_count": 300},
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books())
def test_every_decision_keeps_every_constraint(book: dict[str, Any]) -> None:
    out = decide(book)
    decision = out.decision
    sent = [p["proposal_id"] for p in book["proposals"]]
    assert sorted(a.proposal_id for a in decision.allocations) == sorted(sent)  # each exactly once
    equity = 100_000.0
    funded = [a for a in decision.allocations if a.size > 0]
    assert sum(a.size for a in funded) <= book["available"] + 1e-6
    specs = {p["proposal_id"]: p for p in book["proposals"]}
    for a in decision.allocations:
        spec = specs[a.proposal_id]
        assert a.size == 0.0 or a.size >= spec["min_size"] - 1e-6  # min-size-or-zero
        assert a.size <= min(spec["requested_size"], 0.02 * equity) + 1e-6
    if funded:
        assert out.problem is not None
        sizes = np.zeros(out.problem.n)
        # the returned sizes, recomputed into the tail with our own CVaR
        columns = {key: i for i, key in enumerate(_problem_ids(out))}
        for a in funded:
            sizes[columns[(a.agent_id, a.proposal_id)]] = a.size
        tail = _independent_cvar(out.problem.book_losses - out.problem.returns @ sizes, 0.95)
        book_tail = _independent_cvar(out.problem.book_losses, 0.95)
        assert tail <= max(book["config"]["cvar_limit"] * equity, book_tail) * (1 + 1e-9) + 1e-6


def _problem_ids(out: CycleOutcome) -> list[tuple[str, str]]:
    assert len(out.column_ids) == (out.problem.n if out.problem is not None else 0)
    return list(out.column_ids)


# --- the command line ------------------------------------------------------------------------------------


def test_allocate_prints_one_json_decision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", str(ROOT / "examples" / "basic.json")]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert set(decision) == {"decision_id", "governor_state", "solver_path", "objective", "gap", "solve_ms",
                             "allocations", "orders"}  # fmt: skip
    assert decision["governor_state"] == "ACTIVE"
    assert {a["proposal_id"] for a in decision["allocations"]} >= {"arb-001", "stale-9"}


def test_allocate_names_each_allocation_s_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An outside probe: two agents' proposals of one id came out as two allocations named "x", one FUNDED and one
    DEFERRED, and only the orders told which agent won (rules.md §2.2: an allocation names both ids)."""
    snapshot = json.loads((ROOT / "examples" / "basic.json").read_text(encoding="utf-8"))
    first = snapshot["proposals"][0]
    snapshot["proposals"] = [{**first, "proposal_id": "x", "agent_id": agent} for agent in ("b", "a")]
    path = tmp_path / "two.json"
    path.write_text(json.dumps(snapshot), encoding="utf-8")
    assert main(["allocate", "--no-timing", str(path)]) == 0
    allocations = json.loads(capsys.readouterr().out)["allocations"]
    assert sorted((a["proposal_id"], a["agent_id"]) for a in allocations) == [("x", "a"), ("x", "b")]


def test_the_same_snapshot_gives_byte_identical_output(capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for _ in range(2):
        assert main(["allocate", "--no-timing", str(ROOT / "examples" / "basic.json")]) == 0
        outputs.append(capsys.readouterr().out.encode())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"equity": 1, "proposals": []}', "as_of: is missing"),
        ('{"as_of": 1, "equity": 1, "proposals": [], "extra": 1}', "unknown key(s): extra"),
        ('{"as_of": 1, "equity": 1, "proposals": [], "config": {"position_cpa": 1}}', "position_cpa"),
        ('{"as_of": 1, "equity": NaN, "proposals": []}', "equity: must be a finite number"),
        # An outside probe: the last of two "equity" keys silently decided; a count left out read as 0 (a book
        # that should be PAUSED decided ACTIVE).
        ('{"as_of": 1, "equity": 1, "equity": 2, "proposals": []}', "key 'equity' given twice in one object"),
        ('{"as_of": 1, "equity": 1, "proposals": [], "executions": {"reports": 50}}', "(missing failures)"),
    ],
)
def test_a_missing_or_malformed_snapshot_exits_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "snapshot.json"
    if content is not None:
        path.write_text(content)
    assert main(["allocate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err


def test_a_snapshot_proposal_from_after_its_as_of_is_rejected_not_kept_for_ever() -> None:
    """An outside probe: a snapshot proposal created far after the snapshot's `as_of` was FUNDED and could never
    expire (its age negative). As a proposal on the log is held to its log time (rules.md §2.3), a snapshot's is
    held to `as_of`: more than the allowed skew after it is REJECTED naming created_at; within it, decided."""
    skew_ms = 5_000  # max_clock_skew_s, the default
    out = by_id(
        decide(
            {"proposals": [proposal("future", created_at=AS_OF + 10**9), proposal("near", created_at=AS_OF + skew_ms)]}
        )
    )
    assert out["future"].status is AllocationStatus.REJECTED
    detail = out["future"].reasons[0].detail or ""
    assert "created_at" in detail and "after the log time" in detail
    assert out["near"].status is AllocationStatus.FUNDED


@pytest.mark.parametrize("name", ["basic", "invalid", "halted", "paused", "supplied-scenarios"])
def test_every_example_snapshot_decides(name: str) -> None:
    out = run_cycle(load_snapshot(ROOT / "examples" / f"{name}.json"))
    assert out.decision.allocations


def test_allocate_stdout_is_exactly_one_json_document_in_a_fresh_process() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "allocate", str(ROOT / "examples" / "basic.json")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["solver_path"] in ("MIP_OPTIMAL", "MIP_TIME_LIMIT", "PRIORITY_FALLBACK")


def test_a_cut_names_the_cap_that_bounds_its_size_not_a_looser_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe: a request of 6,000 cut to the position cap's 2,000 was CUT [POSITION_CAP, GROUP_CAP], the
    group cap's 5,000 also named though it bound nothing (rules.md §6.3). A configuration recorded before
    `cap_reasons` keeps naming both, so its decisions audit as recorded."""
    snapshot = json.loads((ROOT / "examples" / "basic.json").read_text(encoding="utf-8"))
    first = snapshot["proposals"][0]
    snapshot["proposals"] = [{**first, "requested_size": 6_000.0, "min_size": 100.0}]
    snapshot["positions"] = []
    snapshot["equity"] = snapshot["available"] = 100_000.0
    snapshot.pop("high_water_mark", None)
    reasons = {}
    for rule in (2, 1):
        snapshot["config"] = {"cap_reasons": rule, "group_cap": 0.05, "cvar_limit": 1.0}
        path = tmp_path / f"rule{rule}.json"
        path.write_text(json.dumps(snapshot), encoding="utf-8")
        assert main(["allocate", "--no-timing", str(path)]) == 0
        [allocation] = json.loads(capsys.readouterr().out)["allocations"]
        assert (allocation["status"], allocation["size"]) == ("CUT", 2_000.0)
        reasons[rule] = allocation["reasons"]
    assert reasons == {2: ["POSITION_CAP"], 1: ["POSITION_CAP", "GROUP_CAP"]}


def _snapshot_of(*proposals: dict[str, object], available: float | None = None, **config: object) -> dict[str, object]:
    base = {"agent_id": "a", "strategy_tag": "t", "side": "BUY", "price": 0.5, "confidence": 0.9,
            "execution_risk": 0.05, "urgency": 0.1, "created_at": 1_789_999_999_000}  # fmt: skip
    snapshot: dict[str, object] = {"as_of": 1_790_000_000_000, "equity": 100_000.0,
                                   "proposals": [{**base, **p} for p in proposals], "config": config}  # fmt: skip
    if available is not None:
        snapshot["available"] = available
    return snapshot


def _reasons(snapshot: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    path = tmp_path / "snapshot.json"
    path.write_text(json.dumps(snapshot), encoding="utf-8")
    assert main(["allocate", "--no-timing", str(path)]) == 0
    return {a["proposal_id"]: (a["status"], a["reasons"]) for a in json.loads(capsys.readouterr().out)["allocations"]}


def test_a_rejection_names_the_smallest_cap_and_a_cut_only_what_binds_at_its_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An outside probe (rules.md §6.3): a proposal whose caps all left less than its min size was rejected naming
    the first of them in a fixed order (POSITION_CAP at 2,000 where the group left 1,000), and of three equal caps
    only the first; a proposal cut by capital was also said to be cut by the group it shared with another, which
    held 4,500 of its 5,000. With `cap_reasons` 3 a rejection names the smallest cap (each of equal ones) and a cut
    the constraints binding at its size; a configuration recorded with 2 keeps naming as before."""
    x = {"proposal_id": "x", "market_id": "m1", "expected_profit": 0.05, "requested_size": 3_000.0,
         "min_size": 2_500.0, "correlation_key": "k1"}  # fmt: skip
    assert _reasons(_snapshot_of(x, group_cap=0.01, cvar_limit=1.0), tmp_path, capsys) == {
        "x": ("REJECTED", ["GROUP_CAP"])
    }
    equal = {"position_cap": 0.02, "market_cap": 0.02, "group_cap": 0.02, "cvar_limit": 1.0}
    assert _reasons(_snapshot_of(x, **equal), tmp_path, capsys) == {
        "x": ("REJECTED", ["POSITION_CAP", "MARKET_CAP", "GROUP_CAP"])
    }
    a = {"proposal_id": "a", "market_id": "m1", "expected_profit": 0.2, "requested_size": 4_000.0,
         "min_size": 4_000.0, "correlation_key": "k1"}  # fmt: skip
    b = {"proposal_id": "b", "market_id": "m2", "expected_profit": 0.05, "requested_size": 2_000.0,
         "min_size": 10.0, "correlation_key": "k1"}  # fmt: skip
    cut = _snapshot_of(a, b, available=4_500.0, position_cap=0.1, cvar_limit=1.0)
    assert _reasons(cut, tmp_path, capsys) == {"a": ("FUNDED", []), "b": ("CUT", ["CAPITAL"])}
    assert _reasons(_snapshot_of(x, group_cap=0.01, cvar_limit=1.0, cap_reasons=2), tmp_path, capsys) == {
        "x": ("REJECTED", ["POSITION_CAP"])
    }
    cut["config"] = {"position_cap": 0.1, "cvar_limit": 1.0, "cap_reasons": 2}
    assert _reasons(cut, tmp_path, capsys) == {"a": ("FUNDED", []), "b": ("CUT", ["CAPITAL", "GROUP_CAP"])}
