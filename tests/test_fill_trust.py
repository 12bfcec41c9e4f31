"""Fills the fold trusts (rules.md §11.1): a fill counts only for an allocation of a committed decision, for at
most its funded size in total, with a fee within `max_fee_rate`; anything else is a dead letter that changes
nothing. Batches of decisions written with Decision version 1 keep the old rule (FILLS_UNCHECKED)."""

from __future__ import annotations

import dataclasses

from allocator.engine.cycle import run_cycle
from allocator.service.sequencer import BookState, build_request, fold_batch, fold_decision, prepare_cycle
from book.config import AllocatorConfig
from eventlog.port import Record, Topics
from schemas.codec import SingleObjectCodec
from schemas.events import AllocationStatus, Decision, Fill, FillStatus, Proposal, Side

T = 1_790_000_000_000
codec = SingleObjectCodec()
topics = Topics("trust")


def _proposal(pid: str, size: float, agent: str = "a") -> Proposal:
    return Proposal(pid, agent, "s", f"m-{pid}", Side.BUY, 0.6, 0.04, 0.9, size, 10.0, 0.1, 0.01, f"k-{pid}", T)


def _fill(
    fid: str,
    decision_id: str,
    pid: str,
    size: float,
    fee: float = 0.0,
    market: str | None = None,
    agent: str | None = None,
) -> Fill:
    return Fill(fid, decision_id, pid, market or f"m-{pid}", Side.BUY, size, size, 0.6, fee, FillStatus.FILLED,
                None, T + 2_000, agent)  # fmt: skip


def _fold(state: BookState, *events: Proposal | Fill, at: int = T + 1_000, trust: bool = False) -> list[str]:
    topic_of = {Proposal: topics.proposals, Fill: topics.fills}
    start = sum(state.positions.values())
    records = [Record(topic_of[type(e)], 0, start + i, None, codec.encode(e), at) for i, e in enumerate(events)]
    folded = fold_batch(state, records, codec, topics, trust_fills=trust)
    return [d.error for d in folded.dead_letters]


def _decide(state: BookState) -> Decision:
    prepare_cycle(state)
    decision = run_cycle(build_request(state, topics, "book", {})).decision
    fold_decision(state, decision)
    return decision


def _config() -> AllocatorConfig:
    return AllocatorConfig(scenario_count=200)  # initial cash 100,000, position cap 2%


def test_a_forged_fill_of_no_allocation_mints_nothing_and_the_cap_still_holds() -> None:
    state = BookState.new(_config())
    equity = state.portfolio.equity
    dead = _fold(state, _fill("forged", "never", "none", 1.0, fee=-900_000.0))
    assert len(dead) == 1 and "Fill.fee" in dead[0]
    # A plausible-looking fill of an allocation that never existed: refused, not folded either.
    dead = _fold(state, _fill("forged2", "never", "none", 50_000.0))
    assert len(dead) == 1 and "not an allocation a committed decision funded" in dead[0]
    assert state.portfolio.equity == equity and state.portfolio.cash == equity and not state.portfolio.holdings
    _fold(state, _proposal("big", 15_000.0))
    allocation = _decide(state).allocations[0]
    assert allocation.size <= 0.02 * equity + 1e-6, allocation


