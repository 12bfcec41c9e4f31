"""The demo's report: a side-by-side summary, the raw tables as CSV, PNG plots and one HTML page.

Everything here is read back from each run's projection (the same tables an auditor queries), except what only
the cycle saw as it ran (exposure by key against its cap, the book's CVaR), which the run recorded per cycle.
"""

from __future__ import annotations

import csv
import html
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from governors.rules import drawdown
from projections import tables
from simulation.market import START_MS
from simulation.session import CycleStats, RunResult

Row = dict[str, Any]
STATUS_ORDER = ("FUNDED", "CUT", "NETTED", "DEFERRED", "EXPIRED")


@dataclass
class RunView:
    """One run as the projection tells it."""

    name: str
    stats: list[CycleStats]
    decisions: list[Row]
    allocations: list[Row]
    governor_events: list[Row]
    commands: list[Row]
    dead_letters: int

    def final_outcomes(self) -> Counter[str]:
        """Each proposal's last status (DEFERRED: still waiting when the session ended), REJECTED by reason."""
        last: dict[tuple[str, str, bool], Row] = {}
        for a in self.allocations:
            last[(a["agent_id"], a["proposal_id"], "DUPLICATE" in a["reasons"])] = a
        out: Counter[str] = Counter()
        for a in last.values():
            if a["status"] == "REJECTED":
                out[f"REJECTED {a['reasons'].split(',')[0] or 'no reason'}"] += 1
            else:
                out[a["status"]] += 1
        return out

    def governor_count(self, governor: str, new_state: str | None = None, *, shrinking: bool = False) -> int:
        n = 0
        for e in self.governor_events:
            if e["governor"] != governor:
                continue
            if new_state is not None and e["new_state"] != new_state:
                continue
            if shrinking and not int(e["new_state"]) < int(e["old_state"]):
                continue
            n += 1
        return n


def read_run(result: RunResult) -> RunView:
    with result.engine.connect() as conn:
        decisions = [
            dict(r._mapping) for r in conn.execute(select(tables.decisions).order_by(tables.decisions.c.cycle))
        ]
        cycle_of = {d["decision_id"]: d["cycle"] for d in decisions}
        allocations = [dict(r._mapping) for r in conn.execute(select(tables.allocations))]
        allocations.sort(key=lambda a: (cycle_of.get(a["decision_id"], 0), a["rank"]))
        for a in allocations:
            a["cycle"] = cycle_of.get(a["decision_id"])
        events = [
            dict(r._mapping)
            for r in conn.execute(
                select(tables.governor_events).order_by(
                    tables.governor_events.c.time, tables.governor_events.c.event_id
                )
            )
        ]
        commands = [
            dict(r._mapping)
            for r in conn.execute(select(tables.control_commands).order_by(tables.control_commands.c.time))
        ]
        letters = len(list(conn.execute(select(tables.dead_letters.c.id))))
    return RunView(result.name, result.stats, decisions, allocations, events, commands, letters)


