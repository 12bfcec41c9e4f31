"""The portfolio fold: fills, marks, resolutions, reservations and governors, as the log tells them."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from book.config import AllocatorConfig
from book.exactsum import rounded, units
from book.portfolio import Holding, PortfolioState
from governors.state import GovernorChange, GovernorStatus
from schemas.events import (
    Allocation,
    AllocationStatus,
    Command,
    ControlCommand,
    Decision,
    Event,
    Fill,
    FillStatus,
    Governor,
    GovernorState,
    MarketResolution,
    Outcome,
    PnlMark,
    Proposal,
    Reason,
    ReasonCode,
    Side,
    SolverPath,
)

T = 1_790_000_000_000


def proposal(pid: str, market: str = "m", side: Side = Side.BUY, size: float = 1_000.0) -> Proposal:
    return Proposal(pid, "alpha", "s", market, side, 0.5, 0.04, 0.9, size, 100.0, 0.05, 0.1, "k", T)


def decision(cycle: int, *allocations: Allocation, path: SolverPath = SolverPath.MIP_OPTIMAL) -> Decision:
    return Decision(
        f"d{cycle}", "book", cycle, T + cycle, (), "1", "h", 1, GovernorState.ACTIVE, 300_000, 0.0, 0.0, 0.0, path,
        1.0, 0.0, 0.0, allocations, (),
    )  # fmt: skip


def funded(pid: str, size: float, market: str = "m", side: Side = Side.BUY) -> Allocation:
    return Allocation(pid, "alpha", market, side, size, 0.0, AllocationStatus.FUNDED, ())


def fill(pid: str, cycle: int, size: float, price: float, status: FillStatus = FillStatus.FILLED) -> Fill:
    return Fill(f"f-{pid}", f"d{cycle}", pid, "m", Side.BUY, size, size, price, 1.0, status, None, T + 10)


def test_a_funded_allocation_reserves_capital_until_its_fill() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=100_000.0))
    book.apply(proposal("p"))
    assert list(book.pending) == [("alpha", "p")]
    book.apply(decision(1, funded("p", 1_000.0)))
    assert book.pending == {} and book.available == 99_000.0 and book.equity == 100_000.0
    book.apply(fill("p", 1, 1_000.0, 0.5))
    assert book.reserved == 0.0
    assert book.cash == pytest.approx(100_000.0 - 1_000.0 - 1.0)  # stake and fee
    assert book.holdings[("m", Side.BUY)].contracts == pytest.approx(2_000.0)
    assert book.equity == pytest.approx(99_999.0)  # held at its fill price until a mark arrives
    book.apply(PnlMark("m", 0.6, T + 20))
    assert book.equity == pytest.approx(100_000.0 - 1_001.0 + 2_000 * 0.6)


def test_resolution_settles_and_void_refunds() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    for pid, side in (("yes", Side.BUY), ("no", Side.SELL)):
        book.apply(proposal(pid, side=side))
    book.apply(decision(1, funded("yes", 100.0), funded("no", 100.0, side=Side.SELL)))
    book.apply(Fill("f1", "d1", "yes", "m", Side.BUY, 100.0, 100.0, 0.25, 0.0, FillStatus.FILLED, None, T))
    book.apply(Fill("f2", "d1", "no", "m", Side.SELL, 100.0, 100.0, 0.75, 0.0, FillStatus.FILLED, None, T))
    book.apply(MarketResolution("m", Outcome.YES, T + 50))
    assert book.holdings == {} and book.cash == pytest.approx(10_000.0 - 200.0 + 400.0)
    other = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    other.apply(Fill("f3", "d9", "x", "v", Side.BUY, 100.0, 100.0, 0.2, 0.0, FillStatus.FILLED, None, T))
    other.apply(MarketResolution("v", Outcome.VOID, T))
    assert other.cash == pytest.approx(10_000.0)


def test_marks_that_draw_down_fifteen_percent_trip_the_kill_switch() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    book.apply(Fill("f", "d", "p", "m", Side.BUY, 5_000.0, 5_000.0, 0.5, 0.0, FillStatus.FILLED, None, T))
    assert book.apply(PnlMark("m", 0.4, T)) == ()  # equity 9,000: 10% down
    changes = book.apply(PnlMark("m", 0.35, T))  # equity 8,500: exactly 15% down
    assert [c.new_state for c in changes] == ["TRIPPED"] and book.governor.kill_switch_tripped
    book.apply(PnlMark("m", 0.9, T))
    assert book.governor.kill_switch_tripped  # latched: profit never lifts it
    book.apply(ControlCommand("c", "risk", Command.RESET_KILL_SWITCH, "reviewed", None, T))
    assert not book.governor.kill_switch_tripped
    assert book.governor.high_water_mark == pytest.approx(book.equity)


def test_failed_executions_pause_the_book() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    for i in range(20):
        status = FillStatus.FAILED if i % 2 else FillStatus.FILLED
        changes = book.apply(Fill(f"f{i}", "d", f"p{i}", "m", Side.BUY, 10.0, 0.0, 0.5, 0.0, status, None, T))
    assert [c.new_state for c in changes] == ["PAUSED"]
    assert book.governor.state is GovernorState.PAUSED


def test_duplicates_and_deferrals() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    book.apply(proposal("p"))
    book.apply(proposal("p"))  # identical: ignored
    book.apply(proposal("p", size=2_000.0))  # conflicting: rejected by the next decision
    pending, conflicts = book.undecided()
    assert [p.proposal_id for p in pending] == ["p"] and [p.requested_size for p in conflicts] == [2_000.0]
    deferred = Allocation("p", "alpha", "m", Side.BUY, 0.0, 0.0, AllocationStatus.DEFERRED, ())
    duplicate = Allocation(
        "p", "alpha", "m", Side.BUY, 0.0, 0.0, AllocationStatus.REJECTED, (Reason(ReasonCode.DUPLICATE),)
    )
    book.apply(decision(1, deferred, duplicate))
    assert list(book.pending) == [("alpha", "p")] and book.conflicts == {}  # the original waits, the re-send is gone


def test_timed_out_solves_shrink_the_window_through_decisions() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    changes: tuple[GovernorChange, ...] = ()
    for cycle in range(1, 4):
        changes = book.apply(decision(cycle, path=SolverPath.MIP_TIME_LIMIT))
    assert book.governor.window_ms == 150_000 and changes[0].new_state == "150000"


def test_set_limits_retunes_the_governors() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    book.apply(ControlCommand("c", "risk", Command.SET_LIMITS, "tighter", {"kill_switch_drawdown": 0.05}, T))
    assert book.limits.kill_switch_drawdown == 0.05 and book.config.kill_switch_drawdown == 0.05
    book.apply(Fill("f", "d", "p", "m", Side.BUY, 1_000.0, 1_000.0, 0.5, 0.0, FillStatus.FILLED, None, T))
    book.apply(PnlMark("m", 0.2, T))  # equity 9,400: 6% down
    assert book.governor.state is GovernorState.HALTED


def test_reservations_expire_by_log_time() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    book.apply(proposal("p"))
    book.apply(decision(1, funded("p", 500.0)))
    assert book.expire_reservations(T + 1 + 59_999, timeout_ms=60_000) == []
    assert [r.proposal_id for r in book.expire_reservations(T + 1 + 60_001, timeout_ms=60_000)] == ["p"]
    assert book.available == 10_000.0


def test_a_deferred_proposal_keeps_only_its_residual_after_netting() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    book.apply(proposal("b", size=1_000.0))
    book.apply(proposal("s", side=Side.SELL, size=400.0))
    deferred = Allocation("b", "alpha", "m", Side.BUY, 0.0, 400.0, AllocationStatus.DEFERRED, ())
    netted = Allocation("s", "alpha", "m", Side.SELL, 0.0, 400.0, AllocationStatus.NETTED, ())
    book.apply(decision(1, deferred, netted))
    assert list(book.pending) == [("alpha", "b")] and book.pending[("alpha", "b")].requested_size == 600.0


# --- equity kept incrementally equals equity recomputed from scratch --------------------------------------


class FromScratch(PortfolioState):
    """The definition the fold must keep to: every read of equity values every holding again and sums (fsum)."""

    def holding_value(self, h: Holding) -> float:
        average_price = h.cost / h.contracts if h.contracts > 0 else 0.0
        return h.contracts * self.contract_mark(h.market_id, h.side, average_price)

    @property
    def equity(self) -> float:
        return self.cash + math.fsum(self.holding_value(h) for h in self.holdings.values())


MARKETS = ("a", "b", "c")
sides = st.sampled_from(list(Side))
markets = st.sampled_from(MARKETS)
stakes = st.floats(0.0, 1e7) | st.sampled_from([0.01, 1e-300, 5e-324, 1e300, math.inf])
prices = st.floats(0.0, 1.0, exclude_min=True, exclude_max=True) | st.sampled_from([0.1, 0.3, 0.7, 1.0, 0.0])
marks = st.floats(0.0, 1.0) | st.sampled_from([-0.0, 0.1, 0.3, 1.5, math.nan])


def _fill(market: str, side: Side, stake: float, price: float, status: FillStatus, fee: float) -> Fill:
    return Fill("f", "d1", f"{market}{side}", market, side, stake, stake, price, fee, status, None, T)


book_events = st.one_of(
    st.builds(_fill, markets, sides, stakes, prices, st.sampled_from(list(FillStatus)), st.floats(0.0, 10.0)),
    st.builds(PnlMark, markets, marks, st.just(T)),
    st.builds(PnlMark, markets, marks, st.just(T)),
    st.builds(MarketResolution, markets, st.sampled_from(list(Outcome)), st.just(T)),
    st.sampled_from(
        [
            ControlCommand("r", "risk", Command.RESET_KILL_SWITCH, "reviewed", None, T),
            ControlCommand("l", "risk", Command.SET_LIMITS, "tighter", {"kill_switch_drawdown": 0.01}, T),
        ]
    ),
    st.builds(decision, st.just(1), st.builds(funded, st.just("x"), st.floats(1.0, 1e4), markets, sides)),
)


def _starting_with(kind: type[PortfolioState], cash: float) -> PortfolioState:
    """A book holding `cash` (zero included, which no configuration's initial_cash may be)."""
    config = AllocatorConfig()
    return kind(config=config, cash=cash, governor=GovernorStatus.initial(cash, config.governor_limits()))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0.0, 1e9) | st.just(0.0), st.lists(book_events, max_size=60))
