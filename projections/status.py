"""`allocator status`: what the projection says about the book now — governors and why, equity against the kill
switch, exposure against its caps, the last decisions and operator commands (a read-only adapter)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, desc, func, select, text

from book.config import AllocatorConfig
from governors.rules import book_state
from governors.state import PAUSING_GOVERNORS, KillSwitchState, PauseState
from projections import tables
from schemas.events import Governor
from schemas.text import printable

GOVERNORS = (Governor.KILL_SWITCH, Governor.FAILURE_RATE, Governor.OPERATOR, Governor.SOLVER_TIMEOUT)


_MOST_DEAD = 10_000  # dead letters on the decisions topic read by status (each a forged or damaged record)


def _rows(conn: Any, statement: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(statement)]


def read_status(engine: Engine, config: AllocatorConfig, decisions: int = 5, commands: int = 5) -> dict[str, Any]:
    """Everything `allocator status` prints, as plain data (also what `--json` prints)."""
    with engine.connect() as conn:
        latest_equity = _rows(
            conn, select(tables.equity_history).order_by(desc(tables.equity_history.c.cycle)).limit(1)
        )
        events = _rows(conn, select(tables.governor_events).order_by(tables.governor_events.c.time,
                                                                     tables.governor_events.c.event_id))  # fmt: skip
        # The newest decision is read even when none is to be listed: the book's state is the one it records.
        last = _rows(conn, select(tables.decisions).order_by(desc(tables.decisions.c.cycle)).limit(max(decisions, 1)))
        funded: dict[str, int] = dict(
            conn.execute(
                select(tables.allocations.c.decision_id, func.count())
                .where(tables.allocations.c.size > 0)
                .where(tables.allocations.c.decision_id.in_([d["decision_id"] for d in last]))
                .group_by(tables.allocations.c.decision_id)
            ).all()
        )
        recent = _rows(
            conn, select(tables.control_commands).order_by(desc(tables.control_commands.c.time)).limit(commands)
        )
        head = _rows(
            conn,
            select(tables.decisions.c.decision_id, tables.decisions.c.cycle, tables.decisions.c.decision_hash,
                   tables.decisions.c.previous_hash, tables.decisions.c.key_id)
            .order_by(desc(tables.decisions.c.log_partition), desc(tables.decisions.c.log_offset)).limit(1),
        )  # fmt: skip
        # The dead letters of the commands listed: a command out of its bounds never reached the fold.
        positions = [tuple(c["source"].rsplit("/", 2)) for c in recent if c.get("source")]
        dl = tables.dead_letters
        rejected = {
            f"{r.topic}/{r.partition}/{r.offset}": r.error
            for topic in {p[0] for p in positions}
            for r in conn.execute(
                select(dl.c.topic, dl.c.partition, dl.c.offset, dl.c.error)
                .where(dl.c.topic == topic)
                .where(dl.c.offset.in_([int(p[2]) for p in positions if p[0] == topic]))
            )
        }
        # The log's decisions the projector dead-lettered (forged or damaged, "not projectable"): the projection will
        # never hold them, so status must not count it behind them. The newest first: only those past the projection's
        # newest decision matter, so a cap keeps the ones that do.
        dead_decisions = (
            [
                [int(r.partition), int(r.offset)]
                for r in conn.execute(
                    select(dl.c.partition, dl.c.offset)
                    .where(dl.c.topic == last[0]["log_topic"])
                    .order_by(desc(dl.c.offset))
                    .limit(_MOST_DEAD)
                )
            ]
            if last
            else []
        )
        markets = _rows(conn, text("SELECT market_id, signed_exposure, gross_exposure FROM exposure_by_market"))
        keys = _rows(conn, text("SELECT correlation_key, gross_exposure, gross_cost FROM exposure_by_key"))
    # What the fold made of each command: the same-state events its record caused (refused, or awaiting a second key).
    noted: dict[str, str] = {}
    for e in events:
        if e["old_state"] == e["new_state"] and e["source"]:
            noted[e["source"]] = e["cause"]
    for c in recent:
        source = c.get("source")
        c["noted"] = (
            None
            if source is None
            else noted.get(source) or (f"dead letter, no effect: {rejected[source]}" if source in rejected else None)
        )
    # Each governor's last change. An event whose old and new state are the same is a notice, not a change (a
    # refused operator command, a reset awaiting its second key: those carry the book's state, HALTED while the kill
    # switch is tripped), and must not hide the change before it: an operator halt stays a halt.
    latest: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["old_state"] != e["new_state"]:
            latest[e["governor"]] = e
    equity = latest_equity[0] if latest_equity else None
    e_now = float(equity["equity"]) if equity else 0.0
    tripped = latest.get(Governor.KILL_SWITCH, {}).get("new_state") == KillSwitchState.TRIPPED
    paused = any(latest.get(g, {}).get("new_state") == PauseState.PAUSED for g in PAUSING_GOVERNORS)
    # The book's state is the one its last decision records (a signed decision is verified when the projector ran
    # with --trusted-keys); governor events are not signed, so what they add up to is only a claim until a decision
    # confirms it: a forged TRIPPED -> ARMED must not show a halted book as ACTIVE. They differ for real only between
    # a cycle that failed (its halt is published without a decision) and the next decision.
    claimed = book_state(tripped, paused).value
    governor = str(last[0]["governor_state"]) if last else claimed
    # The last decision records the window it ran with; a change its own solve caused (published with it) is newer.
    window_ms = int(last[0]["opportunity_window_ms"]) if last else round(config.opportunity_window_s * 1000)
    resized = latest.get(Governor.SOLVER_TIMEOUT)
    if resized is not None and (not last or int(resized["time"]) >= int(last[0]["decided_at"])):
        window_ms = int(resized["new_state"])
    return {
        "governor_state": governor,
        # What the governor events add up to, when it is not what the last decision records (see above).
        "governor_events_claim": claimed if claimed != governor else None,
        "governors": {g: latest[g] for g in GOVERNORS if g in latest},
        "equity": equity,
        "kill_switch_drawdown": config.kill_switch_drawdown,
        "opportunity_window_ms": window_ms,
        "configured_window_ms": round(config.opportunity_window_s * 1000),
        "markets": [
            {**m, "cap": config.market_cap * e_now} for m in sorted(markets, key=lambda m: -abs(m["signed_exposure"]))
        ],
        "keys": [
            {**k, "cap": config.group_caps.get(k["correlation_key"], config.group_cap * e_now)}
            for k in sorted(keys, key=lambda k: -k["gross_exposure"])
        ],
        "decisions": [{**d, "funded": funded.get(d["decision_id"], 0)} for d in last[:decisions]],
        "latest_decision": {**last[0], "funded": funded.get(last[0]["decision_id"], 0)} if last else None,
        "commands": recent,
        # The newest decision projected and its hash: `allocator audit --head` checks a log still reaches it.
        "chain_head": head[0] if head else None,
        "dead_decisions": dead_decisions,
    }


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):  # a log time outside the years 1-9999 (a damaged log) is shown raw
        return f"{ms} ms since the epoch"


def _state(governor: str, state: str) -> str:
    """A governor's state as shown: the solver-timeout governor's is the opportunity window in milliseconds (a bare
    number read as nothing in particular), the others' a word. Governor events are not signed and their states not
    bounded, so only a number of a window's size is read as one; anything else is shown as written."""
    if governor == "SOLVER_TIMEOUT" and state.isascii() and state.isdigit() and len(state) <= 18:
        return f"{int(state):,} ms"
    return state


