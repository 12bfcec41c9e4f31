"""The sequencer's batch fold: positions, log time, dead letters and governor changes, whatever the record order."""

from __future__ import annotations

from allocator.config import AllocatorConfig
from allocator.eventlog import Record, TopicPartition
from allocator.sequencer import BookState, Topics, fold_batch
from schemas.codec import SingleObjectCodec
from schemas.events import Fill, FillStatus, PnlMark, Proposal, Side

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