def test_a_fill_counts_for_at_most_its_funded_size_with_a_bounded_fee() -> None:
    state = BookState.new(_config())
    _fold(state, _proposal("p", 1_000.0))
    decision = _decide(state)
    [a] = decision.allocations
    assert a.status is AllocationStatus.FUNDED and a.size > 0
    half = a.size / 2
    over_fee = 0.05 * half * 1.01
    dead = _fold(state, _fill("f0", decision.decision_id, "p", half, fee=over_fee))
    assert len(dead) == 1 and "Fill.fee" in dead[0] and "max_fee_rate" in dead[0]
    interim = dataclasses.replace(
        _fill("f1", decision.decision_id, "p", half, fee=0.05 * half), status=FillStatus.PARTIAL
    )
    dead = _fold(state, interim)
    assert dead == []
    dead = _fold(state, _fill("fx", decision.decision_id, "p", half, market="elsewhere"))
    assert len(dead) == 1 and "Fill.market_id/side" in dead[0]
    cash = state.portfolio.cash
    dead = _fold(state, _fill("f2", decision.decision_id, "p", half + 1.0))
    assert len(dead) == 1 and "exceeds the funded size" in dead[0]
    assert state.portfolio.cash == cash
    assert _fold(state, _fill("f3", decision.decision_id, "p", half)) == []


def test_a_late_fill_still_counts_against_its_allocation_after_the_reservation_expired() -> None:
    state = BookState.new(_config())
    _fold(state, _proposal("p", 1_000.0))
    decision = _decide(state)
    size = decision.allocations[0].size
    later = T + 10 * 3_600_000
    _fold(state, _proposal("q", 1_000.0), at=later)
    _decide(state)  # the first reservation expires here
    assert ("trust.book-0000000001", "a", "p") not in state.portfolio.reservations
    assert _fold(state, _fill("late", decision.decision_id, "p", size), at=later) == []
    assert len(_fold(state, _fill("again", decision.decision_id, "p", size), at=later)) == 1


def test_the_batch_of_a_version_1_decision_folds_any_in_bounds_fill() -> None:
    state = BookState.new(_config())
    assert _fold(state, _fill("old", "never", "none", 100.0, fee=50.0), trust=True) == []
    assert state.portfolio.cash == 100_000.0 - 150.0


def test_two_agents_one_proposal_id_each_fill_counts_for_its_own_allocation() -> None:
    """rules.md §2.2, §11.1: proposal ids are unique per agent, so a fill names its agent; a fill without one
    (written before Fill version 2) is refused where the decision funded that id for several agents."""
    state = BookState.new(_config())
    _fold(state, _proposal("p", 1_000.0, agent="a"), _proposal("p", 600.0, agent="b"))
    decision = _decide(state)
    funded = {a.agent_id: a for a in decision.allocations}
    assert set(funded) == {"a", "b"} and all(a.status is AllocationStatus.FUNDED for a in funded.values())
    assert not any(r.code.value == "DUPLICATE" for a in decision.allocations for r in a.reasons)
    cash = state.portfolio.cash
    dead = _fold(state, _fill("ambiguous", decision.decision_id, "p", 100.0))
    assert len(dead) == 1 and "Fill.agent_id" in dead[0] and "several agents" in dead[0]
    assert state.portfolio.cash == cash
    # b's allocation is 600: a fill of 1,000 under b's name is over its size, under a's it is not.
    dead = _fold(state, _fill("b-over", decision.decision_id, "p", 1_000.0, agent="b"))
    assert len(dead) == 1 and "exceeds the funded size 600.0" in dead[0]
    assert _fold(state, _fill("a-whole", decision.decision_id, "p", 1_000.0, agent="a")) == []
    assert _fold(state, _fill("b-whole", decision.decision_id, "p", 600.0, agent="b")) == []
    assert state.portfolio.cash == cash - 1_600.0 and not state.portfolio.reservations
    dead = _fold(state, _fill("c", decision.decision_id, "p", 1.0, agent="c"))
    assert len(dead) == 1 and "'c'" in dead[0] and "not an allocation" in dead[0]


def test_a_fill_without_an_agent_id_still_counts_where_its_proposal_id_names_one_allocation() -> None:
    state = BookState.new(_config())
    _fold(state, _proposal("p", 1_000.0))
    decision = _decide(state)
    assert _fold(state, _fill("old-style", decision.decision_id, "p", 1_000.0)) == []
    assert not state.portfolio.reservations


