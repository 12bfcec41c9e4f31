"""The wire contract as shell tools see it: JSON in (`allocator propose`, `allocator fill`), JSON out (`tail`).

Proposals are checked with the allocator's own rules (`allocator.engine.validation`, docs/rules.md §2), so a
proposal refused here would have been REJECTED by the allocator with the same field named; fills are checked for
their field types. Every problem names the input line and the field; nothing is sent when any record is bad.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from allocator.engine.validation import field_problems, parse_proposal
from book.bounds import MAX_FILL_TIME_MS, out_of_bounds
from schemas.events import (
    ControlCommand,
    DeadLetter,
    Decision,
    Event,
    Fill,
    FillStatus,
    GovernorEvent,
    Proposal,
    Side,
)

MAX_INPUT_BYTES = 64 * 1024 * 1024
"""The largest input file read (a snapshot, a configuration, records to send): larger ones are refused unread."""
MAX_INTEGER_DIGITS = 300
"""An integer in input JSON with more digits is refused: no field takes one (the widest bound is 1e15), past ~308
digits it has no float to become and past 4,300 Python will not read it."""


class InputTooLarge(ValueError):
    """An input file larger than it may be."""


def read_bounded(path: str | Path, limit: int = MAX_INPUT_BYTES) -> str:
    """A file's UTF-8 text, refused (InputTooLarge) past `limit` bytes without reading further: a size the file
    system reports is not trusted (a device or a pipe, such as /dev/zero, reports none)."""
    with open(path, "rb") as stream:
        raw = stream.read(limit + 1)
    if len(raw) > limit:
        raise InputTooLarge(f"larger than {limit // (1024 * 1024)} MiB")
    return raw.decode("utf-8")


def json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for input JSON: a key given twice in one object is refused (ValueError), not settled
    silently by the last one."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:64]!r} given twice in one object")
        out[key] = value
    return out


def json_integer(text: str) -> int:
    """`parse_int` for input JSON: an integer of more than MAX_INTEGER_DIGITS digits is refused (ValueError)."""
    digits = len(text) - text.startswith("-")
    if digits > MAX_INTEGER_DIGITS:
        raise ValueError(f"a number of {digits} digits, at most {MAX_INTEGER_DIGITS}")
    return int(text)


class WireError(ValueError):
    """Input that must not be sent: every problem, each naming its line and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def not_text(value: Any, path: str = "") -> str | None:
    """The first string in `value` (walking objects and arrays, without recursion: any depth) that is not Unicode text
    a record can carry — JSON's "\\ud800" escapes, or a command-line argument of bytes that are not UTF-8, give lone
    surrogates, which no encoder takes — named by its path, or None."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"{where or 'value'}: not valid Unicode text ({item[exc.start]!a} at character {exc.start})"
            continue
        pairs: list[tuple[Any, Any]] = (
            list(item.items()) if isinstance(item, Mapping) else list(enumerate(item)) if isinstance(item, list) else []
        )
        for key, child in reversed(pairs):  # popped in document order, each name before its value
            at = f"{where}.{key}" if where else str(key)
            stack.append((child, at))
            if isinstance(key, str):  # checked before its value; a bad name is not repeated in its own path
                stack.append((key, f"{where or 'value'} (a name in it)"))
    return None


def json_records(text: str) -> list[tuple[int, Any]]:
    """The records of `text` with the line each starts on: one JSON object, a JSON array, or JSON lines. A record
    with a string that is not Unicode text (`not_text`) is refused, naming its line and field."""
    try:
        records = _json_records(text)
    except RecursionError as exc:
        raise WireError(["the input is nested too deeply to be a record"]) from exc
    except WireError:
        raise
    except ValueError as exc:  # a number `json_integer` or a repeated key `json_object` refuses
        raise WireError([f"{exc}"]) from exc
    problems = [f"line {line}: {found}" for line, value in records if (found := not_text(value)) is not None]
    if problems:
        raise WireError(problems)
    return records


def _json_records(text: str) -> list[tuple[int, Any]]:
    decoder = json.JSONDecoder(parse_int=json_integer, object_pairs_hook=json_object)
    seen_at, seen_line = 0, 1  # the last position asked for and its line

    def line_of(pos: int) -> int:
        # Items are met in order, so counting goes on from the last one: counting from the start for every item made
        # a 50 MB array take more than 10 minutes (an outside probe).
        nonlocal seen_at, seen_line
        seen_line = seen_line + text.count("\n", seen_at, pos) if pos >= seen_at else text.count("\n", 0, pos) + 1
        seen_at = pos
        return seen_line

    def decode_at(pos: int) -> tuple[Any, int]:
        """The value starting at `pos`; what `json_integer` or `json_object` refuse names the value's line."""
        try:
            return decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            raise
        except ValueError as exc:
            raise WireError([f"line {line_of(pos)}: {exc}"]) from exc

    stripped = text.lstrip()
    if not stripped:
        return []
    start = len(text) - len(stripped)
    if stripped.startswith("["):
        # The syntax first, with nothing refused, so that each item can then be decoded where it begins and what the
        # hooks refuse named by its line.
        try:
            items, after = json.JSONDecoder(parse_int=len, object_pairs_hook=len).raw_decode(text, start)
        except json.JSONDecodeError as exc:
            raise WireError([f"line {exc.lineno}: not valid JSON: {exc.msg}"]) from exc
        rest = text[after:]
        if rest.strip():
            # Whatever followed the array (a second array, more lines) was dropped without a word (an outside probe).
            extra = after + len(rest) - len(rest.lstrip())
            raise WireError([f"line {line_of(extra)}: more after the JSON array that starts on line {line_of(start)}: "
                             "give one array, or one JSON object per line"])  # fmt: skip
        out: list[tuple[int, Any]] = []
        pos = start + 1
        for _ in items:
            while text[pos] in " \t\r\n,":
                pos += 1
            value, end = decode_at(pos)
            out.append((line_of(pos), value))
            pos = end
        return out
    try:
        value, end = decode_at(start)
        if not text[end:].strip():
            return [(line_of(start), value)]
    except json.JSONDecodeError:
        pass
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line, parse_int=json_integer, object_pairs_hook=json_object)))
        except json.JSONDecodeError as exc:
            raise WireError([f"line {number}: not valid JSON: {exc.msg} (column {exc.colno})"]) from exc
        except ValueError as exc:
            raise WireError([f"line {number}: {exc}"]) from exc
    return out


