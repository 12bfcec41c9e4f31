"""The snapshot file of `allocator allocate`: the portfolio as the fold sees it, read and checked at the edge."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from allocator.engine.request import CycleRequest, SuppliedScenarios
from allocator.engine.validation import (
    MAX_ID_LENGTH,
    MAX_PRICE,
    MIN_PRICE,
    InvalidProposal,
    Submitted,
    ahead_of_log_time,
    parse_proposal,
    rejected_duplicate,
)
from allocator.service.wire import InputTooLarge, json_integer, json_object, not_text, read_bounded
from book.config import MAX_AMOUNT, MAX_PENDING, AllocatorConfig, ConfigError
from book.portfolio import Portfolio, Position, Repeat, classify_repeat
from governors.rules import book_state, drawdown, failure_pause_triggered, failure_rate, kill_switch_triggered
from schemas.events import Decision, Proposal, ProposalKey, Reason, ReasonCode, Side

TOP_LEVEL_KEYS = frozenset(
    {
        "as_of",
        "equity",
        "available",
        "high_water_mark",
        "executions",
        "positions",
        "proposals",
        "scenarios",
        "config",
        "resolved_markets",
    }
)
POSITION_KEYS = ("market_id", "side", "size", "price", "correlation_key")


class SnapshotError(ValueError):
    """A snapshot that cannot be decided at all: the message names the file and the problem."""


MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_RETURN = 1e6  # a unit stake's scenario return: what a price of at least 1e-6 can pay
MAX_TIME_MS = 2**62


def _number(where: str, value: Any, *, minimum: float = -MAX_AMOUNT, maximum: float = MAX_AMOUNT) -> float:
    """A finite number in [minimum, maximum]: every amount is bounded, so no sum or CVaR overflows."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SnapshotError(f"{where}: must be a finite number, got {value!r}")
    if not minimum <= value <= maximum:
        raise SnapshotError(f"{where}: must be in [{minimum:g}, {maximum:g}], got {value!r}")
    return float(value)


def _integer(where: str, value: Any, *, minimum: int = 0, maximum: int = MAX_TIME_MS) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise SnapshotError(f"{where}: must be a whole number in [{minimum}, {maximum}], got {value!r}")
    return value


def _position(i: int, raw: Any) -> Position:
    where = f"positions[{i}]"
    if not isinstance(raw, Mapping):
        raise SnapshotError(f"{where}: must be an object")
    missing = [k for k in POSITION_KEYS if k not in raw]
    extra = sorted(set(raw) - set(POSITION_KEYS))
    if missing or extra:
        raise SnapshotError(
            f"{where}: " + "; ".join([*(f"{k} is missing" for k in missing), *(f"{k} is unknown" for k in extra)])
        )
    for key in ("market_id", "correlation_key"):
        if not isinstance(raw[key], str) or not 1 <= len(raw[key]) <= MAX_ID_LENGTH:
            raise SnapshotError(f"{where}.{key}: must be a string of 1-{MAX_ID_LENGTH} characters")
    if raw["side"] not in ("BUY", "SELL"):
        raise SnapshotError(f"{where}.side: must be BUY or SELL, got {raw['side']!r}")
    price = _number(f"{where}.price", raw["price"])
    if not MIN_PRICE <= price <= MAX_PRICE:
        raise SnapshotError(f"{where}.price: must be in [{MIN_PRICE:g}, {MAX_PRICE:g}], got {price!r}")
    return Position(
        market_id=raw["market_id"],
        side=Side(raw["side"]),
        size=_number(f"{where}.size", raw["size"], minimum=0.0),
        price=price,
        correlation_key=raw["correlation_key"],
    )