def _funded(state: BookState, pid: str = "p", size: float = 1_000.0) -> Decision:
    _fold(state, _proposal(pid, size))
    decision = _decide(state)
    assert decision.allocations[0].status is AllocationStatus.FUNDED
    return decision


def test_a_fill_far_below_its_limit_price_mints_nothing() -> None:
    """An outside probe: a fill of a funded 1,500 at price 1e-6 bought 1.5e9 contracts; the market's honest
    resolution then made equity 1.5e9 and the next decision funded 45x the per-trade cap. A fill may now be at most
    `max_fill_price_improvement` (0.5) below its allocation's limit price (the proposal's 0.6 here); a worse price buys
    fewer contracts and counts."""
    from schemas.events import MarketResolution, Outcome

    state = BookState.new(_config())
    decision = _funded(state)
    size = decision.allocations[0].size
    cash = state.portfolio.cash
    cheap = dataclasses.replace(_fill("f-cheap", decision.decision_id, "p", size), price=1e-6)
    dead = _fold(state, cheap)
    assert len(dead) == 1 and "Fill.price: 1e-06 is more than 50% below the allocation's limit price 0.6" in dead[0]
    assert state.portfolio.cash == cash and not state.portfolio.holdings
    edge = dataclasses.replace(
        _fill("f-edge", decision.decision_id, "p", size / 2), price=0.3, status=FillStatus.PARTIAL
    )
    worse = dataclasses.replace(_fill("f-worse", decision.decision_id, "p", size / 2), price=0.9)
    assert _fold(state, edge, worse) == []
    [holding] = state.portfolio.holdings.values()
    assert holding.contracts == size / 2 / 0.3 + size / 2 / 0.9
    resolution = MarketResolution("m-p", Outcome.YES, T + 5_000)
    folded = fold_batch(state, [Record(topics.pnl, 0, 0, None, codec.encode(resolution), T + 5_000)], codec, topics)
    assert not folded.dead_letters
    assert state.portfolio.equity < 100_000.0 + 3 * size  # won: the contracts, at most 1/0.3 of the stake


def test_a_fill_id_counts_once_whether_its_first_report_was_taken_or_refused() -> None:
    """An outside probe: the same fill delivered twice was paid twice by the book (available fell by 1,500 for a fill
    of 750) while the projection, keyed by fill_id, kept one; and a refused report followed by a valid one of the
    same id was counted by the book while the projection kept the refused row. Under `fill_rules` 2 a fill_id counts
    once: any later report with it is a dead letter naming it (3 lets only an accepted report take it: below)."""
    state = BookState.new(_config().replace(fill_rules=2))
    decision = _funded(state)
    half = decision.allocations[0].size / 2
    first = dataclasses.replace(_fill("f1", decision.decision_id, "p", half), status=FillStatus.PARTIAL)
    assert _fold(state, first) == []
    cash = state.portfolio.cash
    dead = _fold(state, first)
    assert len(dead) == 1 and "Fill.fill_id: 'f1' was reported already" in dead[0]
    assert state.portfolio.cash == cash
    refused = dataclasses.replace(_fill("f2", decision.decision_id, "p", half), filled_size=-5.0)
    assert len(_fold(state, refused)) == 1
    dead = _fold(state, _fill("f2", decision.decision_id, "p", half))
    assert len(dead) == 1 and "Fill.fill_id: 'f2' was reported already" in dead[0]
    assert state.portfolio.cash == cash
    assert _fold(state, _fill("f3", decision.decision_id, "p", half)) == []  # a new id for the rest counts
    assert state.portfolio.cash == cash - half


