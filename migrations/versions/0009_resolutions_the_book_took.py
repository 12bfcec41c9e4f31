"""A market counts as resolved in the views only by a resolution the allocator took: a resolution it refused (a dead
letter at the resolution's log position: a market the book had not seen, or one already resolved) is projected but
resolves nothing. Resolutions are kept one row per log position, so a refused one no longer takes the market's only
row from the genuine resolution after it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# An outside probe: the market feed resolved a market before any proposal named it; the allocator refused that
# ("not a market this book has seen"), but its row stood in `resolutions`, and the views drop every market listed
# there: the position the book later took in that market (funded, filled, marked down) was missing from `positions`,
# both exposure views and `status`. As 0007 did for fills and 0008 for marks, a resolution with a dead letter at its
# position is left out.
_0007 = importlib.import_module("migrations.versions.0007_fills_the_book_counts")
_0002 = importlib.import_module("migrations.versions.0002_marks_equity_views")
RESOLVED_BEFORE = "f.market_id NOT IN (SELECT market_id FROM resolutions)"
RESOLVED = """f.market_id NOT IN (SELECT r.market_id FROM resolutions r WHERE NOT EXISTS (SELECT 1 FROM dead_letters d
    WHERE d.topic = r.log_topic AND d."partition" = r.log_partition AND d."offset" = r.log_offset))"""
PREVIOUS_POSITIONS: str = _0007.POSITIONS
PREVIOUS_BY_KEY: str = _0007.EXPOSURE_BY_KEY
EXPOSURE_BY_MARKET: str = _0007.EXPOSURE_BY_MARKET
assert RESOLVED_BEFORE in PREVIOUS_POSITIONS and RESOLVED_BEFORE in PREVIOUS_BY_KEY
POSITIONS = PREVIOUS_POSITIONS.replace(RESOLVED_BEFORE, RESOLVED)
EXPOSURE_BY_KEY = PREVIOUS_BY_KEY.replace(RESOLVED_BEFORE, RESOLVED)
VIEWS = ("exposure_by_key", "exposure_by_market", "positions")  # every view that reads resolutions, dependents first
# A row projected before this revision has no position: it keeps the market resolved (as before) until a replay.
NO_TOPIC = ""
TIME = '"time"'  # a keyword in SQL: quoted


def _rebuild(columns: list[sa.Column[object] | sa.PrimaryKeyConstraint], copy: str, views: tuple[str, str]) -> None:
    """The resolutions table made again with `columns`, its rows copied by `copy` (an INSERT ... SELECT from
    `resolutions_old`), and the views that read it dropped before and created again after (`views`: positions and
    exposure by key; exposure by market reads positions)."""
    for view in VIEWS:
        op.execute(f"DROP VIEW {view}")
    op.rename_table("resolutions", "resolutions_old")
    op.create_table("resolutions", *columns)
    op.execute(copy)
    op.drop_table("resolutions_old")
    positions, by_key = views
    for ddl in (positions, EXPOSURE_BY_MARKET, by_key):
        op.execute(ddl)


def upgrade() -> None:
    _rebuild(
        [
            sa.Column("log_topic", sa.String(249), nullable=False),
            sa.Column("log_partition", sa.Integer, nullable=False),
            sa.Column("log_offset", sa.BigInteger, nullable=False),
            sa.Column("market_id", sa.String(249), nullable=False),
            sa.Column("outcome", sa.String(8), nullable=False),
            sa.Column("time", sa.BigInteger, nullable=False),
            sa.PrimaryKeyConstraint("log_topic", "log_partition", "log_offset"),
        ],
        # Each earlier row at a position of its own that no record has (partition -1, offsets -1, -2, ...).
        f"INSERT INTO resolutions (log_topic, log_partition, log_offset, market_id, outcome, {TIME}) "
        f"SELECT '{NO_TOPIC}', -1, -ROW_NUMBER() OVER (ORDER BY market_id), market_id, outcome, {TIME} "
        "FROM resolutions_old",
        (POSITIONS, EXPOSURE_BY_KEY),
    )
    op.create_index("ix_resolutions_market", "resolutions", ["market_id"])


def downgrade() -> None:
    op.drop_index("ix_resolutions_market", "resolutions")
    _rebuild(
        [
            sa.Column("market_id", sa.String(249), primary_key=True),
            sa.Column("outcome", sa.String(8), nullable=False),
            sa.Column("time", sa.BigInteger, nullable=False),
        ],
        # The first row of each market by log position, as the projector kept one row a market before.
        f"INSERT INTO resolutions (market_id, outcome, {TIME}) SELECT market_id, outcome, {TIME} "
        "FROM resolutions_old r WHERE NOT EXISTS (SELECT 1 FROM resolutions_old r2 WHERE r2.market_id = r.market_id "
        "AND (r2.log_topic, r2.log_partition, r2.log_offset) < (r.log_topic, r.log_partition, r.log_offset))",
        (PREVIOUS_POSITIONS, PREVIOUS_BY_KEY),
    )
