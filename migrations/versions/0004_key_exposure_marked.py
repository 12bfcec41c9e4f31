"""Exposure by correlation key valued at the latest marks, as the allocator caps it, beside its cost.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The group cap (rules.md §4.4) is checked against the marked value of what a key holds: each fill's contracts
# at the market's latest mark (its own price while the market has none). `gross_cost` stays for readers of 0002.
EXPOSURE_BY_KEY = """
CREATE VIEW exposure_by_key AS
SELECT p.correlation_key,
       SUM(f.filled_size) AS gross_cost,
       SUM(CASE WHEN f.price > 0 AND f.price < 1
                THEN f.filled_size / f.price * COALESCE(
                         CASE WHEN f.side = 'BUY' THEN lm.mark_price ELSE 1.0 - lm.mark_price END, f.price)
                ELSE 0 END) AS gross_exposure
FROM fills f
JOIN proposals p ON p.proposal_id = f.proposal_id
LEFT JOIN latest_marks lm ON lm.market_id = f.market_id
WHERE f.status IN ('FILLED', 'PARTIAL') AND f.filled_size > 0
  AND f.market_id NOT IN (SELECT market_id FROM resolutions)
GROUP BY p.correlation_key
"""
PREVIOUS = """
CREATE VIEW exposure_by_key AS
SELECT p.correlation_key, SUM(f.filled_size) AS gross_cost
FROM fills f
JOIN proposals p ON p.proposal_id = f.proposal_id
WHERE f.status IN ('FILLED', 'PARTIAL') AND f.filled_size > 0
  AND f.market_id NOT IN (SELECT market_id FROM resolutions)
GROUP BY p.correlation_key
"""


def upgrade() -> None:
    op.execute("DROP VIEW exposure_by_key")
    op.execute(EXPOSURE_BY_KEY)


def downgrade() -> None:
    op.execute("DROP VIEW exposure_by_key")
    op.execute(PREVIOUS)