def test_incremental_equity_is_bit_for_bit_the_full_recomputation(cash: float, events: list[Event]) -> None:
    live, reference = _starting_with(PortfolioState, cash), _starting_with(FromScratch, cash)
    for event in events:
        assert repr(live.apply(event)) == repr(reference.apply(event))
        assert live.equity.hex() == reference.equity.hex()
        assert repr(live.governor) == repr(reference.governor)
    # A state rebuilt from the same log (a restart, a replay) reads the same bits.
    rebuilt = _starting_with(PortfolioState, cash)
    for event in events:
        rebuilt.apply(event)
    assert rebuilt.equity.hex() == live.equity.hex() and repr(rebuilt.governor) == repr(live.governor)
    # So does a state built around the holdings and marks directly.
    copied = PortfolioState(live.config, live.cash, live.governor, holdings=dict(live.holdings), marks=dict(live.marks))
    assert copied.equity.hex() == live.equity.hex()


def test_equity_does_not_depend_on_the_order_marks_arrive_in() -> None:
    """Marks on different markets commute: the exact sum rounds once, whatever order the values changed in."""
    latest = {"m0": 0.1, "m1": 0.7, "m2": 0.3, "m3": 0.9, "m4": 0.2}
    books = []
    for order in (list(latest), list(reversed(latest))):
        book = PortfolioState.new(AllocatorConfig(initial_cash=1.0))
        for i, market in enumerate(latest):
            book.apply(_fill(market, Side.BUY, 0.1 * (i + 1), 0.5, FillStatus.FILLED, 0.0))
        for market in order:
            book.apply(PnlMark(market, latest[market], T))
        books.append(book)
    assert books[0].equity.hex() == books[1].equity.hex()
    held = [book.holdings[(m, Side.BUY)].contracts * latest[m] for m in latest]
    assert books[0].equity == books[0].cash + math.fsum(held)