def max_drawdown(equity: Sequence[float]) -> float:
    """The largest fall from a running peak, as a fraction of that peak."""
    peak, worst = -math.inf, 0.0
    for e in equity:
        peak = max(peak, e)
        worst = max(worst, drawdown(e, peak))
    return worst


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary_rows(views: Sequence[RunView], initial_cash: float) -> list[tuple[str, list[str]]]:
    """(label, one value per run) for the side-by-side table."""
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, values: Iterable[str]) -> None:
        rows.append((label, list(values)))

    finals = [v.stats[-1].equity if v.stats else initial_cash for v in views]
    add("final equity", (f"{e:,.0f}" for e in finals))
    add("return", (f"{e / initial_cash - 1:+.2%}" for e in finals))
    add("maximum drawdown (from peak)", (f"{max_drawdown([s.equity for s in v.stats]):.2%}" for v in views))
    add("worst CVaR95 of the book / equity", (
        f"{max((s.book_cvar / s.equity for s in v.stats if s.equity > 0), default=0.0):.2%}" for v in views
    ))  # fmt: skip
    add("kill-switch trips", (str(v.governor_count("KILL_SWITCH", "TRIPPED")) for v in views))
    add("failure-rate pauses", (str(v.governor_count("FAILURE_RATE", "PAUSED")) for v in views))
    add("opportunity-window halvings", (str(v.governor_count("SOLVER_TIMEOUT", shrinking=True)) for v in views))
    add("operator commands", (str(len(v.commands)) for v in views))
    add("decisions", (str(len(v.decisions)) for v in views))
    outcomes = [v.final_outcomes() for v in views]
    add("proposals decided", (str(sum(o.values())) for o in outcomes))
    rejected = sorted({k for o in outcomes for k in o if k.startswith("REJECTED")})
    for status in (*STATUS_ORDER, *rejected):
        label = "DEFERRED (still waiting at the end)" if status == "DEFERRED" else status
        add(f"  {label}", (str(o.get(status, 0)) for o in outcomes))
    add("dead letters", (str(v.dead_letters) for v in views))
    paths = [Counter(d["solver_path"] for d in v.decisions) for v in views]
    add("solver paths", (", ".join(f"{p} {n}" for p, n in sorted(c.items())) for c in paths))
    times = [[s.decision_ms for s in v.stats] for v in views]
    add("decision time median / p95 / max (ms)", (
        f"{_quantile(t, 0.5):.1f} / {_quantile(t, 0.95):.1f} / {max(t):.1f}" if t else "-" for t in times
    ))  # fmt: skip
    return rows


def format_table(headers: Sequence[str], rows: Sequence[tuple[str, list[str]]]) -> str:
    width = max(len(label) for label, _ in rows)
    cols = [max(len(h), *(len(values[i]) for _, values in rows)) for i, h in enumerate(headers)]
    lines = [" " * width + " | " + " | ".join(h.rjust(c) for h, c in zip(headers, cols, strict=True))]
    lines.append("-" * len(lines[0]))
    for label, values in rows:
        lines.append(label.ljust(width) + " | " + " | ".join(v.rjust(c) for v, c in zip(values, cols, strict=True)))
    return "\n".join(lines)


# --- CSV -----------------------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    names = list(columns) if columns is not None else (list(rows[0]) if rows else ["empty"])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in names})


