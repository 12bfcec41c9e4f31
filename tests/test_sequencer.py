"""The sequencer's batch fold: positions, log time, dead letters and governor changes, whatever the record order."""

from __future__ import annotations

from allocator.engine.cycle import run_cycle
from allocator.service.sequencer import BookState, build_request, fold_batch
from book.config import AllocatorConfig
from eventlog.port import Record, TopicPartition, Topics
from schemas.codec import SingleObjectCodec
from schemas.events import AllocationStatus, Fill, FillStatus, MarketResolution, Outcome, PnlMark, Proposal, Side

T = 1_790_000_000_000
codec = SingleObjectCodec()
topics = Topics("seq")


def test_a_batch_records_the_next_offset_per_partition_and_the_latest_log_time() -> None:
    proposal = Proposal("p", "a", "s", "m", Side.BUY, 0.5, 0.04, 0.9, 100.0, 10.0, 0.1, 0.01, "k", T)
    fill = Fill("f", "d", "p", "m", Side.BUY, 5_000.0, 5_000.0, 0.5, 0.0, FillStatus.FILLED, None, T)
    records = [
        Record(topics.pnl, 1, 7, None, codec.encode(PnlMark("m", 0.2, T)), T + 30),  # trips the kill switch
        Record(topics.proposals, 0, 4, None, codec.encode(proposal), T + 10),
        Record(topics.fills, 0, 2, None, codec.encode(fill), T + 20),
        Record(topics.proposals, 0, 3, None, b"not avro", T + 5),
        Record(topics.pnl, 1, 6, None, codec.encode(proposal), T + 25),  # a proposal on the pnl topic
    ]
    state = BookState.new(AllocatorConfig(initial_cash=10_000.0))
    state.positions[TopicPartition(topics.proposals, 0)] = 9  # already further on: never moves back
    folded = fold_batch(state, records, codec, topics)
    assert state.positions == {
        TopicPartition(topics.proposals, 0): 9,
        TopicPartition(topics.fills, 0): 3,
        TopicPartition(topics.pnl, 1): 8,
    }
    assert state.portfolio.last_time == T + 30
    assert [(d.topic, d.offset) for d in folded.dead_letters] == [(topics.proposals, 3), (topics.pnl, 6)]
    assert [(c.new_state, time, source) for c, time, source in folded.changes] == [
        ("TRIPPED", T + 30, f"{topics.pnl}/1/7")
    ]
    assert list(state.portfolio.pending) == ["p"]


def test_a_pending_proposal_whose_market_resolved_expires_in_the_next_decision() -> None:
    config = AllocatorConfig(scenario_count=200)
    gone = Proposal("gone", "a", "s", "m-gone", Side.BUY, 0.5, 0.04, 0.9, 500.0, 100.0, 0.1, 0.01, "k", T)
    live = Proposal("live", "a", "s", "m-live", Side.BUY, 0.5, 0.04, 0.9, 500.0, 100.0, 0.1, 0.01, "k2", T)
    records = [
        Record(topics.proposals, 0, 0, None, codec.encode(gone), T),
        Record(topics.proposals, 0, 1, None, codec.encode(live), T),
        Record(topics.pnl, 0, 0, None, codec.encode(MarketResolution("m-gone", Outcome.NO, T + 5)), T + 5),
    ]
    state = BookState.new(config)
    fold_batch(state, records, codec, topics)
    request = build_request(state, Topics("t"), "book", {})
    assert request.resolved_markets == frozenset({"m-gone"})
    decision = {a.proposal_id: a for a in run_cycle(request).decision.allocations}
    assert decision["gone"].status is AllocationStatus.EXPIRED
    assert decision["gone"].reasons[0].detail == "market 'm-gone' has resolved"
    assert decision["live"].status is AllocationStatus.FUNDED