def _scenarios(raw: Any, has_positions: bool) -> SuppliedScenarios:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("returns"), Mapping):
        raise SnapshotError(
            'scenarios: must be an object with "returns": {proposal_id or "agent_id/proposal_id": [returns]}'
        )
    extra = sorted(set(raw) - {"returns", "book_losses"})
    if extra:
        raise SnapshotError(f"scenarios: unknown key(s) {', '.join(extra)}")
    returns: dict[str, tuple[float, ...]] = {}
    lengths: set[int] = set()
    for pid, row in raw["returns"].items():
        if not isinstance(row, list) or not row:
            raise SnapshotError(f"scenarios.returns[{pid!r}]: must be a non-empty list of numbers")
        returns[str(pid)] = tuple(
            _number(f"scenarios.returns[{pid!r}][{j}]", x, minimum=-MAX_RETURN, maximum=MAX_RETURN)
            for j, x in enumerate(row)
        )
        lengths.add(len(row))
    if "book_losses" in raw:
        book_raw = raw["book_losses"]
        if not isinstance(book_raw, list) or not book_raw:
            raise SnapshotError("scenarios.book_losses: must be a non-empty list of numbers")
        book = tuple(_number(f"scenarios.book_losses[{j}]", x) for j, x in enumerate(book_raw))
        lengths.add(len(book))
    elif has_positions:
        raise SnapshotError("scenarios.book_losses: required when positions are held and scenarios are supplied")
    else:
        book = ()
    if len(lengths) > 1:
        raise SnapshotError(
            f"scenarios: every list must have the same number of scenarios, got lengths {sorted(lengths)}"
        )
    if not lengths:
        raise SnapshotError("scenarios: no scenarios given")
    count = lengths.pop()
    return SuppliedScenarios(returns=returns, book_losses=book or (0.0,) * count)


def parse_snapshot(data: Any, decision_id: str) -> CycleRequest:
    """A cycle request from a decoded snapshot; raises `SnapshotError` naming the first problem."""
    if not isinstance(data, Mapping):
        raise SnapshotError("the snapshot must be a JSON object")
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise SnapshotError(f"unknown key(s): {', '.join(unknown)}")
    for key in ("as_of", "equity", "proposals"):
        if key not in data:
            raise SnapshotError(f"{key}: is missing")
    if "config" in data and not isinstance(data["config"], Mapping):
        raise SnapshotError("config: must be an object")
    try:
        config = AllocatorConfig.from_mapping(data.get("config") or {})
    except ConfigError as exc:
        raise SnapshotError(f"config: {exc}") from exc

    as_of = _integer("as_of", data["as_of"])
    equity = _number("equity", data["equity"])
    if equity <= 0.0:
        raise SnapshotError(f"equity: must be > 0 (a book with nothing left decides nothing), got {equity!r}")
    raw_positions = data.get("positions", [])
    if not isinstance(raw_positions, list):
        raise SnapshotError("positions: must be a list")
    positions = tuple(_position(i, p) for i, p in enumerate(raw_positions))
    available = (
        _number("available", data["available"], maximum=equity)
        if "available" in data
        else equity - math.fsum(p.size for p in positions)
    )
    hwm = _number("high_water_mark", data["high_water_mark"], minimum=equity) if "high_water_mark" in data else equity

    reports = failures = 0
    if "executions" in data:
        ex = data["executions"]
        # Both counts: a missing "failures" read as 0 would decide a book that should be PAUSED as ACTIVE.
        if not isinstance(ex, Mapping) or set(ex) != {"reports", "failures"}:
            missing = sorted({"reports", "failures"} - set(ex)) if isinstance(ex, Mapping) else []
            raise SnapshotError(
                'executions: must be {"reports": N, "failures": N}'
                + (f" (missing {', '.join(missing)})" if missing else "")
            )
        reports = _integer("executions.reports", ex["reports"])
        failures = _integer("executions.failures", ex["failures"])
        if failures > reports:
            raise SnapshotError(f"executions.failures: {failures} is more than the {reports} reports")

    raw_proposals = data["proposals"]
    if not isinstance(raw_proposals, list):
        raise SnapshotError("proposals: must be a list")
    if len(raw_proposals) > MAX_PENDING:
        raise SnapshotError(f"proposals: at most {MAX_PENDING} in one snapshot, got {len(raw_proposals)}")
    parsed: list[tuple[Submitted, Any]] = []
    for i, raw in enumerate(raw_proposals):
        where = f"proposals[{i}]"
        if isinstance(raw, Mapping):
            parsed.append((parse_proposal(raw, where), raw))
        else:
            reason = Reason(ReasonCode.INVALID_FIELD, f"{where}: must be an object, got {type(raw).__name__}")
            parsed.append((InvalidProposal(where, "", "", None, (reason,)), raw))

    scenarios = _scenarios(data["scenarios"], bool(positions)) if "scenarios" in data else None
    resolved = data.get("resolved_markets", [])
    if not isinstance(resolved, list) or not all(isinstance(m, str) for m in resolved):
        raise SnapshotError("resolved_markets: must be a list of market ids")

    tripped = kill_switch_triggered(equity, hwm, config.kill_switch_drawdown)
    paused = failure_pause_triggered(reports, failures, config.failure_rate_limit, config.failure_min_samples)
    state, why = book_state(tripped, paused), None
    if tripped:
        why = f"drawdown {drawdown(equity, hwm):.2%} >= {config.kill_switch_drawdown:.0%}"
    elif paused:
        why = f"failure rate {failure_rate(reports, failures):.1%} > {config.failure_rate_limit:.0%}"

    # The snapshot's proposals are pending as of `as_of`: one created further after it than the allowed clock skew
    # is from its writer's future (rules.md §2.3), as a proposal on the log is after its log time. (Not by a receive
    # time: that would also be the time its lifetime counts from.)
    submitted = tuple(_ahead_of(s, as_of, config.max_clock_skew_ms) for s in _without_repeats(parsed))
    return CycleRequest(
        decision_id=decision_id,
        book_id="snapshot",
        cycle=1,
        as_of=as_of,
        portfolio=Portfolio(equity=equity, available=available, high_water_mark=hwm, positions=positions),
        governor_state=state,
        governor_reason=why,
        window_ms=round(config.opportunity_window_s * 1000),
        submitted=submitted,
        config=config,
        scenarios=scenarios,
        resolved_markets=frozenset(resolved),
    )