def _share(value: float, cap: float) -> str:
    return f"{abs(value) / cap:6.0%}" if cap > 0 else "     -"


REJECTIONS_SHOWN = 10


def _configuration_lines(status: dict[str, Any]) -> list[str]:
    """Where the caps come from, and what the log holds that does not verify (when the caller said: `chain`)."""
    configuration, chain = status.get("configuration"), status.get("chain")
    if configuration is None or chain is None:
        return []
    where = {"log": "the log's", "file": "the --config file's", "defaults": "the defaults"}[configuration["source"]]
    line = f"configuration: {where} (hash {configuration['config_hash'][:12]})"
    if configuration["note"]:
        line += f": {configuration['note']}"
    elif chain["signing_keys"]:
        keys = ", ".join(chain["trusted_keys"])
        line += f", from {chain['verified_decisions']} verified decisions (trusted keys: {keys})"
    else:
        line += "; the decisions are unsigned: a forged one cannot be told apart"
    # Which solver decides the book's next cycle: a book keeps the revision its log records (rules.md §4.8).
    out = [line, f"solver: revision {configuration['solver_revision']}, a work budget of "
                 f"{configuration['solver_work_limit']:,} units a decision"]  # fmt: skip
    rejections = chain["rejections"]
    if rejections and chain["warning"] is None:
        out.append(f"decisions on the log that do not verify ({len(rejections)}; never folded, not in the caps):")
        out.extend(f"  {r['describe']}" for r in rejections[:REJECTIONS_SHOWN])
        if len(rejections) > REJECTIONS_SHOWN:
            out.append(f"  ... and {len(rejections) - REJECTIONS_SHOWN} more (--json lists every one)")
    return out


def _warning_lines(status: dict[str, Any]) -> list[str]:
    chain = status.get("chain")
    if chain is None or chain["warning"] is None:
        return []
    hint = "check --trusted-keys" if chain["trusted_keys"] else "pass --trusted-keys"
    return [f"WARNING: {chain['warning']}; the caps below are not the log's: {hint}"]


# Text from the log is shown cut and on one line: an operator's reason of 1,000,000 characters (dead-lettered by the
# allocator, still a row) printed a 1 MB line, and a line break in one could print lines status never wrote.
SHOWN_TEXT = 200


