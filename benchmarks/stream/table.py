"""The benchmark's report: progress lines on stderr, result rows, the aligned table and the target verdicts."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


def say(line: str) -> None:
    """A progress line, on stderr: stdout carries the report alone."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class Row:
    part: str
    case: str
    events: str
    rate: str
    p50: str = ""
    p99: str = ""
    backlog: str = ""
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        head = Row("part", "case", "events", "rate (ev/s)", "p50", "p99", "backlog", "note")
        rows = [head, *self.rows]
        cols = ("part", "case", "events", "rate", "p50", "p99", "backlog", "note")
        width = {c: max(len(getattr(r, c)) for r in rows) for c in cols}
        right = {"events", "rate", "p50", "p99"}

        def fmt(r: Row) -> str:
            cells = [getattr(r, c).rjust(width[c]) if c in right else getattr(r, c).ljust(width[c]) for c in cols]
            return " | ".join(cells).rstrip()

        body = [fmt(r) for r in self.rows]
        return "\n".join([fmt(head), "-" * max(map(len, [fmt(head), *body])), *body])


def verdict_at_least(name: str, measured: float, target: float, unit: str) -> str:
    ratio = measured / target
    how = "met" if ratio >= 1 else f"MISSED by {1 - ratio:.0%} (needs {target / max(measured, 1e-9):.2f}x)"
    return f"target {name} >= {target:,.0f} {unit}: measured {measured:,.0f} {unit}, ratio {ratio:.2f} -> {how}"


def verdict_at_most(name: str, measured: float, target: float, unit: str) -> str:
    ratio = measured / target
    how = "met" if ratio <= 1 else f"MISSED: {ratio:.2f}x the limit (over by {measured - target:,.0f} {unit})"
    shown = f"{measured:,.0f} {unit}" if measured != float("inf") else "never (proposals left undecided)"
    return f"target {name} <= {target:,.0f} {unit}: measured {shown}, ratio {ratio:.2f} -> {how}"