def test_a_taken_fill_id_is_named_as_taken_by_any_report_and_an_empty_one_is_refused() -> None:
    """An outside probe: a bogus report (no such allocation) took the id a genuine report used next, which was then
    refused as "the same report delivered again", a cause the executor could not recognise. The id stays taken (the
    projection keeps one row per id, so the book and it agree), and with `fill_rules` 3 the refusal says an earlier
    report, accepted or refused, took it; docs/security.md asks executors for unguessable ids. An empty id is refused
    and taken by nothing."""
    state = BookState.new(_config())
    assert state.portfolio.config.fill_rules == 3
    decision = _funded(state)
    size = decision.allocations[0].size
    dead = _fold(state, _fill("exec-7", decision.decision_id, "no-such-proposal", size))
    assert len(dead) == 1 and "not an allocation a committed decision funded" in dead[0]
    dead = _fold(state, _fill("exec-7", decision.decision_id, "p", size / 2))
    assert len(dead) == 1 and "Fill.fill_id: 'exec-7' was taken by an earlier report, accepted or refused" in dead[0]
    for _ in range(2):
        dead = _fold(state, _fill("", decision.decision_id, "p", size / 2))
        assert len(dead) == 1 and "Fill.fill_id: empty" in dead[0]
    cash = state.portfolio.cash
    assert _fold(state, _fill("exec-8", decision.decision_id, "p", size / 2)) == []
    assert state.portfolio.cash == cash - size / 2


def test_a_report_says_what_it_executed() -> None:
    """An outside probe: 25 funded allocations each got a FILLED report of size 0, then their real FAILED report;
    the FILLED counted as a success and ended the allocation, so every FAILED was refused and the book stayed ACTIVE
    at a real failure rate of 100%. With `fill_rules` 3 a FILLED report of nothing, a FAILED or REJECTED one that says
    it filled something, and a time outside [0, 2**62] are refused; the real FAILED then counts."""
    state = BookState.new(_config())
    decision = _funded(state)
    size = decision.allocations[0].size
    nothing = _fill("z1", decision.decision_id, "p", 0.0)
    dead = _fold(state, nothing)
    assert len(dead) == 1 and "Fill.filled_size: a FILLED report of nothing" in dead[0]
    said = dataclasses.replace(_fill("z2", decision.decision_id, "p", 50.0), status=FillStatus.FAILED)
    dead = _fold(state, said)
    assert len(dead) == 1 and "Fill.filled_size: 50.0 on a FAILED report" in dead[0]
    for time in (-1, 2**62 + 1):
        dead = _fold(state, dataclasses.replace(_fill(f"t{time}", decision.decision_id, "p", size), time=time))
        assert len(dead) == 1 and f"Fill.time: {time}" in dead[0]
    reports = state.portfolio.governor.failure_outcomes
    failed = dataclasses.replace(_fill("z3", decision.decision_id, "p", 0.0), status=FillStatus.FAILED)
    assert _fold(state, failed) == []
    assert state.portfolio.governor.failure_outcomes == (*reports, True)  # the failure counts
    # After a PARTIAL, a FILLED of 0 more is the final report of what was executed: it counts as a success.
    state = BookState.new(_config())
    decision = _funded(state)
    part = dataclasses.replace(_fill("q1", decision.decision_id, "p", 30.0), status=FillStatus.PARTIAL)
    assert _fold(state, part, _fill("q2", decision.decision_id, "p", 0.0)) == []


def test_a_book_recorded_without_fill_rules_folds_fills_as_it_did() -> None:
    """A configuration recorded before the keys means `fill_rules` 1 and `max_fill_price_improvement` 1: its logs
    replay and audit as recorded."""
    new_keys = ("fill_rules", "max_fill_price_improvement")
    recorded = {k: v for k, v in _config().to_mapping().items() if k not in new_keys}
    state = BookState.new(AllocatorConfig.from_recorded(recorded))
    assert (state.portfolio.config.fill_rules, state.portfolio.config.max_fill_price_improvement) == (1, 1.0)
    decision = _funded(state)
    half = decision.allocations[0].size / 2
    cheap = dataclasses.replace(_fill("f1", decision.decision_id, "p", half), price=1e-6)
    assert _fold(state, cheap) == [] and _fold(state, cheap) == []
    assert state.portfolio.cash == 100_000.0 - 2 * half


