"""Positions and exposures count only the fills the allocator took: a fill it refused (a dead letter at the fill's
log position) is projected, and marked so, but moves no position.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# rules.md §11.1: a fill counts only for an allocation a committed decision funded, within its size and fee; the
# allocator turns any other into a dead letter naming the fill's position, and the fold never sees it. The views
# used to sum every projected fill, so one executor's fill for a market nobody funded showed as exposure of any
# size. A fill projected before this revision has no position (null) and counts as before until a replay.
TAKEN = """NOT EXISTS (SELECT 1 FROM dead_letters d
    WHERE d.topic = f.log_topic AND d."partition" = f.log_partition AND d."offset" = f.log_offset)"""
# The views as the revisions before left them (0002: positions and exposure by market; 0005: exposure by key), and
# the same with the condition added before their GROUP BY.
_0002 = importlib.import_module("migrations.versions.0002_marks_equity_views")
_0005 = importlib.import_module("migrations.versions.0005_proposal_ids_per_agent")
PREVIOUS_POSITIONS: str = _0002.POSITIONS
EXPOSURE_BY_MARKET: str = _0002.EXPOSURE_BY_MARKET
PREVIOUS_BY_KEY: str = _0005.EXPOSURE_BY_KEY


def _taken(view: str) -> str:
    head, group = view.split("\nGROUP BY ")
    return f"{head}\n  AND {TAKEN}\nGROUP BY {group}"


POSITIONS = _taken(PREVIOUS_POSITIONS)
EXPOSURE_BY_KEY = _taken(PREVIOUS_BY_KEY)
VIEWS = ("exposure_by_key", "exposure_by_market", "positions")


def upgrade() -> None:
    for view in VIEWS:  # they read fills: out of the way while SQLite's batch mode rebuilds it
        op.execute(f"DROP VIEW {view}")
    with op.batch_alter_table("fills") as batch:
        for name, kind, what in (
            ("log_topic", sa.String(249), "topic"),
            ("log_partition", sa.Integer, "partition"),
            ("log_offset", sa.BigInteger, "offset"),
        ):
            batch.add_column(
                sa.Column(name, kind, nullable=True, comment=f"The {what} of the fill's record; null before 0007.")
            )
    for ddl in (POSITIONS, EXPOSURE_BY_MARKET, EXPOSURE_BY_KEY):
        op.execute(ddl)


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW {view}")
    with op.batch_alter_table("fills") as batch:
        for name in ("log_offset", "log_partition", "log_topic"):
            batch.drop_column(name)
    for ddl in (PREVIOUS_POSITIONS, EXPOSURE_BY_MARKET, PREVIOUS_BY_KEY):
        op.execute(ddl)
