"""The first projection schema: proposals, decisions, allocations, orders, fills, governor events, commands.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "consumed_offsets",
        sa.Column(
            "consumer", sa.String(128), nullable=False, comment="Which projector (consumer) this position is for."
        ),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column(
            "next_offset", sa.BigInteger, nullable=False, comment="Next offset to read; only ever moves forward."
        ),
        sa.PrimaryKeyConstraint("consumer", "topic", "partition"),
        comment="The projection's position in the log, written in the same transaction as its rows.",
    )
    op.create_table(
        "proposals",
        sa.Column("proposal_id", sa.String(128), primary_key=True),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("strategy_tag", sa.Text, nullable=False),
        sa.Column("market_id", sa.Text, nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("price", sa.Double, nullable=True),
        sa.Column("expected_profit", sa.Double, nullable=False),
        sa.Column("confidence", sa.Double, nullable=False),
        sa.Column("requested_size", sa.Double, nullable=False),
        sa.Column("min_size", sa.Double, nullable=False),
        sa.Column("execution_risk", sa.Double, nullable=False),
        sa.Column("urgency", sa.Double, nullable=False),
        sa.Column("correlation_key", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False, comment="Milliseconds since the Unix epoch, UTC."),
        sa.Column("log_topic", sa.String(249), nullable=False),
        sa.Column("log_partition", sa.Integer, nullable=False),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "decisions",
        sa.Column("decision_id", sa.String(128), primary_key=True),
        sa.Column("book_id", sa.Text, nullable=False),
        sa.Column("cycle", sa.BigInteger, nullable=False),
        sa.Column("decided_at", sa.BigInteger, nullable=False),
        sa.Column("governor_state", sa.String(16), nullable=False),
        sa.Column("opportunity_window_ms", sa.BigInteger, nullable=False),
        sa.Column("equity", sa.Double, nullable=False),
        sa.Column("available", sa.Double, nullable=False),
        sa.Column("high_water_mark", sa.Double, nullable=False),
        sa.Column("solver_path", sa.String(32), nullable=False),
        sa.Column("solve_ms", sa.Double, nullable=False),
        sa.Column("objective", sa.Double, nullable=False),
        sa.Column("gap", sa.Double, nullable=True),
        sa.Column("config_version", sa.Text, nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("scenario_seed", sa.BigInteger, nullable=False),
        sa.Column("log_topic", sa.String(249), nullable=False),
        sa.Column("log_partition", sa.Integer, nullable=False),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("book_id", "cycle", name="uq_decisions_book_cycle"),
    )
    op.create_table(
        "allocations",
        sa.Column("decision_id", sa.String(128), nullable=False),
        sa.Column("proposal_id", sa.String(128), nullable=False),
        sa.Column(
            "rank", sa.Integer, nullable=False, comment="Position in the decision: executors work in this order."
        ),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("market_id", sa.Text, nullable=False),
        sa.Column("side", sa.String(4), nullable=True),
        sa.Column("size", sa.Double, nullable=False),
        sa.Column("netted_size", sa.Double, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text, nullable=False, comment="Reason codes, comma-separated."),
        sa.Column("detail", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("decision_id", "rank"),
    )
    op.create_table(
        "orders",
        sa.Column("decision_id", sa.String(128), nullable=False),
        sa.Column("market_id", sa.Text, nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("size", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("decision_id", "market_id", "side"),
    )
    op.create_table(
        "fills",
        sa.Column("fill_id", sa.String(128), primary_key=True),
        sa.Column("decision_id", sa.String(128), nullable=False),
        sa.Column("proposal_id", sa.String(128), nullable=False),
        sa.Column("market_id", sa.Text, nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("requested_size", sa.Double, nullable=False),
        sa.Column("filled_size", sa.Double, nullable=False),
        sa.Column("price", sa.Double, nullable=False),
        sa.Column("fee", sa.Double, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "governor_events",
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("book_id", sa.Text, nullable=False),
        sa.Column("governor", sa.String(32), nullable=False),
        sa.Column("old_state", sa.Text, nullable=False),
        sa.Column("new_state", sa.Text, nullable=False),
        sa.Column("cause", sa.Text, nullable=False),
        sa.Column("measured", sa.Double, nullable=True),
        sa.Column("limit_value", sa.Double, nullable=True),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "control_commands",
        sa.Column("command_id", sa.String(128), primary_key=True),
        sa.Column("operator_id", sa.Text, nullable=False),
        sa.Column("command", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("limits", sa.Text, nullable=True, comment="SET_LIMITS values as JSON."),
        sa.Column("time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=True, comment="The original bytes, unchanged."),
        sa.UniqueConstraint("topic", "partition", "offset", name="uq_dead_letters_position"),
    )


def downgrade() -> None:
    for table in (
        "dead_letters",
        "control_commands",
        "governor_events",
        "fills",
        "orders",
        "allocations",
        "decisions",
        "proposals",
        "consumed_offsets",
    ):
        op.drop_table(table)