any_finite = st.floats(allow_nan=False, allow_infinity=False, max_value=1e290, min_value=-1e290)
money = st.floats(0.0, 1e9) | st.integers(1, 10**6).map(lambda n: n * 2.0**-40) | st.sampled_from([2.0**-53, 1.0, 0.1])


@settings(max_examples=2000)
@given(st.lists(any_finite | money, min_size=1, max_size=30), st.lists(st.integers(0, 29), max_size=30))
def test_an_exact_sum_reads_what_fsum_reads_after_any_adds_and_removes(values: list[float], drop: list[int]) -> None:
    total = sum(units(v) for v in values)
    kept = list(values)
    for i in drop:
        if i < len(kept):
            total -= units(kept.pop(i))
    read = rounded(total)
    assert read is None or read.hex() == math.fsum(kept).hex()
    assert (read is None) == (not total)  # values far below the top of the float range


def test_an_exact_sum_rounds_ties_to_even_as_fsum_does() -> None:
    for values in ([1.0, 2.0**-53], [1.0, 3 * 2.0**-53], [1e16, 1.0, 1.0], [0.1] * 10, [1e300, -1e300, 1e-300]):
        assert rounded(sum(units(v) for v in values)) == math.fsum(values)


def _set_limits(book: PortfolioState, limits: dict[str, float]) -> tuple[GovernorChange, ...]:
    return book.apply(ControlCommand("c", "risk", Command.SET_LIMITS, "retune", limits, T))