def proposals_from(records: list[tuple[int, Any]], now_ms: int, agent: str | None = None) -> list[Proposal]:
    """Proposals from JSON objects, `created_at` filled with `now_ms` when absent; WireError names every problem."""
    problems: list[str] = []
    out: list[Proposal] = []
    for line, raw in records:
        if not isinstance(raw, dict):
            problems.append(f"line {line}: a proposal must be a JSON object, got {type(raw).__name__}")
            continue
        raw = {"created_at": now_ms, **raw}
        found = [f"line {line}: {reason.detail}" for reason in field_problems(raw)]
        if agent is not None and raw.get("agent_id") != agent:
            found.append(f"line {line}: agent_id: must be {agent!r} (--agent), got {raw.get('agent_id')!r}")
        if "price" in raw and raw["price"] is None:
            # A book draws a proposal's outcomes from its price; null is for callers of the engine that give their
            # own scenario returns, which a book never has: it was sent, and rejected in the next decision.
            found.append(f"line {line}: price: must be a number (null is only for a caller's own scenario returns, "
                         "which a book does not take)")  # fmt: skip
        if found:
            problems.extend(found)
            continue
        parsed = parse_proposal(raw, f"line-{line}")
        assert isinstance(parsed, Proposal)  # field_problems found nothing
        out.append(parsed)
    if problems:
        raise WireError(problems)
    return out


def _typed(line: int, name: str, value: Any, kind: str) -> str | None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {
        "str": isinstance(value, str) and value != "",
        "str?": value is None or isinstance(value, str),
        "float": number,
        "int": isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "side": value in tuple(s.value for s in Side),
        "status": value in tuple(s.value for s in FillStatus),
    }[kind]
    if ok:
        return None
    want = {
        "str": "a non-empty string",
        "str?": "a string or null",
        "float": "a number",
        "int": "milliseconds since the epoch (a non-negative integer)",
        "side": "BUY or SELL",
        "status": " or ".join(s.value for s in FillStatus),
    }[kind]
    return f"line {line}: {name}: must be {want}, got {value!r}"


