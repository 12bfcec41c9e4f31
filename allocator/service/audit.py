"""`allocator audit`: re-run every recorded cycle on the state it saw and compare (rules.md §10)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from allocator.engine.cycle import CycleOutcome, run_cycle
from allocator.engine.request import CycleRequest
from allocator.engine.verify import DecisionInvariantError, verify_decision
from allocator.service.sequencer import BookState, build_request, read_decisions, replay_decisions
from book.config import AllocatorConfig
from eventlog.port import EventLog, TopicPartition, Topics
from schemas.codec import EventCodec
from schemas.events import Decision, SolverPath

SIZE_REL_TOL = 1e-9
TIMED_PATHS = (SolverPath.MIP_TIME_LIMIT, SolverPath.PRIORITY_FALLBACK)


@dataclass
class Finding:
    """The audit of one recorded decision."""

    decision_id: str
    cycle: int
    offset: int
    solver_path: str
    verdict: str  # MATCH, CONSTRAINTS_HELD (a timed-out solve), MISMATCH
    problems: list[str] = field(default_factory=list)
    objective_gap_to_resolve: float | None = None


@dataclass
class AuditReport:
    findings: list[Finding]

    @property
    def mismatches(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "MISMATCH"]

    def to_json(self) -> dict[str, Any]:
        return {
            "decisions": len(self.findings),
            "matched": sum(f.verdict == "MATCH" for f in self.findings),
            "constraints_held": sum(f.verdict == "CONSTRAINTS_HELD" for f in self.findings),
            "mismatches": len(self.mismatches),
            "findings": [f.__dict__ for f in self.findings],
        }


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= SIZE_REL_TOL * max(abs(a), abs(b), 1.0)


def compare(recorded: Decision, recomputed: Decision) -> list[str]:
    """Every difference that matters: statuses, reasons, sizes (1e-9 relative), orders, governor, path.

    Timing (solve_ms) may differ; the objective and gap follow from the sizes.
    """
    problems: list[str] = []
    for name in ("decision_id", "book_id", "cycle", "decided_at", "governor_state", "opportunity_window_ms",
                 "config_hash", "scenario_seed", "solver_path", "inputs"):  # fmt: skip
        if getattr(recorded, name) != getattr(recomputed, name):
            problems.append(f"{name}: recorded {getattr(recorded, name)!r}, re-run {getattr(recomputed, name)!r}")
    for name in ("equity", "available", "high_water_mark", "objective"):
        if not _close(getattr(recorded, name), getattr(recomputed, name)):
            problems.append(f"{name}: recorded {getattr(recorded, name)!r}, re-run {getattr(recomputed, name)!r}")
    if len(recorded.allocations) != len(recomputed.allocations):
        problems.append(f"allocations: recorded {len(recorded.allocations)}, re-run {len(recomputed.allocations)}")
    for a, b in zip(recorded.allocations, recomputed.allocations, strict=False):
        where = f"allocation {a.proposal_id}"
        if a.proposal_id != b.proposal_id:
            problems.append(f"allocation order: recorded {a.proposal_id}, re-run {b.proposal_id}")
            continue
        if a.status != b.status:
            problems.append(f"{where}: status recorded {a.status.value}, re-run {b.status.value}")
        if [r.code for r in a.reasons] != [r.code for r in b.reasons]:
            problems.append(f"{where}: reasons recorded {[r.code.value for r in a.reasons]}, re-run "
                            f"{[r.code.value for r in b.reasons]}")  # fmt: skip
        if not _close(a.size, b.size) or not _close(a.netted_size, b.netted_size):
            problems.append(f"{where}: size recorded {a.size!r}/{a.netted_size!r}, re-run {b.size!r}/{b.netted_size!r}")
    recorded_orders = [(o.market_id, o.side, o.size) for o in recorded.orders]
    recomputed_orders = [(o.market_id, o.side, o.size) for o in recomputed.orders]
    if len(recorded_orders) != len(recomputed_orders) or any(
        x[:2] != y[:2] or not _close(x[2], y[2]) for x, y in zip(recorded_orders, recomputed_orders, strict=False)
    ):
        problems.append(f"orders: recorded {recorded_orders}, re-run {recomputed_orders}")
    return problems


def audit_log(
    reader: EventLog,
    codec: EventCodec,
    topics: Topics,
    config: AllocatorConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Audit every decision in the log. Each is re-run on the state rebuilt from the inputs it recorded; the
    state then moves on with the re-run decision, so one bad record is reported alone."""
    decisions = read_decisions(reader, codec, topics)
    offsets = {id(d): r.offset for r, d in decisions}
    findings: list[Finding] = []
    recomputed_of: dict[int, Decision] = {}

    def on_decision(state: BookState, recorded: Decision) -> Decision:
        inputs = {TopicPartition(pos.topic, pos.partition): pos.offset for pos in recorded.inputs}
        request = build_request(state, topics, recorded.book_id, inputs, recorded.decision_id)
        finding = Finding(
            recorded.decision_id, recorded.cycle, offsets[id(recorded)], recorded.solver_path.value, "MATCH"
        )
        outcome = _rerun(request, recorded)
        recomputed = outcome.decision
        rerun_timed_out = recomputed.solver_path in TIMED_PATHS and recorded.solver_path not in TIMED_PATHS
        if rerun_timed_out:
            # The re-run ran out of time on this machine: it proves nothing either way about the record, so
            # the record is checked like a timed-out solve, and the report says so.
            finding.problems.append("re-run did not finish within the time limit here: constraints checked only")
        if recorded.solver_path in TIMED_PATHS or rerun_timed_out:
            # A timed-out solve cannot be re-timed: check that every constraint held, and how far it was
            # from a full re-solve.
            finding.verdict = "CONSTRAINTS_HELD"
            try:
                columns = {pid: i for i, pid in enumerate(outcome.column_ids)}
                verify_decision(request, recorded, outcome.problem, columns)
            except DecisionInvariantError as exc:
                finding.verdict = "MISMATCH"
                finding.problems += exc.problems
            if recomputed.objective > 0:
                finding.objective_gap_to_resolve = (recomputed.objective - recorded.objective) / recomputed.objective
            folded = recorded if finding.verdict != "MISMATCH" else recomputed
        else:
            finding.problems = compare(recorded, recomputed)
            if finding.problems:
                finding.verdict = "MISMATCH"
            folded = recomputed
        findings.append(finding)
        recomputed_of[recorded.cycle] = recomputed
        if progress is not None:
            progress(len(findings), len(decisions))
        return folded

    def on_duplicate(folded: Decision, duplicate: Decision) -> None:
        problems = compare(duplicate, recomputed_of.get(duplicate.cycle, folded))
        problems.insert(0, f"a second decision for cycle {duplicate.cycle}")
        findings.append(
            Finding(
                duplicate.decision_id,
                duplicate.cycle,
                offsets[id(duplicate)],
                duplicate.solver_path.value,
                "MISMATCH",
                problems,
            )
        )

    replay_decisions(reader, codec, topics, config, on_decision, decisions, on_duplicate)
    findings.sort(key=lambda f: f.offset)
    return AuditReport(findings)


