"""What the golden-log script and its tests share: the log's names, and how a log, a projection and a rebuilt
book are read into plain JSON values that can be written down once and compared with every later version."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text

from allocator.service.sequencer import BookState
from book.config import AllocatorConfig
from eventlog.embedded import EmbeddedEventLog
from eventlog.port import EventLog, Record, Topics
from projections import tables

GOLDEN_DIR = Path(__file__).resolve().parent
LOG_FILE = GOLDEN_DIR / "golden-log.sqlite"
CONFIG_FILE = GOLDEN_DIR / "config.json"
EXPECTED_DIR = GOLDEN_DIR / "expected"
BOOK_FILE = EXPECTED_DIR / "book.json"
MANIFEST_FILE = EXPECTED_DIR / "manifest.json"

# The log's topics are `golden.<role>` and its book is `golden`: NOT the command line's defaults (`allocator`,
# `main`). Every reader must name them: a replay or audit with the defaults finds no decision at all and
# "passes" on an empty book, which is why the tests also check how many decisions they saw.
PREFIX = "golden"
BOOK = "golden"
TOPICS = Topics(PREFIX)
TOPIC_NAMES: tuple[str, ...] = (*TOPICS.inputs, *TOPICS.outputs)

# A surrogate key numbered in insertion order, which depends on the order partitions are read in.
UNORDERED_COLUMNS: Mapping[str, frozenset[str]] = {"dead_letters": frozenset({"id"})}

Row = dict[str, Any]
Dump = dict[str, list[Row]]


# --- the log ----------------------------------------------------------------------------------------------


def copy_log(target: Path) -> Path:
    """A private copy of the committed golden log: nothing may ever open the committed file for writing."""
    shutil.copyfile(LOG_FILE, target)
    return target


def read_all(log: EventLog, topic_names: Sequence[str] = TOPIC_NAMES) -> list[Record]:
    """Every committed record of the topics, in (topic, partition, offset) order."""
    ends = log.end_offsets(topic_names)
    log.assign(list(topic_names))
    for tp in log.assignment():
        log.seek(tp, 0)
    out: list[Record] = []
    for _ in range(100_000):  # a bound, not a clock: each poll returns what is there
        if all(log.position(tp) >= end for tp, end in ends.items()):
            break
        out.extend(r for r in log.poll(max_records=5_000, timeout_s=0.1) if r.offset < ends[r.topic_partition])
    else:
        raise RuntimeError(f"could not read the log up to {ends}")
    return sorted(out, key=lambda r: (r.topic, r.partition, r.offset))


def read_log_file(path: Path) -> list[Record]:
    with EmbeddedEventLog(path) as log:
        return read_all(log)


def records_digest(records: Iterable[Record]) -> str:
    """SHA-256 over every record's position, key, value and timestamp: the log's identity."""
    digest = hashlib.sha256()
    for r in records:
        line = [r.topic, r.partition, r.offset, _hex(r.key), _hex(r.value), r.timestamp_ms]
        digest.update(json.dumps(line, separators=(",", ":")).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


# --- plain JSON values -----------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """A database or state value as JSON that round-trips exactly: bytes as hex, non-finite floats named."""
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def canonical(row: Row) -> str:
    return json.dumps(row, sort_keys=True, separators=(",", ":"))


# --- the projection --------------------------------------------------------------------------------------


def dump_projection(engine: Engine) -> tuple[Dump, Dump]:
    """Every table and every view of the projection as rows of plain values, sorted; tables without the
    insertion-ordered surrogate keys."""
    out_tables: Dump = {}
    out_views: Dump = {}
    with engine.connect() as conn:
        for table in tables.metadata.sorted_tables:
            skip = UNORDERED_COLUMNS.get(table.name, frozenset())
            columns = [c for c in table.columns if c.name not in skip]
            rows = [{c.name: plain(v) for c, v in zip(columns, r, strict=True)} for r in conn.execute(select(*columns))]
            out_tables[table.name] = sorted(rows, key=canonical)
        for view in tables.VIEWS:
            result = conn.execute(text(f"SELECT * FROM {view}"))
            names = list(result.keys())
            rows = [{n: plain(v) for n, v in zip(names, r, strict=True)} for r in result]
            out_views[view] = sorted(rows, key=_view_key)
    return out_tables, out_views


def _view_key(row: Row) -> str:
    # Views sum floats in the database's own order: sort by what is not a float, compare floats with a tolerance.
    return canonical({k: v for k, v in row.items() if not isinstance(v, float)})


def write_dump(directory: Path, dump: Dump) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in dump.items():
        lines = "".join(canonical(row) + "\n" for row in rows)
        (directory / f"{name}.jsonl").write_text(lines, encoding="utf-8")


def read_dump(directory: Path) -> Dump:
    out: Dump = {}
    for path in sorted(directory.glob("*.jsonl")):
        text_ = path.read_text(encoding="utf-8")
        out[path.stem] = [json.loads(line) for line in text_.splitlines() if line]
    return out


def table_differences(expected: Dump, actual: Dump) -> list[str]:
    """Empty when every recorded table holds exactly the recorded rows. Tables and columns a later version adds
    are not compared (the log cannot have written them); a recorded one that is missing is a difference."""
    out: list[str] = []
    for name, want in sorted(expected.items()):
        if name not in actual:
            out.append(f"table {name}: recorded with {len(want)} rows, missing from the projection")
            continue
        got = _project_columns(actual[name], want)
        if isinstance(got, str):
            out.append(f"table {name}: {got}")
        elif got != want:
            out.append(_first_difference(f"table {name}", want, got))
    return out


def view_differences(expected: Dump, actual: Dump, rel_tol: float = 1e-9) -> list[str]:
    """Like `table_differences`, floats to `rel_tol` (a view's SUM adds in the database's row order)."""
    out: list[str] = []
    for name, want in sorted(expected.items()):
        if name not in actual:
            out.append(f"view {name}: recorded with {len(want)} rows, missing from the projection")
            continue
        got = _project_columns(actual[name], want)
        if isinstance(got, str):
            out.append(f"view {name}: {got}")
            continue
        got = sorted(got, key=_view_key)
        if len(got) != len(want) or not all(
            json_differences(w, g, rel_tol) == [] for w, g in zip(want, got, strict=True)
        ):
            out.append(_first_difference(f"view {name}", want, got))
    return out


def _project_columns(rows: list[Row], want: list[Row]) -> list[Row] | str:
    if not want:
        return rows if not rows else f"recorded empty, the projection has {len(rows)} rows, first {rows[0]}"
    columns = list(want[0])
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        return f"columns {missing} are gone"
    return sorted(({c: r[c] for c in columns} for r in rows), key=canonical)


def _first_difference(what: str, want: list[Row], got: list[Row]) -> str:
    wanted, have = {canonical(r) for r in want}, {canonical(r) for r in got}
    lost = sorted(wanted - have)[:3]
    extra = sorted(have - wanted)[:3]
    return f"{what}: {len(want)} rows recorded, {len(got)} projected; recorded only: {lost}; projected only: {extra}"


def json_differences(expected: Any, actual: Any, rel_tol: float = 0.0, path: str = "") -> list[str]:
    """Where two plain JSON values differ; floats within `rel_tol` (relative, 1e-12 absolute) count as equal."""
    where = path or "."
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                out.append(f"{path}.{key}: recorded, missing now")
            elif key not in expected:
                out.append(f"{path}.{key}: not recorded, now {actual[key]!r}")
            else:
                out += json_differences(expected[key], actual[key], rel_tol, f"{path}.{key}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(expected)} items recorded, {len(actual)} now: {expected!r} vs {actual!r}"]
        pairs = enumerate(zip(expected, actual, strict=True))
        return [d for i, (e, a) in pairs for d in json_differences(e, a, rel_tol, f"{path}[{i}]")]
    if _number(expected) and _number(actual):
        if expected == actual or math.isclose(expected, actual, rel_tol=rel_tol, abs_tol=1e-12 if rel_tol else 0.0):
            return []
        return [f"{where}: recorded {expected!r}, now {actual!r}"]
    if expected != actual or type(expected) is not type(actual):
        return [f"{where}: recorded {expected!r}, now {actual!r}"]
    return []


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- the book a restart rebuilds -------------------------------------------------------------------------


def book_json(state: BookState) -> dict[str, Any]:
    """What a restarted allocator knows before it decides again: the cycle, where it reads on, the money, the
    holdings and reservations, the proposals still waiting, the limits and every governor's memory."""
    book = state.portfolio
    gov = book.governor
    view = book.portfolio()
    snapshot: dict[str, Any] = plain(
        {
            "cycle": state.cycle,
            "next_input_offsets": {str(tp): offset for tp, offset in sorted(state.positions.items(), key=str)},
            "last_time": book.last_time,
            "last_decision_id": book.last_decision_id,
            "cash": book.cash,
            "equity": book.equity,
            "available": book.available,
            "reserved": book.reserved,
            "holdings": [
                {
                    "market_id": h.market_id,
                    "side": h.side.value,
                    "contracts": h.contracts,
                    "cost": h.cost,
                    "correlation_key": h.correlation_key,
                    "value": book.holding_value(h),
                }
                for h in sorted(book.holdings.values(), key=lambda h: (h.market_id, h.side.value))
            ],
            "marks": dict(sorted(book.marks.items())),
            "resolved_markets": sorted(book.resolved),
            # Proposal ids in this log are one per agent and never shared, so the recorded summary names them alone
            # (it was written before ids were keyed by agent, rules.md §2.2).
            "reservations": [
                {k: v for k, v in dataclasses.asdict(r).items() if k != "agent_id"} | {"side": r.side.value}
                for r in sorted(book.reservations.values(), key=lambda r: (r.decision_id, r.proposal_id))
            ],
            "pending_proposals": [
                {"proposal_id": p.proposal_id, "requested_size": p.requested_size} for p in book.pending.values()
            ],
            "conflicting_resends": sorted(pid for _, pid in book.conflicts),
            "seen_proposal_ids": sorted(pid for _, pid in book.seen),
            "config_in_force": book.config.to_mapping(),
            "governor_limits": dataclasses.asdict(book.limits),
            "governor": {
                "state": gov.state.value,
                "equity": gov.equity,
                "high_water_mark": gov.high_water_mark,
                "drawdown": gov.drawdown,
                "kill_switch_tripped": gov.kill_switch_tripped,
                "failure_paused": gov.failure_paused,
                "operator_halted": gov.operator_halted,
                "failure_outcomes": list(gov.failure_outcomes),
                "solve_timeouts": list(gov.solve_timeouts),
                "on_time_streak": gov.on_time_streak,
                "window_ms": gov.window_ms,
            },
            "cycle_view": {
                "equity": view.equity,
                "available": view.available,
                "high_water_mark": view.high_water_mark,
                "positions": [dataclasses.asdict(p) | {"side": p.side.value} for p in view.positions],
            },
        }
    )
    return snapshot


def expected_book() -> dict[str, Any]:
    """expected/book.json as today's fold states it.

    The released file records the operators' SET_LIMITS as `limit_overrides` on top of the golden configuration;
    the fold now keeps the configuration in force itself, so the overrides are applied to config.json here, the
    same way the fold applies a SET_LIMITS (`AllocatorConfig.with_limits`)."""
    recorded: dict[str, Any] = json.loads(BOOK_FILE.read_text(encoding="utf-8"))
    if "limit_overrides" in recorded:
        base = AllocatorConfig.from_mapping(json.loads(CONFIG_FILE.read_text(encoding="utf-8")))
        recorded["config_in_force"] = plain(base.with_limits(recorded.pop("limit_overrides")).to_mapping())
    return recorded