def _cell(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return value


def write_csvs(views: Sequence[RunView], out: Path) -> list[str]:
    written: list[str] = []
    for v in views:
        keys = sorted({k for s in v.stats for k in s.exposure})
        cycles = []
        for s in v.stats:
            row = {k: val for k, val in asdict(s).items() if k not in ("exposure", "group_cap", "default_group_cap")}
            for k in keys:
                row[f"exposure:{k}"] = s.exposure.get(k, 0.0)
                row[f"cap:{k}"] = s.group_cap.get(k, s.default_group_cap)
            cycles.append(row)
        for table, rows in (
            ("cycles", cycles),
            ("decisions", v.decisions),
            ("allocations", v.allocations),
            ("governor_events", v.governor_events),
            ("control_commands", v.commands),
        ):
            name = f"{v.name}-{table}.csv"
            _write_csv(out / name, rows)
            written.append(name)
    return written


# --- plots ---------------------------------------------------------------------------------------------------

COLORS = {"allocator": "#1f5fa8", "naive": "#c2452d"}
GAMES = "game-* (largest single game)"


def _minutes(ms: int) -> float:
    return (ms - START_MS) / 60_000.0


def plot_all(views: Sequence[RunView], out: Path, kill_switch: float, time_limit_ms: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: list[str] = []

    # 1. Equity, drawdown against the kill-switch line, and the governors over time.
    fig, (ax_e, ax_d, ax_g) = plt.subplots(3, 1, figsize=(11, 9), sharex=True, height_ratios=(3, 2, 1.4))
    for v in views:
        t = [_minutes(s.time) for s in v.stats]
        color = COLORS.get(v.name, "gray")
        ax_e.plot(t, [s.equity for s in v.stats], color=color, label=v.name)
        peak, dd = -math.inf, []
        for s in v.stats:
            peak = max(peak, s.equity)
            dd.append(100.0 * (1.0 - s.equity / peak))
        ax_d.plot(t, dd, color=color, label=v.name)
    ax_d.axhline(100 * kill_switch, color="black", linestyle="--", linewidth=1)
    ax_d.text(0.0, 100 * kill_switch, f" kill switch {kill_switch:.0%}", va="bottom", fontsize=8)
    ax_e.set_ylabel("equity")
    ax_e.set_title("Equity and drawdown: the allocator against naive per-agent sizing (same world, same proposals)")
    ax_e.legend(loc="upper left")
    ax_d.set_ylabel("drawdown from peak (%)")
    ax_d.invert_yaxis()
    main = next((v for v in views if v.name == "allocator"), views[0])
    t = [_minutes(s.time) for s in main.stats]
    ax_g.step(t, [s.window_ms / 1000.0 for s in main.stats], where="post", color="#444444", label="opportunity window")
    ax_g.set_yscale("log")
    ax_g.set_ylabel("window (s)")
    ax_g.set_xlabel("session time (minutes of log time)")
    shades = {"PAUSED": "#f2c14e", "HALTED": "#d1495b"}
    for s0, s1 in zip(main.stats, main.stats[1:], strict=False):
        if s0.governor_state in shades:
            for ax in (ax_e, ax_d, ax_g):
                ax.axvspan(_minutes(s0.time), _minutes(s1.time), color=shades[s0.governor_state], alpha=0.25, lw=0)
    for e in main.governor_events:
        x = _minutes(e["time"])
        ax_g.axvline(x, color="#888888", linewidth=0.6)
        if e["governor"] != "SOLVER_TIMEOUT":
            label = f"{e['governor']}: {e['old_state']}→{e['new_state']}"
            ax_e.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=7, va="top",
                          ha="right", color="#333333")  # fmt: skip
    ax_g.set_title("allocator run: yellow = PAUSED, red = HALTED; grey lines = governor events", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "equity.png", dpi=110)
    plt.close(fig)
    files.append("equity.png")

    # 2. Exposure by correlation key against its cap (the games, one key each, as the largest game at the time).
    def exposure(s: CycleStats, key: str) -> float:
        if key != GAMES:
            return s.exposure.get(key, 0.0)
        return max((x for k, x in s.exposure.items() if k.startswith("game-")), default=0.0)

    def cap(s: CycleStats, key: str) -> float:
        return s.group_cap.get(key, s.default_group_cap)

    seen = {k for v in views for s in v.stats for k in s.exposure}
    keys = [
        *sorted(k for k in seen if not k.startswith("game-")),
        *([GAMES] if any(k.startswith("game-") for k in seen) else []),
    ]
    cols = 3
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), sharex=True, squeeze=False)
    for i, key in enumerate(keys):
        ax = axes[i // cols][i % cols]
        for v in views:
            t = [_minutes(s.time) for s in v.stats]
            ax.plot(t, [exposure(s, key) for s in v.stats], color=COLORS.get(v.name, "gray"), label=v.name)
        t = [_minutes(s.time) for s in main.stats]
        ax.plot(t, [cap(s, key) for s in main.stats], color="black", linestyle="--", linewidth=1,
                label="cap (at the allocator's equity)")  # fmt: skip
        ax.set_title(key, fontsize=10)
        ax.set_ylabel("gross exposure")
    for j in range(len(keys), rows * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Exposure by correlation key (marked positions and reserved capital) against its group cap")
    fig.tight_layout()
    fig.savefig(out / "exposure.png", dpi=110)
    plt.close(fig)
    files.append("exposure.png")

    # 3. What happened to the proposals.
    outcomes = [v.final_outcomes() for v in views]
    labels = [*STATUS_ORDER, *sorted({k for o in outcomes for k in o if k.startswith("REJECTED")})]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.5))
    height = 0.8 / len(views)
    for j, (v, o) in enumerate(zip(views, outcomes, strict=True)):
        ys = [i + j * height for i in range(len(labels))]
        counts = [o.get(label, 0) for label in labels]
        ax.barh(ys, counts, height=height, color=COLORS.get(v.name, "gray"), label=v.name)
        for y, c in zip(ys, counts, strict=True):
            if c:
                ax.text(c, y, f" {c}", va="center", fontsize=8)
    ax.set_yticks([i + height * (len(views) - 1) / 2 for i in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel("proposals (final status; DEFERRED = still waiting at the end)")
    ax.set_title("Funded, cut, netted, deferred, expired and rejected by reason")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "outcomes.png", dpi=110)
    plt.close(fig)
    files.append("outcomes.png")

    # 4. How long decisions took: validation to decision, each cycle, by the path its solver took.
    fig, ax = plt.subplots(figsize=(10, 4))
    by_path: dict[str, list[float]] = {}
    for v in views:
        for s in v.stats:
            label = f"{v.name}: {s.solver_path}" if v.name != "naive" else "naive (no solver)"
            by_path.setdefault(label, []).append(s.decision_ms)
    if by_path:
        top = max(time_limit_ms, *(max(x) for x in by_path.values()))
        bins = [top * i / 50 for i in range(51)]
        ax.hist(list(by_path.values()), bins=bins, stacked=True, label=list(by_path))
    ax.axvline(time_limit_ms, color="black", linestyle="--", linewidth=1)
    ax.text(time_limit_ms, ax.get_ylim()[1] * 0.95, f" safety net {time_limit_ms:.0f} ms", fontsize=8, va="top")
    ax.set_xlabel("decision time, validation to decision (ms)")
    ax.set_ylabel("cycles")
    ax.set_title("Decision times per cycle, by solver path (NOT_RUN: nothing to size, or a governor said no)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "decision_times.png", dpi=110)
    plt.close(fig)
    files.append("decision_times.png")
    return files


# --- HTML ----------------------------------------------------------------------------------------------------


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(
    out: Path,
    title: str,
    intro: Sequence[str],
    summary: Sequence[tuple[str, list[str]]],
    headers: Sequence[str],
    views: Sequence[RunView],
    plots: Sequence[str],
    csvs: Sequence[str],
    notes: Sequence[str],
    commands: Sequence[str] = (),
) -> Path:
    main = next((v for v in views if v.name == "allocator"), views[0])
    governor_rows = [
        (f"{_minutes(e['time']):.2f}", e["governor"], f"{e['old_state']} → {e['new_state']}", e["cause"],
         "" if e["measured"] is None else f"{e['measured']:.4g}",
         "" if e["limit_value"] is None else f"{e['limit_value']:.4g}")
        for e in main.governor_events
    ]  # fmt: skip
    command_rows = [
        (f"{_minutes(c['time']):.2f}", c["operator_id"], c["command"], c["reason"], c["limits"] or "")
        for c in main.commands
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}"
        "td:not(:first-child){text-align:right}th{background:#f3f3f3}img{max-width:100%;margin:1em 0}"
        ".events td{text-align:left}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p>{html.escape(p)}</p>" for p in intro),
        *(
            [
                "<h2>Check it yourself</h2>",
                "<p>Audit the allocator's log and replay both logs (the configuration and the topic prefix come "
                "from the log):</p>",
                "<pre>" + html.escape("\n".join(commands)) + "</pre>",
            ]
            if commands
            else []
        ),
        "<h2>Side by side</h2>",
        _html_table(["", *headers], ([label, *values] for label, values in summary)),
        "<h2>When and why the governors acted (allocator run)</h2>",
        "<p>Time is minutes of log time since the session started.</p>",
        "<div class='events'>"
        + (
            _html_table(["minute", "governor", "change", "cause", "measured", "limit"], governor_rows)
            if governor_rows
            else "<p>No governor changed state.</p>"
        )
        + "</div>",
        "<h2>Operator commands</h2>",
        "<div class='events'>"
        + (
            _html_table(["minute", "operator", "command", "reason", "limits"], command_rows)
            if command_rows
            else "<p>None.</p>"
        )
        + "</div>",
        "<h2>Plots</h2>",
        *(f"<img src='{html.escape(p)}' alt='{html.escape(p)}'>" for p in plots),
        "<h2>What to keep in mind</h2>",
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
        "<h2>Raw tables (CSV)</h2>",
        "<ul>" + "".join(f"<li><a href='{html.escape(c)}'>{html.escape(c)}</a></li>" for c in csvs) + "</ul>",
        "</body></html>",
    ]
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
