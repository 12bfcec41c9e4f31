"""The latest mark of a market is the newest one the allocator took: a mark it refused (a dead letter at the mark's
log position: a price outside [0, 1], not finite, a market id out of bounds) is projected but marks no position.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# An outside probe: refused marks (Infinity, 1e308, 1.5, -0.1) were rows of `marks`, and the newest of them became
# the market's latest mark in the views. As 0007 did for fills, a mark with a dead letter at its position is left out
# (before the newest is chosen, so an older mark the book took stays the latest).
_0002 = importlib.import_module("migrations.versions.0002_marks_equity_views")
_0007 = importlib.import_module("migrations.versions.0007_fills_the_book_counts")
PREVIOUS_LATEST_MARKS: str = _0002.LATEST_MARKS
_head, _close = PREVIOUS_LATEST_MARKS.rsplit("\n)", 1)
# 0002's view with the condition added to the newest mark's choice.
LATEST_MARKS = f"""{_head}
      AND NOT EXISTS (SELECT 1 FROM dead_letters d
          WHERE d.topic = m2.log_topic AND d."partition" = m2.log_partition AND d."offset" = m2.log_offset)
){_close}"""
# Every view that reads latest_marks, as 0007 left them: dropped before it, created again after.
DEPENDENTS = (("exposure_by_key", _0007.EXPOSURE_BY_KEY), ("exposure_by_market", _0007.EXPOSURE_BY_MARKET),
              ("positions", _0007.POSITIONS))  # fmt: skip


def _replace_latest_marks(ddl: str) -> None:
    for view, _ in DEPENDENTS:
        op.execute(f"DROP VIEW {view}")
    op.execute("DROP VIEW latest_marks")
    op.execute(ddl)
    for _, create in reversed(DEPENDENTS):
        op.execute(create)


def upgrade() -> None:
    _replace_latest_marks(LATEST_MARKS)


def downgrade() -> None:
    _replace_latest_marks(PREVIOUS_LATEST_MARKS)
