"""Validation of proposals at the boundary (rules.md §2): every violation becomes a reason that names the field."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from book.bounds import EMPTY_ID, decision_name, is_control
from schemas.events import Proposal, Reason, ReasonCode, Side

PROPOSAL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Proposal))
MAX_ID_LENGTH = 128  # every string field of a proposal: ids, keys and the strategy tag
MAX_SIZE = 1e12  # currency: requested and min sizes
MAX_EXPECTED_PROFIT = 1e3  # per unit of size
MIN_PRICE, MAX_PRICE = 1e-6, 1.0 - 1e-6  # a unit stake's win return (1-p)/p stays below 1e6
MIN_URGENCY, MAX_URGENCY = 1e-9, 1e6  # per second: a lifetime between a microsecond and ~32 years
MAX_TIME_MS = 2**62


@dataclass(frozen=True)
class InvalidProposal:
    """A proposal that cannot be sized: what could be read of it, and why it is rejected."""

    proposal_id: str
    agent_id: str
    market_id: str
    side: Side | None
    reasons: tuple[Reason, ...]


Submitted = Proposal | InvalidProposal


def _problem(field: str, message: str) -> Reason:
    return Reason(ReasonCode.INVALID_FIELD, f"{field}: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_problem(field: str, value: Any, low: float, high: float, low_open: bool, high_open: bool) -> Reason | None:
    if not _is_number(value):
        return _problem(field, f"must be a number, got {value!r}")
    x = float(value)
    if math.isnan(x):
        return _problem(field, "must be a number, got NaN")
    if math.isinf(x):
        return _problem(field, f"must be finite, got {x}")
    below = x <= low if low_open else x < low
    above = x >= high if high_open else x > high
    if below or above:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        high_text = "inf" if math.isinf(high) else f"{high:g}"
        return _problem(field, f"must be in {left}{low:g}, {high_text}{right}, got {x!r}")
    return None


ID_RULES = 2
"""The proposal id rules new books get (config `proposal_id_rules`, rules.md §2): 2 refuses control characters in
a proposal's strings, names a rejected proposal by `decision_name` and settles it with the decision that rejects it;
1, the rules of the releases before the key, takes any string of 1-128 characters."""


def _id_problem(name: str, value: Any, id_rules: int, low: int = 1) -> Reason | None:
    """A string field's problem: its type and length (`low` to MAX_ID_LENGTH), and from rules 2 control characters."""
    if not isinstance(value, str) or not low <= len(value) <= MAX_ID_LENGTH:
        return _problem(name, f"must be a string of {low}-{MAX_ID_LENGTH} characters, got {_shown(value)}")
    if id_rules >= 2 and is_control(value):
        return _problem(name, f"must hold no control character (U+0000-U+001F, U+007F), got {_shown(value)}")
    return None


