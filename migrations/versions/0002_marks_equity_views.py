"""Marks, resolutions and equity history; positions and exposures as views over the projected rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Views are plain SQL that PostgreSQL and SQLite both read. A position is what was filled in a market on a side
# and has not been settled by a resolution; its value uses the market's latest mark (the YES price; a SELL
# holds the NO contract), or its cost while the market has no mark.
LATEST_MARKS = """
CREATE VIEW latest_marks AS
SELECT m.market_id, m.mark_price, m.time
FROM marks m
WHERE m.log_offset = (
    SELECT MAX(m2.log_offset) FROM marks m2
    WHERE m2.market_id = m.market_id AND m2.log_topic = m.log_topic AND m2.log_partition = m.log_partition
)
"""
POSITIONS = """
CREATE VIEW positions AS
SELECT f.market_id, f.side,
       SUM(f.filled_size / f.price) AS contracts,
       SUM(f.filled_size) AS cost,
       SUM(f.filled_size / f.price) * COALESCE(
           CASE WHEN f.side = 'BUY' THEN lm.mark_price ELSE 1.0 - lm.mark_price END,
           SUM(f.filled_size) / SUM(f.filled_size / f.price)) AS value
FROM fills f
LEFT JOIN latest_marks lm ON lm.market_id = f.market_id
WHERE f.status IN ('FILLED', 'PARTIAL') AND f.filled_size > 0 AND f.price > 0 AND f.price < 1
  AND f.market_id NOT IN (SELECT market_id FROM resolutions)
GROUP BY f.market_id, f.side, lm.mark_price
"""
EXPOSURE_BY_MARKET = """
CREATE VIEW exposure_by_market AS
SELECT market_id,
       SUM(CASE WHEN side = 'BUY' THEN value ELSE -value END) AS signed_exposure,
       SUM(value) AS gross_exposure
FROM positions
GROUP BY market_id
"""
EXPOSURE_BY_KEY = """
CREATE VIEW exposure_by_key AS
SELECT p.correlation_key, SUM(f.filled_size) AS gross_cost
FROM fills f
JOIN proposals p ON p.proposal_id = f.proposal_id
WHERE f.status IN ('FILLED', 'PARTIAL') AND f.filled_size > 0
  AND f.market_id NOT IN (SELECT market_id FROM resolutions)
GROUP BY p.correlation_key
"""
VIEWS = ("exposure_by_key", "exposure_by_market", "positions", "latest_marks")


def upgrade() -> None:
    op.create_table(
        "marks",
        sa.Column("log_topic", sa.String(249), nullable=False),
        sa.Column("log_partition", sa.Integer, nullable=False),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
        sa.Column("market_id", sa.Text, nullable=False),
        sa.Column("mark_price", sa.Double, nullable=False),
        sa.Column("time", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("log_topic", "log_partition", "log_offset"),
    )
    op.create_index("ix_marks_market", "marks", ["market_id"])
    op.create_table(
        "resolutions",
        sa.Column("market_id", sa.String(249), primary_key=True),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "equity_history",
        sa.Column("decision_id", sa.String(128), primary_key=True),
        sa.Column("book_id", sa.Text, nullable=False),
        sa.Column("cycle", sa.BigInteger, nullable=False),
        sa.Column("time", sa.BigInteger, nullable=False),
        sa.Column("equity", sa.Double, nullable=False),
        sa.Column("available", sa.Double, nullable=False),
        sa.Column("high_water_mark", sa.Double, nullable=False),
        sa.Column("drawdown", sa.Double, nullable=False),
        sa.Column("governor_state", sa.String(16), nullable=False),
    )
    for ddl in (LATEST_MARKS, POSITIONS, EXPOSURE_BY_MARKET, EXPOSURE_BY_KEY):
        op.execute(ddl)


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.drop_table("equity_history")
    op.drop_table("resolutions")
    op.drop_index("ix_marks_market", "marks")
    op.drop_table("marks")
