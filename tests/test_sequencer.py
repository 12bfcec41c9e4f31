"""The sequencer's batch fold: positions, log time, dead letters and governor changes, whatever the record order."""

from __future__ import annotations

from allocator.engine.cycle import run_cycle
from allocator.service.sequencer import BookState, build_request, fold_batch
from book.config import AllocatorConfig
from book.portfolio import Funded
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
    # what decision d funded (rules.md §11.1)
    state.portfolio.funded[("d", "p")] = {proposal.agent_id: Funded("m", Side.BUY, 5_000.0)}
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
    assert list(state.portfolio.pending) == [(proposal.agent_id, "p")]


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


# --- log time (rules.md §1.5): the log's clock, never a writer's ------------------------------------------


def _proposal(pid: str, created_at: int, urgency: float = 0.01) -> Proposal:
    return Proposal(
        pid, "a", "s", f"m-{pid}", Side.BUY, 0.5, 0.04, 0.9, 500.0, 100.0, 0.1, urgency, f"k-{pid}", created_at
    )


def test_an_undecodable_record_never_moves_the_clock() -> None:
    state = BookState.new(AllocatorConfig())
    ten_years = 10 * 365 * 86_400_000
    fold_batch(
        state,
        [
            Record(topics.proposals, 0, 0, None, codec.encode(_proposal("p", T)), T),
            Record(topics.proposals, 0, 1, None, b"\xc3\x01 garbage", T + ten_years),
        ],
        codec,
        topics,
    )
    assert state.portfolio.last_time == T


def test_a_proposal_dated_ahead_of_log_time_is_rejected_and_moves_nothing() -> None:
    config = AllocatorConfig(scenario_count=200)
    ten_years = 10 * 365 * 86_400_000
    state = BookState.new(config)
    records = [
        Record(topics.proposals, 0, 0, None, codec.encode(_proposal("future", T + ten_years)), T),
        Record(topics.proposals, 0, 1, None, codec.encode(_proposal("skewed", T + 5_001)), T),
        Record(topics.proposals, 0, 2, None, codec.encode(_proposal("within", T + 5_000)), T),
        Record(topics.proposals, 0, 3, None, codec.encode(_proposal("honest", T)), T),
    ]
    fold_batch(state, records, codec, topics)
    assert state.portfolio.last_time == T
    decision = {a.proposal_id: a for a in run_cycle(build_request(state, topics, "book", {})).decision.allocations}
    for pid in ("future", "skewed"):
        assert decision[pid].status is AllocationStatus.REJECTED
        assert str(decision[pid].reasons[0].detail).startswith("created_at")
    assert decision["within"].status is AllocationStatus.FUNDED
    assert decision["honest"].status is AllocationStatus.FUNDED


def test_a_proposal_lives_from_the_log_time_it_was_received_not_from_its_created_at() -> None:
    config = AllocatorConfig(scenario_count=200)
    state = BookState.new(config)
    # Created long ago by the writer's clock, received now: its 100 s lifetime counts from now.
    late = _proposal("late", T - 3_600_000, urgency=0.01)
    fold_batch(state, [Record(topics.proposals, 0, 0, None, codec.encode(late), T)], codec, topics)
    mark = PnlMark("other", 0.5, T + 100_000)
    fold_batch(state, [Record(topics.pnl, 0, 0, None, codec.encode(mark), T + 100_000)], codec, topics)
    decision = run_cycle(build_request(state, topics, "book", {})).decision
    assert [a.status for a in decision.allocations] == [AllocationStatus.FUNDED]
    later = PnlMark("other", 0.5, T + 100_001)
    state2 = BookState.new(config)
    fold_batch(state2, [Record(topics.proposals, 0, 0, None, codec.encode(late), T)], codec, topics)
    fold_batch(state2, [Record(topics.pnl, 0, 0, None, codec.encode(later), T + 100_001)], codec, topics)
    assert [a.status for a in run_cycle(build_request(state2, topics, "book", {})).decision.allocations] == [
        AllocationStatus.EXPIRED
    ]


