"""rules.md §7.4: a funded allocation adds at most `failure_reports_per_allocation` execution reports (its first ones)
to the failure-rate window, so one executor cannot pause the book by writing the same FAILED report again, nor hide
real failures behind repeated zero-size FILLED reports; under `failure_report_rules` 2 a PARTIAL report is not one of
them, so an interim report cannot stand in for the final FAILED one. A configuration recorded without a key counts
as the releases before it did."""

from __future__ import annotations

from book.config import ABSENT_MEANS, AllocatorConfig
from book.portfolio import PortfolioState
from schemas.events import (
    Allocation,
    AllocationStatus,
    Decision,
    Fill,
    FillStatus,
    GovernorState,
    Order,
    Proposal,
    Side,
    SolverPath,
)

T = 1_700_000_000_000


def funded(n: int) -> Decision:
    """One committed decision funding n allocations of 100 each, on markets m0..m(n-1)."""
    allocations = tuple(
        Allocation(f"p{i}", "a", f"m{i}", Side.BUY, 100.0, 0.0, AllocationStatus.FUNDED, ()) for i in range(n)
    )
    orders = tuple(Order(f"m{i}", Side.BUY, 100.0) for i in range(n))
    return Decision("d1", "main", 1, T, (), "v", "h", 1, GovernorState.ACTIVE, 300_000, 1e5, 1e5, 1e5,
                    SolverPath.MIP_OPTIMAL, 1.0, 1.0, 0.0, allocations, orders)  # fmt: skip


def report(i: int, status: FillStatus, size: float = 0.0, fill_id: str = "f") -> Fill:
    return Fill(fill_id, "d1", f"p{i}", f"m{i}", Side.BUY, 100.0, size, 0.5, 0.0, status, None, T, "a")


def book_with(decision: Decision, config: AllocatorConfig) -> PortfolioState:
    book = PortfolioState.new(config)
    book.apply(decision)
    return book


def fold(book: PortfolioState, fills: list[Fill]) -> None:
    for fill in fills:
        assert book.fill_refusal(fill) is None  # each is a fill the rules of §11.1 let through
        book.apply(fill)


def test_the_same_failed_report_written_again_does_not_pause_the_book() -> None:
    # Under `fill_rules` 2 a report after a FAILED one is refused outright (rules.md §11.1); the window's own rule is
    # what holds where that rule is off (a configuration recorded before it).
    book = book_with(funded(1), AllocatorConfig(fill_rules=1))
    fold(book, [report(0, FillStatus.FAILED, fill_id=f"f{k}") for k in range(40)])
    assert book.governor.state is GovernorState.ACTIVE


def test_failures_of_distinct_allocations_still_pause_it() -> None:
    book = book_with(funded(30), AllocatorConfig())
    fold(book, [report(i, FillStatus.FAILED) for i in range(10)] + [report(i, FillStatus.FILLED, 100.0)
                                                                    for i in range(10, 20)])  # fmt: skip
    assert book.governor.state is GovernorState.PAUSED  # 10 of 20 reports failed: 50% > 30%


def test_zero_size_reports_written_again_do_not_hide_failures() -> None:
    # Under `failure_report_rules` 1 (a book recorded before the key): forty zero-size interim reports on one
    # allocation count once, so 7 failures of 20 reports pause the book. Under 2 they do not count at all (below).
    book = book_with(funded(30), AllocatorConfig(failure_report_rules=1))
    fill_ups = [report(29, FillStatus.PARTIAL, 0.0) for _ in range(40)]
    fold(book, fill_ups + [report(i, FillStatus.FAILED) for i in range(7)]
         + [report(i, FillStatus.FILLED, 100.0) for i in range(7, 19)])  # fmt: skip
    assert book.governor.state is GovernorState.PAUSED


def test_a_book_recorded_before_the_key_counts_every_report_as_it_did() -> None:
    recorded = AllocatorConfig.from_recorded({})
    assert recorded.failure_reports_per_allocation == ABSENT_MEANS["failure_reports_per_allocation"] == 0
    assert recorded.config_hash == recorded.replace(failure_reports_per_allocation=0).config_hash
    book = book_with(funded(1), recorded)
    fold(book, [report(0, FillStatus.FAILED, fill_id=f"f{k}") for k in range(20)])
    assert book.governor.state is GovernorState.PAUSED