def field_problems(raw: Mapping[str, Any], id_rules: int = ID_RULES) -> list[Reason]:
    """Every problem of one proposal's fields, in field order; empty when the proposal is well formed. `id_rules`
    is the book's `proposal_id_rules`."""
    problems: list[Reason] = []
    for name in sorted(set(raw) - set(PROPOSAL_FIELDS)):
        problems.append(_problem(name, "is not a field of Proposal"))
    for name in PROPOSAL_FIELDS:
        if name not in raw:
            problems.append(_problem(name, "is missing"))
    present = {k: v for k, v in raw.items() if k in PROPOSAL_FIELDS}

    for name in ("proposal_id", "agent_id", "market_id", "correlation_key", "strategy_tag"):
        if name in present:
            problem = _id_problem(name, present[name], id_rules, 0 if name == "strategy_tag" else 1)
            if problem:
                problems.append(problem)
    if "side" in present and present["side"] not in ("BUY", "SELL"):
        problems.append(_problem("side", f"must be BUY or SELL, got {present['side']!r}"))
    if "price" in present and present["price"] is not None:
        problem = _number_problem("price", present["price"], MIN_PRICE, MAX_PRICE, False, False)
        if problem:
            problems.append(problem)
    checks: tuple[tuple[str, float, float, bool, bool], ...] = (
        ("expected_profit", 0.0, MAX_EXPECTED_PROFIT, True, False),
        ("confidence", 0.0, 1.0, True, False),
        ("requested_size", 0.0, MAX_SIZE, True, False),
        ("min_size", 0.0, MAX_SIZE, True, False),
        ("execution_risk", 0.0, 1.0, False, True),
        ("urgency", MIN_URGENCY, MAX_URGENCY, False, False),
    )
    for name, low, high, low_open, high_open in checks:
        if name in present:
            problem = _number_problem(name, present[name], low, high, low_open, high_open)
            if problem:
                problems.append(problem)
    requested: Any = present.get("requested_size")
    minimum: Any = present.get("min_size")
    if _is_number(requested) and _is_number(minimum) and math.isfinite(requested) and minimum > requested:
        problems.append(_problem("min_size", f"must not exceed requested_size {requested!r}, got {minimum!r}"))
    created = present.get("created_at")
    if "created_at" in present and (
        not isinstance(created, int) or isinstance(created, bool) or not 0 <= created <= MAX_TIME_MS
    ):
        problems.append(
            _problem("created_at", f"must be milliseconds since the epoch (an integer in [0, 2**62]), got {created!r}")
        )
    return problems


def _shown(value: Any) -> str:
    """A value as an error quotes it: long strings cut, so a reason never carries megabytes."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value) if isinstance(value, str) else len(text)} chars)"


def _text(value: Any) -> str:
    """What a rejection may quote of a string field: at most MAX_ID_LENGTH characters."""
    return value[:MAX_ID_LENGTH] if isinstance(value, str) else ""


def bounded_id(pid: str) -> str:
    """The id a rejection names a proposal by: itself when valid, else a cut that stays unique (a digest of the
    whole id), so a decision never carries an unbounded string."""
    if len(pid) <= MAX_ID_LENGTH:
        return pid
    return f"{pid[: MAX_ID_LENGTH - 34]}..{hashlib.sha256(pid.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


def named(value: Any, id_rules: int) -> str:
    """A string field of a rejected proposal as its rejection names it: rules 1 cut it (`_text`), rules 2 take
    `decision_name` ("" for a value that is not a string)."""
    if id_rules >= 2:
        return decision_name(value) if isinstance(value, str) else ""
    return _text(value)


def rejected_id(pid: Any, fallback_id: str, id_rules: int) -> str:
    """The proposal id a rejection names: the id (`fallback_id` when it is empty or not a string), bounded."""
    whole = pid if isinstance(pid, str) and pid else fallback_id
    return decision_name(whole) if id_rules >= 2 else bounded_id(whole)


def parse_proposal(raw: Mapping[str, Any], fallback_id: str, id_rules: int = ID_RULES) -> Submitted:
    """A well-formed `Proposal`, or an `InvalidProposal` naming every bad field (never an exception)."""
    problems = field_problems(raw, id_rules)
    if problems:
        side = raw.get("side")
        return InvalidProposal(
            proposal_id=rejected_id(raw.get("proposal_id"), fallback_id, id_rules),
            agent_id=named(raw.get("agent_id"), id_rules),
            market_id=named(raw.get("market_id"), id_rules),
            side=Side(side) if side in ("BUY", "SELL") else None,
            reasons=tuple(problems),
        )
    price = raw["price"]
    return Proposal(
        proposal_id=raw["proposal_id"],
        agent_id=raw["agent_id"],
        strategy_tag=raw["strategy_tag"],
        market_id=raw["market_id"],
        side=Side(raw["side"]),
        price=None if price is None else float(price),
        expected_profit=float(raw["expected_profit"]),
        confidence=float(raw["confidence"]),
        requested_size=float(raw["requested_size"]),
        min_size=float(raw["min_size"]),
        execution_risk=float(raw["execution_risk"]),
        urgency=float(raw["urgency"]),
        correlation_key=raw["correlation_key"],
        created_at=int(raw["created_at"]),
    )


def validate(proposal: Proposal, id_rules: int = ID_RULES) -> Submitted:
    """Checks a decoded proposal (Avro guarantees the types, not the ranges) under the book's `proposal_id_rules`."""
    raw = {name: getattr(proposal, name) for name in PROPOSAL_FIELDS}
    raw["side"] = proposal.side.value
    result = parse_proposal(raw, EMPTY_ID, id_rules)
    return proposal if isinstance(result, Proposal) else result


