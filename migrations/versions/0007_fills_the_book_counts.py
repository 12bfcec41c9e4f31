"""Positions and exposures count only the fills the allocator took: a fill it refused (a dead letter at the fill's
log position) is projected, and marked so, but moves no position.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

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
POSITIONS = f"""
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
  AND {TAKEN}
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
FILL_MATCHES_PROPOSAL = """(f.agent_id = p.agent_id OR (f.agent_id IS NULL AND NOT EXISTS (
    SELECT 1 FROM proposals p2 WHERE p2.proposal_id = f.proposal_id AND p2.agent_id <> p.agent_id)))"""
KEY_VIEW = """
CREATE VIEW exposure_by_key AS
SELECT p.correlation_key,
       SUM(f.filled_size) AS gross_cost,
       SUM(CASE WHEN f.price > 0 AND f.price < 1
                THEN f.filled_size / f.price * COALESCE(
                         CASE WHEN f.side = 'BUY' THEN lm.mark_price ELSE 1.0 - lm.mark_price END, f.price)
                ELSE 0 END) AS gross_exposure
FROM fills f
JOIN proposals p ON p.proposal_id = f.proposal_id AND {matches}
LEFT JOIN latest_marks lm ON lm.market_id = f.market_id
WHERE f.status IN ('FILLED', 'PARTIAL') AND f.filled_size > 0
  AND f.market_id NOT IN (SELECT market_id FROM resolutions){taken}
GROUP BY p.correlation_key
"""
EXPOSURE_BY_KEY = KEY_VIEW.format(matches=FILL_MATCHES_PROPOSAL, taken=f"\n  AND {TAKEN}")
PREVIOUS_BY_KEY = KEY_VIEW.format(matches=FILL_MATCHES_PROPOSAL, taken="")  # revision 0005's
PREVIOUS_POSITIONS = POSITIONS.replace(f"\n  AND {TAKEN}", "")  # revision 0002's
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