@pytest.mark.parametrize(
    ("limits", "named"),
    [
        ({"kill_switch_drawdown": math.nan}, "kill_switch_drawdown"),
        ({"kill_switch_drawdown": 15.0}, "kill_switch_drawdown"),
        ({"opportunity_window_s": math.nan}, "opportunity_window_s"),
        ({"solver_time_limit_ms": 1e300}, "solver_time_limit_ms"),
        ({"scenario_count": 1e9}, "scenario_count"),
        ({"failure_window": 2.5}, "failure_window"),
        ({"position_cap": 0.005, "no_such_key": 1.0}, "no_such_key"),
        ({"position_cap": 0.005, "market_cap": -1.0}, "market_cap"),
    ],
)
def test_a_set_limits_with_any_bad_key_changes_nothing_and_says_which_key(limits: dict[str, float], named: str) -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    _set_limits(book, {"position_cap": 0.01})  # an earlier accepted command stays in force
    before = book.config
    changes = _set_limits(book, limits)
    assert book.config == before and book.config.position_cap == 0.01
    assert book.limits == before.governor_limits()
    assert len(changes) == 1 and changes[0].governor is Governor.OPERATOR
    assert named in changes[0].cause and changes[0].cause.startswith("SET_LIMITS c by risk rejected")  # names its id
    assert changes[0].old_state == changes[0].new_state == "ACTIVE"


def test_set_limits_accepts_integral_doubles_for_whole_number_keys() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    assert _set_limits(book, {"failure_window": 40.0, "failure_min_samples": 10.0, "position_cap": 0.005}) == ()
    assert book.config.failure_window == 40 and isinstance(book.config.failure_window, int)
    assert book.limits.failure_window == 40 and book.config.position_cap == 0.005


def test_a_rejected_kill_switch_limit_cannot_keep_a_drawn_down_book_active() -> None:
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    _set_limits(book, {"kill_switch_drawdown": math.nan})
    book.apply(Fill("f", "d", "p", "m", Side.BUY, 1_000.0, 1_000.0, 0.5, 0.0, FillStatus.FILLED, None, T))
    book.apply(PnlMark("m", 0.0, T))  # the whole position lost: 10% down, then more
    book.apply(Fill("f2", "d", "p2", "m2", Side.BUY, 1_000.0, 1_000.0, 0.5, 0.0, FillStatus.FILLED, None, T))
    book.apply(PnlMark("m2", 0.0, T))  # 20% down
    assert book.governor.state is GovernorState.HALTED


def test_a_decision_of_an_earlier_release_rejecting_another_agent_s_id_as_duplicate_settles_it() -> None:
    """Before ids were per agent (rules.md §2.2) a second agent's proposal of a used id was REJECTED DUPLICATE. Such
    a log folds today with that proposal received as its own; the recorded decision settles it, so a restart never
    decides it again."""
    book = PortfolioState.new(AllocatorConfig(initial_cash=10_000.0))
    book.apply(proposal("p"))
    book.apply(dataclasses.replace(proposal("p", size=2_000.0), agent_id="beta"))
    assert list(book.pending) == [("alpha", "p"), ("beta", "p")]
    deferred = Allocation("p", "alpha", "m", Side.BUY, 0.0, 0.0, AllocationStatus.DEFERRED, ())
    duplicate = Allocation(
        "p", "beta", "m", Side.BUY, 0.0, 0.0, AllocationStatus.REJECTED, (Reason(ReasonCode.DUPLICATE),)
    )
    book.apply(decision(1, deferred, duplicate))
    assert list(book.pending) == [("alpha", "p")] and list(book.received) == [("alpha", "p")]
