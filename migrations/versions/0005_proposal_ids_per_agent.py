"""Proposal ids unique per agent: proposals keyed by (agent_id, proposal_id), fills name their agent.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# rules.md §2.2: two agents may use one proposal id, so a proposal's row is keyed by both ids and a fill names
# its agent (Fill version 2). A fill without one (written before) joins the proposal of its id only where one
# agent used that id — as the allocator counts it only where its decision funded that id for one agent.
FILL_MATCHES_PROPOSAL = """(f.agent_id = p.agent_id OR (f.agent_id IS NULL AND NOT EXISTS (
    SELECT 1 FROM proposals p2 WHERE p2.proposal_id = f.proposal_id AND p2.agent_id <> p.agent_id)))"""
VIEW = """
CREATE VIEW exposure_by_key AS
SELECT p.correlation_key,
       SUM(f.filled_size) AS gross_cost,
       SUM(CASE WHEN f.price > 0 AND f.price < 1
                THEN f.filled_size / f.price * COALESCE(
                         CASE WHEN f.side = 'BUY' THEN lm.mark_price ELSE 1.0 - lm.mark_price END, f.price)
                ELSE 0 END) AS gross_exposure
FROM fills f
JOIN proposals p ON {join}
LEFT JOIN latest_marks lm ON lm.market_id = f.market_id
WHERE f.status IN ('FILLED', 'PARTIAL') AND f.filled_size > 0
  AND f.market_id NOT IN (SELECT market_id FROM resolutions)
GROUP BY p.correlation_key
"""
EXPOSURE_BY_KEY = VIEW.format(join=f"p.proposal_id = f.proposal_id AND {FILL_MATCHES_PROPOSAL}")
PREVIOUS = VIEW.format(join="p.proposal_id = f.proposal_id")  # revision 0004's


def upgrade() -> None:
    # The view reads proposals: out of the way while SQLite's batch mode rebuilds that table.
    op.execute("DROP VIEW exposure_by_key")
    _primary_key(["agent_id", "proposal_id"])
    with op.batch_alter_table("fills") as batch:
        batch.add_column(
            sa.Column(
                "agent_id",
                sa.Text,
                nullable=True,
                comment="The allocation's agent; null in fills before Fill version 2.",
            )
        )
    op.execute(EXPOSURE_BY_KEY)


def downgrade() -> None:
    op.execute("DROP VIEW exposure_by_key")
    with op.batch_alter_table("fills") as batch:
        batch.drop_column("agent_id")
    _primary_key(["proposal_id"])
    op.execute(PREVIOUS)


def _primary_key(columns: list[str]) -> None:
    """Re-key proposals: PostgreSQL alters its named constraint; SQLite (an unnamed key) rebuilds the table."""
    if op.get_bind().dialect.name == "sqlite":
        with warnings.catch_warnings():
            # SQLAlchemy notes that the copied columns' old primary-key flags give way to the new key: intended.
            warnings.filterwarnings("ignore", message=".*primary_key=True, not matching locally specified columns")
            with op.batch_alter_table("proposals", recreate="always") as batch:
                batch.create_primary_key("proposals_pkey", columns)
    else:
        op.drop_constraint("proposals_pkey", "proposals", type_="primary")
        op.create_primary_key("proposals_pkey", "proposals", columns)
