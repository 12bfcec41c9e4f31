"""What the audit compares between a recorded decision and its re-run: every field the decision says, timing aside."""

from __future__ import annotations

import dataclasses

from allocator.engine.cycle import run_cycle
from allocator.service.audit import compare
from allocator.service.sequencer import BookState, build_request, fold_batch
from book.config import AllocatorConfig
from eventlog.port import Record, Topics
from schemas.codec import SingleObjectCodec
from schemas.events import Allocation, AllocationStatus, Decision, Proposal, Reason, Side

T = 1_790_000_000_000
codec = SingleObjectCodec()
topics = Topics("cmp")


def _decision() -> Decision:
    state = BookState.new(AllocatorConfig(scenario_count=200, initial_cash=10_000.0))
    proposals = [
        Proposal(f"p{i}", "a", "s", f"m{i}", Side.BUY, 0.5, 0.04, 0.9, 5_000.0, 50.0, 0.05, 0.1, "k", T)
        for i in range(3)
    ]
    records = [Record(topics.proposals, 0, i, None, codec.encode(p), T) for i, p in enumerate(proposals)]
    fold_batch(state, records, codec, topics)
    decision = run_cycle(build_request(state, topics, "book", {})).decision
    assert any(a.size > 0 for a in decision.allocations) and any(a.reasons for a in decision.allocations)
    return decision


def _with_allocation(d: Decision, index: int, **changes: object) -> Decision:
    allocations = list(d.allocations)
    allocations[index] = dataclasses.replace(allocations[index], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(d, allocations=tuple(allocations))


def test_every_field_of_a_decision_but_its_timing_is_compared() -> None:
    """An outside probe: a funded allocation's side or market edited on an unsigned log re-derived as MATCH (the
    mismatches showed only in later cycles' equity), and so did an edited work_used, gap, reason detail or
    config_version. Each is now a problem of the decision that holds it; solve_ms alone may differ."""
    d = _decision()
    assert compare(d, dataclasses.replace(d, solve_ms=d.solve_ms + 5.0)) == []
    funded = next(i for i, a in enumerate(d.allocations) if a.size > 0)
    explained = next(i for i, a in enumerate(d.allocations) if a.reasons)
    a, b = d.allocations[funded], d.allocations[explained]
    other = Side.SELL if a.side is Side.BUY else Side.BUY
    edits: dict[str, Decision] = {
        "market and side": _with_allocation(d, funded, side=other),
        "market and side ": _with_allocation(d, funded, market_id="m-elsewhere"),
        "reasons' details": _with_allocation(d, explained, reasons=tuple(
            Reason(r.code, f"{r.detail} (edited)") for r in b.reasons)),
        "work_used": dataclasses.replace(d, work_used=d.work_used + 1),
        "gap": dataclasses.replace(d, gap=0.5 if d.gap != 0.5 else 0.25),
        "config_version": dataclasses.replace(d, config_version="edited"),
    }  # fmt: skip
    for field, edited in edits.items():
        problems = compare(edited, d)
        assert len(problems) == 1 and field.strip() in problems[0], (field, problems)


def test_a_decision_of_the_first_wire_version_is_compared_without_its_work_gap_and_details() -> None:
    """Decisions written under the first sizing rule (a size margin) counted no work, and their bound and reasons'
    details followed from sizes the margin lets differ: those are not compared, the rest is."""
    d = _decision()
    loose = dataclasses.replace(d, work_used=0, gap=None)
    assert compare(loose, d, margin=1e-3) == []
    unfunded = Allocation("px", "a", "m", None, 0.0, 0.0, AllocationStatus.REJECTED, ())
    assert compare(dataclasses.replace(d, allocations=(*d.allocations, unfunded)), d, margin=1e-3) != []