def test_a_flood_of_proposals_past_max_undecided_proposals_is_dead_lettered_not_received() -> None:
    """An outside probe: pending proposals were unbounded, and a decision names every one: 45,000 of them made
    decisions of 19.9 MB, past the log's 16 MiB record limit, so the book could never publish again. Past
    `max_undecided_proposals` a proposal is a dead letter that claims nothing; a decision frees the room."""
    from allocator.engine.cycle import run_cycle
    from allocator.service.sequencer import BookState, build_request, fold_batch, fold_decision, prepare_cycle
    from book.config import AllocatorConfig
    from eventlog.port import Record, Topics
    from schemas.codec import SingleObjectCodec
    from schemas.events import Proposal, Side

    codec, topics, t = SingleObjectCodec(), Topics("flood"), 1_790_000_000_000
    state = BookState.new(AllocatorConfig(scenario_count=100, max_undecided_proposals=5))
    offset = [0]

    def send(*proposals: Proposal) -> list[str]:
        records = []
        for p in proposals:
            records.append(Record(topics.proposals, 0, offset[0], None, codec.encode(p), t))
            offset[0] += 1
        return [d.error for d in fold_batch(state, records, codec, topics).dead_letters]

    def proposal(i: int) -> Proposal:
        return Proposal(f"p{i}", "flooder", "s", f"m{i}", Side.BUY, 0.5, 0.04, 0.9, 500.0, 50.0, 0.05, 0.1, "k", t)

    assert send(*(proposal(i) for i in range(5))) == []
    dead = send(proposal(5), proposal(6), proposal(0))  # the copy of p0 adds nothing: let through, ignored
    assert len(dead) == 2 and all("holds 5 undecided proposals (max_undecided_proposals 5)" in d for d in dead)
    prepare_cycle(state)
    decision = run_cycle(build_request(state, topics, "book", {})).decision
    fold_decision(state, decision)
    assert sorted(a.proposal_id for a in decision.allocations) == [f"p{i}" for i in range(5)]
    assert send(proposal(5)) == []  # decided ones left room; p5 was never received, so it is new


def test_one_agents_flood_fills_only_its_own_share_and_leaves_room_for_the_others() -> None:
    """An outside probe: `max_undecided_proposals` was one bound for the whole book, so one agent that kept it full
    had every other agent's proposals dead-lettered. Past `max_undecided_per_agent` the writer's own proposals are
    dead letters naming it; another agent's still come in. On an agent's own topic the writer is the topic's agent:
    forged proposals there under another agent's name count against the forger, and a copy of another agent's
    proposal does too. A decision frees the room."""
    from allocator.service.sequencer import fold_decision, prepare_cycle

    book_topics = Topics("share", agents=("flooder", "honest"))
    state = BookState.new(AllocatorConfig(scenario_count=100, max_undecided_proposals=50, max_undecided_per_agent=3))
    offset = [0]

    def send(topic: str, *proposals: Proposal) -> list[str]:
        records = []
        for p in proposals:
            records.append(Record(topic, 0, offset[0], None, codec.encode(p), T))
            offset[0] += 1
        return [d.error for d in fold_batch(state, records, codec, book_topics).dead_letters]

    def proposal(agent: str, i: int) -> Proposal:
        return Proposal(f"p{i}", agent, "s", f"m{agent}{i}", Side.BUY, 0.5, 0.04, 0.9, 500.0, 50.0, 0.05, 0.1, "k", T)

    flooder, honest = book_topics.proposals_of("flooder"), book_topics.proposals_of("honest")
    assert send(flooder, proposal("flooder", 0), proposal("flooder", 1)) == []
    assert send(flooder, proposal("honest", 9)) == []  # forged: refused UNAUTHORIZED, and the flooder's third
    dead = send(flooder, proposal("flooder", 2), proposal("flooder", 0), proposal("honest", 0))
    # The flooder's own copy of p0 adds nothing and is let through; its new p2 and its copy of honest's p0 are not.
    assert len(dead) == 2 and all("agent 'flooder' has 3 undecided proposals (max_undecided_per_agent 3)" in d
                                  for d in dead)  # fmt: skip
    assert send(honest, *(proposal("honest", i) for i in range(3))) == []  # the other agent's share is its own
    assert "agent 'honest' has 3" in send(honest, proposal("honest", 3))[0]
    prepare_cycle(state)
    decision = run_cycle(build_request(state, book_topics, "book", {})).decision
    fold_decision(state, decision)
    named = sorted((a.agent_id, a.proposal_id) for a in decision.allocations)
    assert named == [("flooder", "p0"), ("flooder", "p1"), ("honest", "p0"), ("honest", "p1"), ("honest", "p2"),
                     ("honest", "p9")]  # fmt: skip
    assert send(flooder, proposal("flooder", 2)) == []  # decided ones left room


def test_a_configuration_recorded_without_max_undecided_per_agent_bounds_no_agent() -> None:
    """Logs written before the key replay as recorded: one agent may hold the whole book's bound there, while a
    configuration file without the key gets the default share."""
    recorded = AllocatorConfig(scenario_count=100, max_undecided_proposals=2_000).to_mapping()
    del recorded["max_undecided_per_agent"]
    records = [
        Record(topics.proposals, 0, i, None, codec.encode(
            Proposal(f"p{i}", "a", "s", f"m{i}", Side.BUY, 0.5, 0.04, 0.9, 500.0, 50.0, 0.05, 0.1, "k", T)), T)
        for i in range(1_200)
    ]  # fmt: skip
    old = BookState.new(AllocatorConfig.from_recorded(recorded))
    assert fold_batch(old, records, codec, topics).dead_letters == ()
    new = BookState.new(AllocatorConfig.from_mapping(recorded))
    dead = fold_batch(new, records, codec, topics).dead_letters
    assert [d.offset for d in dead] == list(range(1_000, 1_200))
