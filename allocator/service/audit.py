"""`allocator audit`: re-run every recorded cycle on the state it saw and compare (rules.md §10)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from allocator.engine.cycle import CycleOutcome, run_cycle
from allocator.engine.highs_banner import silence_highs_banner
from allocator.engine.request import CycleRequest
from allocator.engine.validation import MAX_EXPECTED_PROFIT
from allocator.engine.verify import DecisionInvariantError, verify_decision
from allocator.service.audit_engines import AuditEngine, SequentialEngine
from allocator.service.chain import UNDECODABLE, Trusted, VerifiedLog, chain_findings, verify_log
from allocator.service.sequencer import build_request, close_enough, first_decision_missing, replay_steps
from book.config import ABSENT_MEANS, AllocatorConfig
from eventlog.port import EventLog, Record, TopicPartition, Topics
from schemas.codec import EventCodec
from schemas.events import Decision, SolverPath
from schemas.text import printable
from schemas.versions import single_object_version

# Only a solve the wall-clock safety net stopped depends on the machine; every other path is re-derived exactly.
TIMED_PATHS = (SolverPath.MIP_TIME_LIMIT,)


# Findings that are not about one record of the decisions topic: not counted among the decisions audited.
NOT_A_RECORD = ("CYCLE_GAP", "HEAD_NOT_REACHED")

# The verdict on a verified decision the audit had no configuration to re-run with (`config_missing`).
NOT_RE_DERIVED = "NOT_RE_DERIVED"


@dataclass
class Finding:
    """The audit of one recorded decision."""

    decision_id: str
    cycle: int
    offset: int
    solver_path: str
    # MATCH, CONSTRAINTS_HELD (stopped by the clock's safety net), MISMATCH, ERROR (the re-run raised),
    # NOT_RE_DERIVED (no configuration to re-run it with)
    verdict: str
    problems: list[str] = field(default_factory=list)
    objective_gap_to_resolve: float | None = None


@dataclass
class AuditReport:
    findings: list[Finding]
    chain_head: str | None = None  # the hash of the last verified decision (docs/audit.md)
    config_missing: str | None = None  # why no decision was re-derived (`config_missing`), for the command to say

    @property
    def not_rederived(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == NOT_RE_DERIVED]

    @property
    def mismatches(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict not in ("MATCH", "CONSTRAINTS_HELD")]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "ERROR"]

    def to_json(self) -> dict[str, Any]:
        return {
            "decisions": sum(f.verdict not in NOT_A_RECORD for f in self.findings),
            "matched": sum(f.verdict == "MATCH" for f in self.findings),
            "constraints_held": sum(f.verdict == "CONSTRAINTS_HELD" for f in self.findings),
            "mismatches": len(self.mismatches),
            "chain_head": self.chain_head,
            "errors": len(self.errors),
            "findings": [f.__dict__ for f in self.findings],
        }


# Upcaster of a rule: decisions written with Decision version 1 were sized by solvers that kept a safety slack of
# 1e-8 relative + 1e-7 absolute inside every limit (today's size exactly to the limit). Their sizes are compared
# within that slack, for up to SLACK_LIMITS limits a size can meet, on the scale of the book's equity.
SAFETY_SLACK_VERSIONS = frozenset({("Decision", 1)})
SLACK_REL, SLACK_ABS, SLACK_LIMITS = 1e-8, 1e-7, 4


# Upcaster of a rule: decisions written with Decision version 1 were all made by solver revision 1 (rules.md §4.8,
# `solver_revision`) with the work budget then in force. Such a log records no configuration, and the `--config`
# that stands for it is re-run with the values of `ABSENT_MEANS` (book/config.py), whatever the file says (a file
# without a key means today's default).
SOLVER_REVISION_1_VERSIONS = frozenset({("Decision", 1)})


def legacy_margin(recorded: Decision) -> float:
    """The size margin of a decision written while solvers kept their safety slack (see SAFETY_SLACK_VERSIONS)."""
    return SLACK_LIMITS * (SLACK_REL * max(abs(recorded.equity), abs(recorded.available)) + SLACK_ABS)


def compare(recorded: Decision, recomputed: Decision, margin: float = 0.0) -> list[str]:
    """Every difference that matters: statuses, reasons, sizes (1e-9 relative), orders, governor, path.

    Only timing (solve_ms) may differ. `margin` (currency) widens the size comparison for decisions written under an
    older sizing rule (`legacy_margin`); the work, the gap and the reasons' details of those are not compared (their
    solver counted no work, and their bound and details followed from the sizes).
    """
    problems: list[str] = []
    objective_margin = margin * sum(
        1 for a in recorded.allocations if a.size > 0
    )  # each funded size within its margin; the objective's coefficients are at most 1
    exact = ["decision_id", "book_id", "cycle", "decided_at", "governor_state", "opportunity_window_ms",
             "config_version", "config_hash", "scenario_seed", "solver_path", "inputs"]  # fmt: skip
    if margin == 0.0:
        exact.append("work_used")
    for name in exact:
        if getattr(recorded, name) != getattr(recomputed, name):
            problems.append(f"{name}: recorded {getattr(recorded, name)!r}, re-run {getattr(recomputed, name)!r}")
    if margin == 0.0 and not _same_number(recorded.gap, recomputed.gap):
        problems.append(f"gap: recorded {recorded.gap!r}, re-run {recomputed.gap!r}")
    for name in ("equity", "available", "high_water_mark", "objective"):
        allowed = objective_margin * MAX_EXPECTED_PROFIT if name == "objective" else 0.0
        if not close_enough(getattr(recorded, name), getattr(recomputed, name), allowed):
            problems.append(f"{name}: recorded {getattr(recorded, name)!r}, re-run {getattr(recomputed, name)!r}")
    if len(recorded.allocations) != len(recomputed.allocations):
        problems.append(f"allocations: recorded {len(recorded.allocations)}, re-run {len(recomputed.allocations)}")
    for a, b in zip(recorded.allocations, recomputed.allocations, strict=False):
        where = f"allocation {a.proposal_id}"
        if (a.proposal_id, a.agent_id) != (b.proposal_id, b.agent_id):
            problems.append(
                f"allocation order: recorded {a.agent_id}/{a.proposal_id}, re-run {b.agent_id}/{b.proposal_id}"
            )
            continue
        if a.status != b.status:
            problems.append(f"{where}: status recorded {a.status.value}, re-run {b.status.value}")
        if (a.market_id, a.side) != (b.market_id, b.side):
            side_a, side_b = (a.side.value if a.side else None), (b.side.value if b.side else None)
            problems.append(f"{where}: market and side recorded {a.market_id} {side_a}, re-run {b.market_id} {side_b}")
        if [r.code for r in a.reasons] != [r.code for r in b.reasons]:
            problems.append(f"{where}: reasons recorded {[r.code.value for r in a.reasons]}, re-run "
                            f"{[r.code.value for r in b.reasons]}")  # fmt: skip
        elif margin == 0.0 and [r.detail for r in a.reasons] != [r.detail for r in b.reasons]:
            problems.append(f"{where}: reasons' details recorded {[r.detail for r in a.reasons]}, re-run "
                            f"{[r.detail for r in b.reasons]}")  # fmt: skip
        if not close_enough(a.size, b.size, margin) or not close_enough(a.netted_size, b.netted_size, margin):
            problems.append(f"{where}: size recorded {a.size!r}/{a.netted_size!r}, re-run {b.size!r}/{b.netted_size!r}")
    recorded_orders = [(o.market_id, o.side, o.size) for o in recorded.orders]
    recomputed_orders = [(o.market_id, o.side, o.size) for o in recomputed.orders]
    if len(recorded_orders) != len(recomputed_orders) or any(
        x[:2] != y[:2] or not close_enough(x[2], y[2], objective_margin)
        for x, y in zip(recorded_orders, recomputed_orders, strict=False)
    ):
        problems.append(f"orders: recorded {recorded_orders}, re-run {recomputed_orders}")
    return problems


def _same_number(a: float | None, b: float | None) -> bool:
    """Bit for bit, NaN (no bound) equal to NaN."""
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


@dataclass(frozen=True)
class AuditTask:
    """What one re-derivation needs, and all it gets: the recorded decision and the request it was made on (the
    state the decision saw, compact: the book's view, the pending proposals, the configuration; never the log)."""

    index: int  # the decision's place among the log's decisions
    request: CycleRequest
    recorded: Decision
    margin: float = 0.0  # the size margin of a decision written under an older sizing rule (`legacy_margin`)


@dataclass(frozen=True)
class Rederived:
    """The verdict on one recorded decision and the re-run decision."""

    verdict: str  # MATCH, CONSTRAINTS_HELD, MISMATCH
    problems: tuple[str, ...]
    objective_gap_to_resolve: float | None
    recomputed: Decision
    fold_recomputed: bool  # after a mismatch the state moves on with the re-run decision, not the record


def rederive(task: AuditTask) -> Rederived:
    """Re-run one recorded cycle on the state it saw and judge the record (runs on a worker)."""
    silence_highs_banner()  # a worker's first solver must not print on its stdout
    request, recorded = task.request, task.recorded
    problems: list[str] = []
    gap: float | None = None
    outcome = _rerun(request, recorded)
    recomputed = outcome.decision
    rerun_timed_out = recomputed.solver_path in TIMED_PATHS and recorded.solver_path not in TIMED_PATHS
    if rerun_timed_out:
        # The re-run ran out of time on this machine: it proves nothing either way about the record, so the
        # record is checked like a timed-out solve, and the report says so.
        problems.append("re-run did not finish within the time limit here: constraints checked only")
    if recorded.solver_path in TIMED_PATHS or rerun_timed_out:
        # A timed-out solve cannot be re-timed: check that every constraint held, and how far it was from a
        # full re-solve.
        verdict = "CONSTRAINTS_HELD"
        try:
            columns = {key: i for i, key in enumerate(outcome.column_ids)}
            verify_decision(request, recorded, outcome.problem, columns)
        except DecisionInvariantError as exc:
            verdict = "MISMATCH"
            problems += exc.problems
        if recomputed.objective > 0:
            gap = (recomputed.objective - recorded.objective) / recomputed.objective
    else:
        problems = compare(recorded, recomputed, task.margin)
        verdict = "MISMATCH" if problems else "MATCH"
    return Rederived(verdict, tuple(problems), gap, recomputed, verdict == "MISMATCH")


Progress = Callable[[int, int], None]


def audit_log(
    reader: EventLog,
    codec: EventCodec,
    topics: Topics,
    config: AllocatorConfig | None = None,
    progress: Progress | None = None,
    engine: AuditEngine | None = None,
    work: Callable[[AuditTask], Rederived] = rederive,
    timing: AuditTiming | None = None,
    trusted: Trusted | None = None,
    head: str | None = None,
    verified: VerifiedLog | None = None,
) -> AuditReport:
    """Audit every decision in the log: each is re-run on the state rebuilt from the inputs it recorded.

    One sequential pass folds the log (`replay_steps`, as a restart does) and hands each decision's request to
    `engine` (default: this process), which re-solves them in parallel; the results come back in log order.
    The fold moves on with each recorded decision; after a mismatch it moves on with the re-run one instead, so
    one bad record is reported alone: the pass then starts again from the log's start with that correction and
    re-submits the decisions after it (a refold costs a fold, not a re-solve). `config` is the configuration the
    book starts from when its first verified decision records none: a log written before wire version 2, which
    raises NoConfigOnLog without it; or a log whose first decision is missing or records a configuration that
    cannot be read (`config_missing`), where without it every verified decision is NOT_RE_DERIVED and the report
    says why. A first decision that records a configuration starts the book from that one instead. The report is
    the same on every engine and worker count.

    `verified` is the decisions topic already read and verified (`verify_log`) by a caller that needed it first,
    for the configuration's cross-check: the audit then reads the topic no second time (`trusted` is unused)."""
    engine = engine or SequentialEngine()
    timing = timing if timing is not None else AuditTiming()
    # Only verified decisions are re-run; an undecodable, forged or altered record is a chain finding.
    if verified is None:
        verified = verify_log(reader, codec, topics, trusted or {})
    decisions = verified.accepted
    missing = config_missing(verified) if config is None else None
    index_of = {id(d): i for i, (_, d) in enumerate(decisions)}
    total = len({d.cycle for _, d in decisions})  # a second record for a cycle is compared, not re-derived
    results: dict[int, Rederived | str] = {}  # index -> the re-derivation, or the error a worker raised
    overrides: dict[int, Decision] = {}  # index -> the decision folded instead of the record (a mismatch)
    duplicates: dict[int, Decision] = {}  # index of a second record for a cycle -> the decision folded for it
    first = 0
    while missing is None:  # else there is nothing to re-run them with: each is named, none re-derived
        restart: int | None = None
        tasks = _timed(_tasks(reader, codec, topics, config, decisions, index_of, overrides, duplicates, first), timing)
        try:
            for task, outcome in engine.map(work, tasks):
                timing.workers.setdefault(outcome.worker, 0)
                timing.workers[outcome.worker] = max(timing.workers[outcome.worker], outcome.max_rss_kb)
                result: Rederived | str = outcome.result if outcome.error is None else outcome.error
                results[task.index] = result
                if progress is not None:
                    progress(len(results), total)
                if isinstance(result, Rederived) and result.fold_recomputed:
                    overrides[task.index] = result.recomputed
                    restart = task.index + 1
                    break
        finally:
            tasks.close()
        if restart is None:
            break
        for later in [i for i in results if i >= restart]:
            del results[later]
        first = restart
    report = _report(decisions, results, duplicates) if missing is None else _not_rederived(decisions, missing)
    report.findings[:0] = _gaps(decisions, missing is None)  # before the decision after the gap, at the same offset
    report.findings.extend(Finding(**f) for f in chain_findings(verified, codec, head))  # docs/audit.md: the chain
    report.findings.sort(key=lambda f: f.offset)
    report.chain_head = verified.head
    return report


@dataclass
class AuditTiming:
    """Where the audit's time went: the sequential fold (seconds), and each worker's peak memory (KiB)."""

    fold_s: float = 0.0
    workers: dict[int, int] = field(default_factory=dict)


def _timed(tasks: Iterator[AuditTask], timing: AuditTiming) -> Generator[AuditTask, None, None]:
    while True:
        started = time.perf_counter()
        try:
            task = next(tasks)
        except StopIteration:
            return
        finally:
            timing.fold_s += time.perf_counter() - started
        yield task


def _tasks(
    reader: EventLog,
    codec: EventCodec,
    topics: Topics,
    config: AllocatorConfig | None,
    decisions: Sequence[tuple[Record, Decision]],
    index_of: Mapping[int, int],
    overrides: Mapping[int, Decision],
    duplicates: dict[int, Decision],
    first: int,
) -> Iterator[AuditTask]:
    """The sequential pass: each decision's request from `first` on, the log folded as a restart folds it."""

    def on_duplicate(folded: Decision, duplicate: Decision) -> None:
        duplicates[index_of[id(duplicate)]] = folded

    steps = replay_steps(reader, codec, topics, config, decisions, on_duplicate)
    try:
        state, recorded = next(steps)
        while True:
            index = index_of[id(recorded)]
            if index >= first:
                inputs = {TopicPartition(pos.topic, pos.partition): pos.offset for pos in recorded.inputs}
                written = single_object_version(decisions[index][0].value or b"")
                margin = legacy_margin(recorded) if written in SAFETY_SLACK_VERSIONS else 0.0
                request = build_request(state, topics, recorded.book_id, inputs, recorded.decision_id)
                if written in SOLVER_REVISION_1_VERSIONS:
                    request = dataclasses.replace(request, config=request.config.replace(**ABSENT_MEANS))
                yield AuditTask(index, request, recorded, margin)
            state, recorded = steps.send(overrides.get(index, recorded))
    except StopIteration:
        return


def config_missing(verified: VerifiedLog) -> str | None:
    """Why the configuration the book started with is not on the verified log (a sentence), or None: the first
    verified decision records it, or that decision is the book's first (cycle 1) and records none, as decisions
    written before wire version 2 do (`--config` stands for it there; NoConfigOnLog without).

    A book's first decision records its configuration, so a first verified decision of a later cycle that records
    none means the ones before it are missing: one whose configuration cannot be read (refused as undecodable by
    the chain's verification), or one deleted. An outside probe found the first case reported as the second
    decision's "records no configuration (written before wire version 2)", exit 2 and no report; it is a finding
    on the damaged record (exit 1), and the decisions after it are named, not re-derived, unless `--config` gives
    the configuration to re-run them with."""
    if not verified.accepted:
        return None
    record, first = verified.accepted[0]
    missing = first_decision_missing(first)
    if missing is None:
        return None
    before = [r for r in verified.rejections if (r.partition, r.offset) < (record.partition, record.offset)]
    # A record that decoded to a decision and is still undecodable is one whose configuration cannot be read.
    unreadable = [r for r in before if r.kind == UNDECODABLE and r.decision_id is not None]
    if unreadable:
        r = unreadable[0]
        return (
            f"decision {r.decision_id} (cycle {r.cycle}) at {r.where} records a configuration that cannot be read "
            f"({r.detail})"
        )
    return missing


def _not_rederived(decisions: Sequence[tuple[Record, Decision]], missing: str) -> AuditReport:
    """Each verified decision named, none re-derived: there is no configuration to re-run them with."""
    why = "the configuration the book started with is not on the log; --config gives it"
    findings = [
        Finding(d.decision_id, d.cycle, record.offset, d.solver_path.value, NOT_RE_DERIVED, [f"not re-derived: {why}"])
        for record, d in decisions
    ]
    return AuditReport(findings, config_missing=missing)


def _gaps(decisions: Sequence[tuple[Record, Decision]], rerun: bool = True) -> list[Finding]:
    """A finding per run of cycles with no verified decision on the log (the allocator numbers its cycles one by
    one): a decision deleted, or one that did not verify. The state it left is lost, so every decision after it is
    re-run without it and mismatches for that reason (docs/audit.md, step 4); unless none is re-run (not `rerun`)."""
    out: list[Finding] = []
    previous = 0
    for record, d in decisions:
        if d.cycle > previous + 1:
            missing = f"cycle {previous + 1}" if d.cycle == previous + 2 else f"cycles {previous + 1} to {d.cycle - 1}"
            consequence = (": every decision after it is re-run on a state without the one it left, so their "
                           "mismatches follow from it") if rerun else ""  # fmt: skip
            out.append(Finding(d.decision_id, previous + 1, record.offset, "", "CYCLE_GAP", [
                f"no verified decision for {missing} before {d.decision_id} (deleted, or refused above){consequence}"
            ]))  # fmt: skip
        previous = max(previous, d.cycle)
    return out


def _report(
    decisions: Sequence[tuple[Record, Decision]],
    results: Mapping[int, Rederived | str],
    duplicates: Mapping[int, Decision],
) -> AuditReport:
    findings: list[Finding] = []
    recomputed_of: dict[int, Decision] = {}
    for index, (record, d) in enumerate(decisions):
        result = results.get(index)
        if result is None:
            continue
        finding = Finding(d.decision_id, d.cycle, record.offset, d.solver_path.value, "ERROR")
        if isinstance(result, str):
            finding.problems.append(f"the re-run raised {result}")
        else:
            finding.verdict = result.verdict
            finding.problems = list(result.problems)
            finding.objective_gap_to_resolve = result.objective_gap_to_resolve
            recomputed_of[d.cycle] = result.recomputed
        findings.append(finding)
    for index, folded in duplicates.items():
        record, duplicate = decisions[index]
        problems = compare(duplicate, recomputed_of.get(duplicate.cycle, folded))
        problems.insert(0, f"a second decision for cycle {duplicate.cycle}")
        findings.append(Finding(duplicate.decision_id, duplicate.cycle, record.offset, duplicate.solver_path.value,
                                "MISMATCH", problems))  # fmt: skip
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
        f"{data['decisions']} decisions: {data['matched']} matched, {data['constraints_held']} stopped by the clock's "
        f"safety net held every constraint, {data['mismatches']} mismatches"
        + (f", {data['errors']} re-runs raised an error" if data["errors"] else "")
        + (f", {len(report.not_rederived)} not re-derived (no configuration)" if report.not_rederived else "")
    )
    return "\n".join(printable(line) for line in lines)  # ids and problems are the log's text


def write_report(report: AuditReport, path: str) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump(report.to_json(), out, indent=2)