def _acknowledged_then_failed(config: AllocatorConfig) -> PortfolioState:
    """Seven allocations that each get a zero-size PARTIAL acknowledgement and then FAILED; thirteen filled."""
    book = book_with(funded(30), config)
    failed = [r for i in range(7) for r in (report(i, FillStatus.PARTIAL, 0.0, f"ack{i}"),
                                            report(i, FillStatus.FAILED, fill_id=f"fail{i}"))]  # fmt: skip
    fold(book, failed + [report(i, FillStatus.FILLED, 100.0, f"fill{i}") for i in range(7, 20)])
    return book


def test_an_interim_report_before_the_failed_one_does_not_hide_the_failure() -> None:
    """An outside probe: an executor that acknowledges each order with a zero-size PARTIAL and then reports FAILED
    (a common pattern, honest) had every failure counted as a success: six failed allocations paused nothing. The
    window now counts each allocation by its final report: 7 failures of 20 (35%) pause the book."""
    assert _acknowledged_then_failed(AllocatorConfig()).governor.state is GovernorState.PAUSED


def test_a_book_recorded_before_failure_report_rules_counts_the_first_report_as_it_did() -> None:
    recorded = AllocatorConfig.from_recorded({"failure_reports_per_allocation": 1})
    assert recorded.failure_report_rules == ABSENT_MEANS["failure_report_rules"] == 1
    assert _acknowledged_then_failed(recorded).governor.state is GovernorState.ACTIVE  # 0 failures of 20 counted


def _proposed_and_funded(n: int, config: AllocatorConfig) -> PortfolioState:
    """n proposals of min size 60 (request 100) held by the book, then the decision funding each at 100."""
    book = PortfolioState.new(config)
    for i in range(n):
        book.apply(Proposal(f"p{i}", "a", "s", f"m{i}", Side.BUY, 0.5, 0.05, 0.9, 100.0, 60.0, 0.0, 0.01, f"k{i}", T))
    assert len(book.pending) == n
    book.apply(funded(n))
    return book


def test_a_filled_report_of_next_to_nothing_does_not_hide_the_failure_after_it() -> None:
    """An outside probe: FILLED 1e-9 (a zero-size FILLED is refused, `fill_rules` 3) ended each allocation as a
    success, and the real FAILED report after it was refused as coming after a final one: 25 failed allocations
    paused nothing. Under `failure_report_rules` 3 a FILLED report that leaves its allocation below the proposal's
    min size counts as a failure; one that reaches it (here 60 of 100) is a success."""
    book = _proposed_and_funded(25, AllocatorConfig())
    tiny = [report(i, FillStatus.FILLED, 1e-9, f"tiny{i}") for i in range(7)]
    fold(book, tiny + [report(i, FillStatus.FILLED, 60.0, f"fill{i}") for i in range(7, 20)])
    assert all(book.fill_refusal(report(i, FillStatus.FAILED, fill_id=f"fail{i}")) for i in range(7))
    assert book.governor.state is GovernorState.PAUSED  # 7 short of 20 reports: 35%
    assert sum(book.governor.failure_outcomes) == 7 and len(book.governor.failure_outcomes) == 20
    # filled at the min size (in two reports, the interim one not counted) is a success: 6 of 20 stay under 30%
    book = _proposed_and_funded(25, AllocatorConfig())
    halves = [r for i in range(7) for r in (report(i, FillStatus.PARTIAL, 30.0, f"a{i}"),
                                            report(i, FillStatus.FILLED, 30.0, f"b{i}"))]  # fmt: skip
    fold(book, halves + [report(i, FillStatus.FAILED, fill_id=f"x{i}") for i in range(7, 13)]
         + [report(i, FillStatus.FILLED, 100.0, f"y{i}") for i in range(13, 20)])  # fmt: skip
    assert book.governor.state is GovernorState.ACTIVE


def test_a_book_recorded_with_failure_report_rules_2_keeps_counting_a_short_fill_as_a_success() -> None:
    book = _proposed_and_funded(25, AllocatorConfig(failure_report_rules=2))
    fold(book, [report(i, FillStatus.FILLED, 1e-9, f"tiny{i}") for i in range(20)])
    assert book.governor.state is GovernorState.ACTIVE