def test_a_partial_fill_keeps_the_rest_reserved_and_a_final_report_ends_the_allocation() -> None:
    """An outside probe: any report released the whole reservation while the allocation could still be filled to
    its size: five 1-unit PARTIAL fills freed the market's cap room, five new allocations took it, and the first
    ones were then filled too, 19,995 in a market capped at 10,000. A PARTIAL now keeps the rest reserved, and a
    final report (FILLED, FAILED, REJECTED) ends the allocation."""
    state = BookState.new(_config())
    decision = _funded(state)
    size = decision.allocations[0].size
    partial = dataclasses.replace(_fill("f1", decision.decision_id, "p", 1.0), status=FillStatus.PARTIAL)
    assert _fold(state, partial) == []
    assert state.portfolio.reserved == size - 1.0
    assert state.portfolio.cash == 100_000.0 - 1.0
    failed = dataclasses.replace(_fill("f2", decision.decision_id, "p", 0.0), status=FillStatus.FAILED)
    assert _fold(state, failed) == []
    assert state.portfolio.reserved == 0.0  # the order ended: the rest is released
    dead = _fold(state, _fill("f3", decision.decision_id, "p", size - 1.0))
    assert len(dead) == 1 and "was ended by a FILLED, FAILED or REJECTED report" in dead[0]
    assert state.portfolio.cash == 100_000.0 - 1.0


def test_a_market_that_resolved_takes_no_fill_mark_or_second_resolution() -> None:
    """An outside probe: after a market resolved NO, a fill there was folded at cost (its loss hidden from the kill
    switch), a mark of 0.999999 raised the high-water mark, and a second resolution, YES, paid out."""
    from schemas.events import MarketResolution, Outcome, PnlMark

    state = BookState.new(_config())
    decision = _funded(state)
    size = decision.allocations[0].size
    resolved = MarketResolution("m-p", Outcome.NO, T + 3_000)
    records = [
        Record(topics.pnl, 0, 0, None, codec.encode(resolved), T + 3_000),
        Record(topics.fills, 0, 1, None, codec.encode(_fill("late", decision.decision_id, "p", size)), T + 3_001),
        Record(topics.pnl, 0, 2, None, codec.encode(PnlMark("m-p", 0.999999, T + 3_002)), T + 3_002),
        Record(topics.pnl, 0, 3, None, codec.encode(MarketResolution("m-p", Outcome.YES, T + 3_003)), T + 3_003),
    ]
    dead = fold_batch(state, records, codec, topics).dead_letters
    assert [d.offset for d in dead] == [1, 2, 3]
    assert all("'m-p' has resolved" in d.error for d in dead)
    assert state.portfolio.cash == 100_000.0 and state.portfolio.equity == 100_000.0
    # An outside probe: the open allocation there kept its reservation until the timeout, since even its FAILED report
    # was refused. With `fill_rules` 3 a report that executed nothing ends it and releases the reservation.
    held = state.portfolio.available
    failed = dataclasses.replace(_fill("failed", decision.decision_id, "p", 0.0), status=FillStatus.FAILED)
    assert _fold(state, failed) == []
    assert state.portfolio.available == held + size


def test_a_book_recorded_without_fill_rules_releases_a_reservation_on_any_report() -> None:
    recorded = {
        k: v for k, v in _config().to_mapping().items() if k not in ("fill_rules", "max_fill_price_improvement")
    }
    state = BookState.new(AllocatorConfig.from_recorded(recorded))
    decision = _funded(state)
    partial = dataclasses.replace(_fill("f1", decision.decision_id, "p", 1.0), status=FillStatus.PARTIAL)
    assert _fold(state, partial) == []
    assert state.portfolio.reserved == 0.0
    assert _fold(state, _fill("f2", decision.decision_id, "p", 10.0)) == []