def lifetime_ms(proposal: Proposal, opportunity_window_ms: int) -> float:
    """How long a proposal stays valid after the log received it: min(1/urgency, opportunity window)
    (rules.md §3.1)."""
    return min(1000.0 / proposal.urgency, float(opportunity_window_ms))


def is_expired(proposal: Proposal, as_of_ms: int, opportunity_window_ms: int, received_ms: int | None = None) -> bool:
    """Expired once its age exceeds its lifetime (age equal to the lifetime is still pending). The age counts from
    the log time the proposal was received (rules.md §1.5); without a log (a snapshot file), from created_at."""
    since = proposal.created_at if received_ms is None else received_ms
    return as_of_ms - since > lifetime_ms(proposal, opportunity_window_ms)


def ahead_of_log_time(proposal: Proposal, received_ms: int | None, max_skew_ms: float) -> Reason | None:
    """A proposal whose created_at is more than the allowed skew after the log time it was received: its writer's
    clock is wrong or lying (rules.md §2)."""
    if received_ms is None or proposal.created_at - received_ms <= max_skew_ms:
        return None
    ahead = proposal.created_at - received_ms
    return _problem("created_at", f"{ahead} ms after the log time it was received (at most {max_skew_ms:.0f} ms)")


def priority(proposal: Proposal) -> float:
    """rules.md §5: ep·conf / (max(execution_risk, 0.01)·(1 + 1/urgency)): urgent and reliable trades come first."""
    return (
        proposal.expected_profit
        * proposal.confidence
        / (max(proposal.execution_risk, 0.01) * (1.0 + 1.0 / proposal.urgency))
    )


def rejected_duplicate(submitted: Submitted, id_rules: int = ID_RULES) -> InvalidProposal:
    """The rejection of a proposal id its agent re-sent with other content (rules.md §2.2); from rules 2 its strings
    are named as any rejection's are."""
    pid, agent, market = submitted.proposal_id, submitted.agent_id, submitted.market_id
    if id_rules >= 2:
        pid, agent, market = rejected_id(pid, EMPTY_ID, id_rules), named(agent, id_rules), named(market, id_rules)
    quote = _shown if id_rules >= 2 else repr
    reason = Reason(ReasonCode.DUPLICATE, f"proposal_id {quote(pid)} was already received from {quote(agent)} "
                    "with other content")  # fmt: skip
    return InvalidProposal(pid, agent, market, submitted.side, (reason,))


def rejected_unauthorized(proposal: Proposal, why: str, id_rules: int = ID_RULES) -> InvalidProposal:
    """The rejection of a proposal its writer may not make: it came from one agent's own proposals topic and
    names another agent (rules.md §11.1). Its strings are named as any rejection's are."""
    reason = Reason(ReasonCode.UNAUTHORIZED, why)
    return InvalidProposal(
        decision_name(proposal.proposal_id) if id_rules >= 2 else bounded_id(proposal.proposal_id),
        named(proposal.agent_id, id_rules),
        named(proposal.market_id, id_rules),
        proposal.side if isinstance(proposal.side, Side) else None,
        (reason,),
    )
