"""The bounds an input event must keep before the portfolio fold takes it (rules.md §11.2, docs/operations.md).

Avro guarantees an event's types, not its values: a fill of NaN contracts, a mark of 1e308 or a megabyte of
operator text decodes. `out_of_bounds` names the first field out of its range (or None): the sequencer turns
such an event into a dead letter with its position and that reason, and the fold never sees it. Proposals are
not checked here: their bounds are the validation's (rules.md §2), which rejects them by name in a decision.

Pure: the decision depends only on the event and on the markets the book has seen.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Container

from schemas.events import ControlCommand, Event, Fill, FillStatus, MarketResolution, PnlMark

MAX_ID_LENGTH = 128  # ids and market ids: the projection's key columns hold 128 characters
MAX_TEXT_LENGTH = 4_096  # free text (a fill's reason, an operator's reason)
MAX_AMOUNT = 1e12  # sizes and fees, the same bound as a proposal's requested size (rules.md §2)
# A fill that moved money buys size/price contracts: a price this far from 0 and 1 keeps that finite (the same
# bounds as a proposal's price, rules.md §2).
MIN_FILL_PRICE, MAX_FILL_PRICE = 1e-6, 1.0 - 1e-6
MAX_LIMIT_KEYS = 64
# A fill's time: milliseconds since the epoch, the same range as a proposal's created_at (rules.md §2).
MAX_FILL_TIME_MS = 2**62  # a SET_LIMITS names configuration keys; there are fewer than this


def is_control(text: str) -> bool:
    """Whether `text` holds a control character (U+0000-U+001F, U+007F): no id may (PostgreSQL refuses NUL)."""
    return any(ch < " " or ch == "\x7f" for ch in text)


EMPTY_ID = "<empty proposal_id>"
"""What a rejection names a proposal with an empty proposal_id by."""


def decision_name(value: str) -> str:
    """What a decision names a rejected proposal's id (or agent or market) by, from proposal id rules 2 on
    (`proposal_id_rules`): the value itself when it is at most MAX_ID_LENGTH characters with no control character,
    else a cut of it (control characters as "?") and a digest of the whole, MAX_ID_LENGTH characters in all: a
    decision never carries an unbounded string or one a projection cannot store, and two ids stay apart."""
    if len(value) <= MAX_ID_LENGTH and not is_control(value):
        return value
    cut = "".join("?" if is_control(ch) else ch for ch in value[: MAX_ID_LENGTH - 34])
    return f"{cut}..{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


def _text(event: Event, name: str, limit: int) -> str | None:
    value = getattr(event, name)
    if value is not None and len(value) > limit:
        return f"{type(event).__name__}.{name}: {len(value)} characters, at most {limit}"
    return None


def _amount(event: Event, name: str, low: float = 0.0, high: float = MAX_AMOUNT) -> str | None:
    value: float = getattr(event, name)
    if not (math.isfinite(value) and low <= value <= high):
        return f"{type(event).__name__}.{name}: {value!r} is not in [{low:g}, {high:g}]"
    return None


def _first(*problems: str | None) -> str | None:
    return next((p for p in problems if p is not None), None)


def out_of_bounds(event: Event, known_markets: Container[str]) -> str | None:
    """Why the fold must not take `event` (the field named, with its value), or None when it may."""
    if isinstance(event, Fill):
        moves_money = event.filled_size > 0 and event.status in (FillStatus.FILLED, FillStatus.PARTIAL)
        price_ok = math.isfinite(event.price) and (
            MIN_FILL_PRICE <= event.price <= MAX_FILL_PRICE if moves_money else 0.0 <= event.price <= 1.0
        )
        return _first(
            *(
                _text(event, name, MAX_ID_LENGTH)
                for name in ("fill_id", "decision_id", "proposal_id", "market_id", "agent_id")
            ),
            _amount(event, "requested_size"),
            _amount(event, "filled_size"),
            None
            if price_ok
            else f"Fill.price: {event.price!r} is not a price in [{MIN_FILL_PRICE:g}, {MAX_FILL_PRICE:g}]"
            + ("" if moves_money else " (or 0 or 1 for a fill that moved nothing)"),
            _amount(event, "fee"),
            _text(event, "reason", MAX_TEXT_LENGTH),
        )
    if isinstance(event, PnlMark):
        return _first(_text(event, "market_id", MAX_ID_LENGTH), _amount(event, "mark_price", 0.0, 1.0))
    if isinstance(event, MarketResolution):
        if len(event.market_id) > MAX_ID_LENGTH:
            return _text(event, "market_id", MAX_ID_LENGTH)
        if event.market_id not in known_markets:
            return (f"MarketResolution.market_id: {event.market_id!r} is not a market this book has seen "
                    "(no proposal, fill or mark names it)")  # fmt: skip
        return None
    if isinstance(event, ControlCommand):
        limits = event.limits or {}
        too_long = next((key for key in limits if len(key) > MAX_ID_LENGTH), None)
        return _first(
            _text(event, "command_id", MAX_ID_LENGTH),
            _text(event, "operator_id", MAX_ID_LENGTH),
            _text(event, "reason", MAX_TEXT_LENGTH),
            _text(event, "book", MAX_TEXT_LENGTH),
            f"ControlCommand.limits: {len(limits)} keys, at most {MAX_LIMIT_KEYS}"
            if len(limits) > MAX_LIMIT_KEYS
            else None,
            f"ControlCommand.limits: a key of {len(too_long)} characters, at most {MAX_ID_LENGTH}"
            if too_long
            else None,
        )
    return None


MAX_DEAD_LETTER_ERROR = 2_000  # characters of the reason a dead letter keeps
MAX_DEAD_LETTER_PAYLOAD = 100_000  # bytes of the payload: a dead letter must fit where its record fitted


def dead_letter_fields(error: str, payload: bytes | None) -> tuple[str, bytes | None]:
    """A dead letter's reason and payload, cut so it always fits on its topic and in its row (the record itself
    stays on the log at its position). One statement for the allocator's dead letters and the projector's rows,
    so both write the same row for one position."""
    if payload is not None and len(payload) > MAX_DEAD_LETTER_PAYLOAD:
        error = f"{error} (payload cut to its first {MAX_DEAD_LETTER_PAYLOAD} of {len(payload)} bytes)"
        payload = bytes(payload[:MAX_DEAD_LETTER_PAYLOAD])
    if len(error) > MAX_DEAD_LETTER_ERROR:
        error = f"{error[: MAX_DEAD_LETTER_ERROR - 20]}... ({len(error)} chars)"
    return error, payload