def _ahead_of(submitted: Submitted, as_of: int, max_skew_ms: float) -> Submitted:
    """`submitted`, or REJECTED as ahead of `as_of` by more than the allowed skew."""
    if isinstance(submitted, Proposal) and (why := ahead_of_log_time(submitted, as_of, max_skew_ms)) is not None:
        return InvalidProposal(submitted.proposal_id, submitted.agent_id, submitted.market_id, submitted.side, (why,))
    return submitted


def _without_repeats(items: Iterable[tuple[Submitted, Any]]) -> list[Submitted]:
    """The duplicate rule of rules.md §2 over a file's proposals, comparing repeats by their JSON content."""
    seen: dict[ProposalKey, Hashable] = {}
    out: list[Submitted] = []
    for submitted, raw in items:
        key = (submitted.agent_id, submitted.proposal_id)
        repeat = classify_repeat(seen, key, json.dumps(raw, sort_keys=True, default=str))
        if repeat is Repeat.NEW:
            out.append(submitted)
        elif repeat is Repeat.CONFLICT:
            out.append(rejected_duplicate(submitted))
    return out


def load_snapshot(path: Path) -> CycleRequest:
    """Read a snapshot file; the decision id is derived from its content, so equal files decide equally."""
    try:
        text = read_bounded(path, MAX_FILE_BYTES)
    except FileNotFoundError as exc:
        raise SnapshotError(f"{path}: no such file") from exc
    except InputTooLarge as exc:
        raise SnapshotError(f"{path}: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{path}: cannot be read: {exc}") from exc
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_int=json_integer, object_pairs_hook=json_object)
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise SnapshotError(f"{path}: JSON nested too deeply") from exc
    except ValueError as exc:  # SnapshotError from `_reject_constant`, or what `json_integer`, `json_object` refuse
        raise SnapshotError(f"{path}: {exc}") from exc
    found = not_text(data)
    if found is not None:
        raise SnapshotError(f"{path}: {found}")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    decision_id = "snapshot-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    try:
        return parse_snapshot(data, decision_id)
    except SnapshotError as exc:
        raise SnapshotError(f"{path}: {exc}") from exc


def _reject_constant(name: str) -> float:
    # JSON has no NaN or Infinity; Python's parser would accept them. A proposal field holding one is
    # rejected by validation, so map them to the float and let the field checks name the field.
    return float(name.replace("Infinity", "inf"))


def decision_json(decision: Decision, *, timing: bool = True) -> dict[str, Any]:
    """The CLI's JSON rendering of a decision (statuses and reason codes exactly as docs/rules.md names them)."""
    return {
        "decision_id": decision.decision_id,
        "governor_state": decision.governor_state.value,
        "solver_path": decision.solver_path.value,
        "objective": decision.objective,
        "gap": decision.gap,
        "solve_ms": decision.solve_ms if timing else None,
        "allocations": [
            {
                "proposal_id": a.proposal_id,
                "agent_id": a.agent_id,
                "size": a.size,
                "netted_size": a.netted_size,
                "status": a.status.value,
                "reasons": [r.code.value for r in a.reasons],
                "details": [r.detail for r in a.reasons if r.detail],
            }
            for a in decision.allocations
        ],
        "orders": [{"market_id": o.market_id, "side": o.side.value, "size": o.size} for o in decision.orders],
    }
