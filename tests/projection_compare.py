"""Compares two projections: tables row for row, exactly; views (sums over floats) to 1e-9 relative."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Engine, select, text

from projections import tables

Dump = dict[str, list[tuple[Any, ...]]]


def dump(engine: Engine) -> Dump:
    compared = [t for t in tables.metadata.sorted_tables if t is not tables.consumed_offsets]
    with engine.connect() as conn:
        out = {t.name: sorted(map(tuple, conn.execute(select(t)).all()), key=repr) for t in compared}
        for view in tables.VIEWS:
            rows = conn.execute(text(f"select * from {view}")).all()
            out[view] = sorted(map(tuple, rows), key=lambda r: repr([x for x in r if not isinstance(x, float)]))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def differences(live: Dump, replayed: Dump) -> list[str]:
    """Empty when equal. A view's SUM adds floats in the database's row order, so views allow 1e-9 relative."""
    out: list[str] = []
    for name in sorted(set(live) | set(replayed)):
        a, b = live.get(name, []), replayed.get(name, [])
        if name not in tables.VIEWS:
            if a != b:
                out.append(f"table {name}: {len(a)} rows live, {len(b)} replayed, first difference "
                           f"{next(((x, y) for x, y in zip(a, b, strict=False) if x != y), None)}")  # fmt: skip
            continue
        if len(a) != len(b) or not all(
            len(x) == len(y) and all(_same(p, q) for p, q in zip(x, y, strict=True)) for x, y in zip(a, b, strict=True)
        ):
            out.append(f"view {name}: live {a[:3]} ... replayed {b[:3]} ...")
    return out
