"""Operator commands in the projection with the book they name, the key that signed them and their log position.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, so the rows of commands projected before this revision stay valid; a replay fills them.
    with op.batch_alter_table("control_commands") as batch:
        batch.add_column(
            sa.Column("book", sa.Text, nullable=True, comment="The book the command names; null before version 3.")
        )
        batch.add_column(
            sa.Column("key_id", sa.Text, nullable=True, comment="The operator key that signed it; null unsigned.")
        )
        batch.add_column(
            sa.Column(
                "source",
                sa.Text,
                nullable=True,
                comment="topic/partition/offset of its record: the source of the governor events it caused.",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("control_commands") as batch:
        batch.drop_column("source")
        batch.drop_column("key_id")
        batch.drop_column("book")