def _rerun(request: CycleRequest, recorded: Decision) -> CycleOutcome:
    """Re-run a cycle with the configuration it recorded (the solver's stages depend on its time limit, never
    on the clock, so the same input decides the same way). A recorded optimal solve whose re-run ran out of
    time on a busier machine is tried twice more before it is reported."""
    outcome = run_cycle(request)
    for _ in range(2):
        if recorded.solver_path is not SolverPath.MIP_OPTIMAL or outcome.decision.solver_path is SolverPath.MIP_OPTIMAL:
            break
        outcome = run_cycle(request)
    return outcome


def summary_table(report: AuditReport) -> str:
    lines = [f"{'cycle':>7} {'decision':<28} {'path':<18} {'verdict':<17} detail"]
    for f in report.findings:
        detail = "; ".join(f.problems[:2]) if f.problems else (
            f"objective {f.objective_gap_to_resolve:+.2%} vs re-solve" if f.objective_gap_to_resolve is not None
            and math.isfinite(f.objective_gap_to_resolve) else "")  # fmt: skip
        lines.append(f"{f.cycle:>7} {f.decision_id:<28} {f.solver_path:<18} {f.verdict:<17} {detail}")
    data = report.to_json()
    lines.append(
        f"{data['decisions']} decisions: {data['matched']} matched, {data['constraints_held']} timed-out solves "
        f"held every constraint, {data['mismatches']} mismatches"
    )
    return "\n".join(lines)


def write_report(report: AuditReport, path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(report.to_json(), out, indent=2)
