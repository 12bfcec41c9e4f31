"""The decision chain in the projection: each decision's hash, the previous decision's hash and the signing key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, so the rows of decisions projected before this revision stay valid; a replay fills them.
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(
            sa.Column(
                "decision_hash", sa.String(64), nullable=True, comment="The decision's chain hash (docs/security.md)."
            )
        )
        batch.add_column(
            sa.Column(
                "previous_hash", sa.String(64), nullable=True, comment="The chain link; null before the chain began."
            )
        )
        batch.add_column(
            sa.Column(
                "key_id", sa.String(16), nullable=True, comment="The allocator key that signed it; null when unsigned."
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("key_id")
        batch.drop_column("previous_hash")
        batch.drop_column("decision_hash")