def _shown(value: object, limit: int = SHOWN_TEXT) -> str:
    """`value` as one line of at most about `limit` characters: control characters as `?`, the rest cut with its
    length said."""
    text = printable(str(value))
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def format_status(status: dict[str, Any]) -> str:
    out: list[str] = _warning_lines(status)
    equity = status["equity"]
    d0 = status.get("latest_decision") or (status["decisions"][0] if status["decisions"] else None)
    if d0 is None:
        return "\n".join([*out, "no decisions in the projection yet (is `allocator project` running against this "
                          "book's log?)", *_configuration_lines(status)])  # fmt: skip
    out.append(f"book {_shown(d0['book_id'])}: governor {status['governor_state']}   (projection as of cycle "
               f"{d0['cycle']}, {_when(d0['decided_at'])})")  # fmt: skip
    if status.get("log_cycle") is not None and status["log_cycle"] > d0["cycle"]:
        out.append(f"  the projection is behind its log, which holds decisions up to cycle {status['log_cycle']}: "
                   "what follows may be stale (is `allocator project` running?)")  # fmt: skip
    if status.get("governor_events_claim"):
        out.append(f"  the governor events add up to {status['governor_events_claim']}, not what the last decision "
                   "records: governor events are not signed, so the book's state is the decision's until a decision "
                   "confirms them (a cycle that failed halts the book before its next decision; anything else is "
                   "not the allocator's: run `allocator audit`)")  # fmt: skip
    names = {"KILL_SWITCH": "kill switch", "FAILURE_RATE": "failure rate", "OPERATOR": "operator halt",
             "SOLVER_TIMEOUT": "solver timeout"}  # fmt: skip
    for g, e in status["governors"].items():
        old, new = _state(g, e["old_state"]), _state(g, e["new_state"])
        out.append(f"  {names[g]:<15} {_shown(old)} -> {_shown(new):<8} {_when(e['time'])}  {_shown(e['cause'])}")
    if not status["governors"]:
        out.append("  no governor has changed state")
    out.append(f"  opportunity window {status['opportunity_window_ms'] / 1000:,.0f} s "
               f"(configured {status['configured_window_ms'] / 1000:,.0f} s)")  # fmt: skip
    out.extend(_configuration_lines(status))
    if equity:
        line = status["kill_switch_drawdown"]
        dd = float(equity["drawdown"])
        room = "BEYOND" if dd >= line else f"{line - dd:.2%} away"
        out.append(f"equity {equity['equity']:,.2f}   high-water mark {equity['high_water_mark']:,.2f}   drawdown "
                   f"{dd:.2%} (kill switch at {line:.0%}: {room})")  # fmt: skip
        out.append(
            f"available {equity['available']:,.2f} (at the start of cycle {equity['cycle']}: cash less "
            "reservations, before its allocations)"
        )
    exposures = (
        ("exposure by market (signed marked value; cap = market_cap x equity)", status["markets"], "market_id",
         "signed_exposure"),
        ("exposure by correlation key (gross marked value, as the group cap counts it; reservations not shown)",
         status["keys"], "correlation_key", "gross_exposure"),
    )  # fmt: skip
    for title, rows, name, value in exposures:
        out.append(title)
        for r in rows:
            share = _share(r[value], r["cap"])
            out.append(f"  {_shown(r[name]):<28} {r[value]:>12,.2f}  cap {r['cap']:>11,.2f}  {share} of cap")
        if not rows:
            out.append("  none")
    out.append("last decisions")
    out.append(f"  {'cycle':>7}  {'decided at':<23} {'governor':<8} {'solver path':<17} {'solve ms':>9} {'gap':>9} "
               f"{'funded':>6}")  # fmt: skip
    for d in status["decisions"]:
        gap = "-" if d["gap"] is None else f"{d['gap']:.1e}"
        refused = f"  REFUSED: {_shown(d['refused'])}" if d.get("refused") else ""
        out.append(f"  {d['cycle']:>7}  {_when(d['decided_at']):<23} {d['governor_state']:<8} {d['solver_path']:<17} "
                   f"{d['solve_ms']:>9.1f} {gap:>9} {d['funded']:>6}{refused}")  # fmt: skip
    out.append("operator commands (latest first)")
    for c in status["commands"]:
        limits = f" {_shown(c['limits'])}" if c["limits"] else ""
        signed = f" (key {_shown(c['key_id'])})" if c.get("key_id") else ""
        noted = f"  [{_shown(c['noted'])}]" if c.get("noted") else ""
        out.append(f"  {_when(c['time'])}  {c['command']:<17} by {_shown(c['operator_id'])}{signed}: "
                   f"{_shown(c['reason'])}{limits}{noted}")  # fmt: skip
    if not status["commands"]:
        out.append("  none")
    return "\n".join(out)