FILL_TYPES: dict[str, str] = {
    "fill_id": "str", "decision_id": "str", "proposal_id": "str", "market_id": "str", "side": "side",
    "requested_size": "float", "filled_size": "float", "price": "float", "fee": "float", "status": "status",
    "reason": "str?", "time": "int", "agent_id": "str?",
}  # fmt: skip


def fills_from(records: list[tuple[int, Any]], now_ms: int) -> list[Fill]:
    """Fills from JSON objects (`time` filled with `now_ms` when absent, `reason` and `agent_id` with null); types
    and the fold's bounds (book/bounds.py) checked. `agent_id` is the allocation's agent (rules.md §2.2): needed
    where two agents share a proposal id."""
    problems: list[str] = []
    out: list[Fill] = []
    for line, raw in records:
        if not isinstance(raw, dict):
            problems.append(f"line {line}: a fill must be a JSON object, got {type(raw).__name__}")
            continue
        raw = {"time": now_ms, "reason": None, "agent_id": None, **raw}
        found = [f"line {line}: {name}: is not a field of Fill" for name in sorted(set(raw) - set(FILL_TYPES))]
        for name, kind in FILL_TYPES.items():
            if name not in raw:
                found.append(f"line {line}: {name}: is missing")
            elif (problem := _typed(line, name, raw[name], kind)) is not None:
                found.append(problem)
        if not found and not 0 <= raw["time"] <= MAX_FILL_TIME_MS:
            # Past 2**63 the record cannot even be encoded (a traceback, with the records before it already sent).
            found.append(f"line {line}: time: must be milliseconds since the epoch (an integer in [0, 2**62]), "
                         f"got {raw['time']!r}")  # fmt: skip
        if not found and raw["status"] in ("FAILED", "REJECTED") and float(raw["filled_size"]) > 0:
            found.append(f"line {line}: filled_size: {raw['filled_size']!r} on a {raw['status']} report, which "
                         "executes nothing (0): what was filled is reported as PARTIAL first")  # fmt: skip
        if found:
            problems.extend(found)
            continue
        fill = Fill(raw["fill_id"], raw["decision_id"], raw["proposal_id"], raw["market_id"], Side(raw["side"]),
                    float(raw["requested_size"]), float(raw["filled_size"]), float(raw["price"]), float(raw["fee"]),
                    FillStatus(raw["status"]), raw["reason"], int(raw["time"]), raw["agent_id"])  # fmt: skip
        bounded = out_of_bounds(fill, ())  # what the fold would refuse anyway: said here, and nothing sent
        if bounded is not None:
            problems.append(f"line {line}: {bounded}")
            continue
        out.append(fill)
    if problems:
        raise WireError(problems)
    return out


def to_json(value: Any) -> Any:
    """A record as JSON-ready data: dataclasses as objects, enums as their names, bytes as base64."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def one_line(event: Event | DeadLetter) -> str:
    """A human one-liner for `allocator tail` without --json."""
    if isinstance(event, Decision):
        funded = sum(1 for a in event.allocations if a.size > 0)
        return (f"decision {event.decision_id} cycle {event.cycle}: {len(event.allocations)} decided, {funded} funded, "
                f"{event.solver_path.value} in {event.solve_ms:.1f} ms, governor {event.governor_state.value}, "
                f"equity {event.equity:,.2f}")  # fmt: skip
    if isinstance(event, GovernorEvent):
        return f"governor {event.governor.value} {event.old_state} -> {event.new_state}: {event.cause}"
    if isinstance(event, DeadLetter):
        return f"dead letter {event.topic}[{event.partition}]@{event.offset}: {event.error}"
    if isinstance(event, ControlCommand):
        book = f" for {event.book}" if event.book is not None else ""
        return f"command {event.command.value}{book} by {event.operator_id}: {event.reason}"
    return f"{type(event).__name__} {json.dumps(to_json(event))}"
