"""The projection tables (SQLAlchemy Core): the read side the projector writes and auditors query."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Portable types only: the same tables live in PostgreSQL (production) and SQLite (the embedded default).
metadata = MetaData()

consumed_offsets = Table(
    "consumed_offsets",
    metadata,
    Column("consumer", String(128), nullable=False, comment="Which projector (consumer) this position is for."),
    Column("topic", String(249), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False, comment="Next offset to read; only ever moves forward."),
    PrimaryKeyConstraint("consumer", "topic", "partition"),
    comment="The projection's position in the log, written in the same transaction as its rows.",
)

# Keyed by (agent id, proposal id): proposal ids are unique per agent (rules.md §2.2).
proposals = Table(
    "proposals",
    metadata,
    Column("proposal_id", String(128), nullable=False),
    Column("agent_id", Text, nullable=False),
    Column("strategy_tag", Text, nullable=False),
    Column("market_id", Text, nullable=False),
    Column("side", String(4), nullable=False),
    Column("price", Double, nullable=True),
    Column("expected_profit", Double, nullable=False),
    Column("confidence", Double, nullable=False),
    Column("requested_size", Double, nullable=False),
    Column("min_size", Double, nullable=False),
    Column("execution_risk", Double, nullable=False),
    Column("urgency", Double, nullable=False),
    Column("correlation_key", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False, comment="Milliseconds since the Unix epoch, UTC."),
    Column("log_topic", String(249), nullable=False),
    Column("log_partition", Integer, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    PrimaryKeyConstraint("agent_id", "proposal_id", name="proposals_pkey"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("decision_id", String(128), primary_key=True),
    Column("book_id", Text, nullable=False),
    Column("cycle", BigInteger, nullable=False),
    Column("decided_at", BigInteger, nullable=False),
    Column("governor_state", String(16), nullable=False),
    Column("opportunity_window_ms", BigInteger, nullable=False),
    Column("equity", Double, nullable=False),
    Column("available", Double, nullable=False),
    Column("high_water_mark", Double, nullable=False),
    Column("solver_path", String(32), nullable=False),
    Column("solve_ms", Double, nullable=False),
    Column("objective", Double, nullable=False),
    Column("gap", Double, nullable=True),
    Column("config_version", Text, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("scenario_seed", BigInteger, nullable=False),
    Column("log_topic", String(249), nullable=False),
    Column("log_partition", Integer, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    Column("decision_hash", String(64), nullable=True, comment="The decision's chain hash (docs/security.md)."),
    Column("previous_hash", String(64), nullable=True, comment="The chain link; null before the chain began."),
    Column("key_id", String(16), nullable=True, comment="The allocator key that signed it; null when unsigned."),
    UniqueConstraint("book_id", "cycle", name="uq_decisions_book_cycle"),
)

# Keyed by rank, not proposal id: a conflicting re-send of an id is REJECTED DUPLICATE beside the original,
# so one decision may name the same proposal id twice.
allocations = Table(
    "allocations",
    metadata,
    Column("decision_id", String(128), nullable=False),
    Column("proposal_id", String(128), nullable=False),
    Column("rank", Integer, nullable=False, comment="Position in the decision: executors work in this order."),
    Column("agent_id", Text, nullable=False),
    Column("market_id", Text, nullable=False),
    Column("side", String(4), nullable=True),
    Column("size", Double, nullable=False),
    Column("netted_size", Double, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reasons", Text, nullable=False, comment="Reason codes, comma-separated."),
    Column("detail", Text, nullable=True),
    PrimaryKeyConstraint("decision_id", "rank"),
)

orders = Table(
    "orders",
    metadata,
    Column("decision_id", String(128), nullable=False),
    Column("market_id", Text, nullable=False),
    Column("side", String(4), nullable=False),
    Column("size", Double, nullable=False),
    PrimaryKeyConstraint("decision_id", "market_id", "side"),
)

fills = Table(
    "fills",
    metadata,
    Column("fill_id", String(128), primary_key=True),
    Column("decision_id", String(128), nullable=False),
    Column("proposal_id", String(128), nullable=False),
    Column("market_id", Text, nullable=False),
    Column("side", String(4), nullable=False),
    Column("requested_size", Double, nullable=False),
    Column("filled_size", Double, nullable=False),
    Column("price", Double, nullable=False),
    Column("fee", Double, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("time", BigInteger, nullable=False),
    Column("agent_id", Text, nullable=True, comment="The allocation's agent; null in fills before Fill version 2."),
    # Where the fill is on the log: a dead letter at that position is the allocator's refusal, and the views then
    # leave the fill out of positions and exposures (migration 0007). Null in rows projected before it.
    Column("log_topic", String(249), nullable=True, comment="The topic of the fill's record; null before 0007."),
    Column("log_partition", Integer, nullable=True, comment="The partition of the fill's record; null before 0007."),
    Column("log_offset", BigInteger, nullable=True, comment="The offset of the fill's record; null before 0007."),
)

governor_events = Table(
    "governor_events",
    metadata,
    Column("event_id", String(128), primary_key=True),
    Column("book_id", Text, nullable=False),
    Column("governor", String(32), nullable=False),
    Column("old_state", Text, nullable=False),
    Column("new_state", Text, nullable=False),
    Column("cause", Text, nullable=False),
    Column("measured", Double, nullable=True),
    Column("limit_value", Double, nullable=True),
    Column("source", Text, nullable=True),
    Column("time", BigInteger, nullable=False),
)

control_commands = Table(
    "control_commands",
    metadata,
    Column("command_id", String(128), primary_key=True),
    Column("operator_id", Text, nullable=False),
    Column("command", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("limits", Text, nullable=True, comment="SET_LIMITS values as JSON."),
    Column("time", BigInteger, nullable=False),
    Column("book", Text, nullable=True, comment="The book the command names; null before version 3."),
    Column("key_id", Text, nullable=True, comment="The operator key that signed it; null unsigned."),
    Column(
        "source",
        Text,
        nullable=True,
        comment="topic/partition/offset of its record: the source of the governor events it caused.",
    ),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("topic", String(249), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("error", Text, nullable=False),
    Column("payload", LargeBinary, nullable=True, comment="The original bytes, unchanged."),
    UniqueConstraint("topic", "partition", "offset", name="uq_dead_letters_position"),
)

marks = Table(
    "marks",
    metadata,
    Column("log_topic", String(249), nullable=False),
    Column("log_partition", Integer, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    Column("market_id", Text, nullable=False, index=True),
    Column("mark_price", Double, nullable=False),
    Column("time", BigInteger, nullable=False),
    PrimaryKeyConstraint("log_topic", "log_partition", "log_offset"),
)
# Alembic names it ix_marks_market in the migration; keep the same name here.
marks.indexes.clear()
Index("ix_marks_market", marks.c.market_id)

# One row per record (migration 0009): a resolution the allocator refused (a dead letter at its position) resolves
# nothing in the views, and does not take the market's row from the genuine one after it.
resolutions = Table(
    "resolutions",
    metadata,
    Column("log_topic", String(249), nullable=False),
    Column("log_partition", Integer, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    Column("market_id", String(249), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("time", BigInteger, nullable=False),
    PrimaryKeyConstraint("log_topic", "log_partition", "log_offset"),
)
Index("ix_resolutions_market", resolutions.c.market_id)

equity_history = Table(
    "equity_history",
    metadata,
    Column("decision_id", String(128), primary_key=True),
    Column("book_id", Text, nullable=False),
    Column("cycle", BigInteger, nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("equity", Double, nullable=False),
    Column("available", Double, nullable=False),
    Column("high_water_mark", Double, nullable=False),
    Column("drawdown", Double, nullable=False),
    Column("governor_state", String(16), nullable=False),
)

# Views (created by migration 0002, latest_marks again by 0008; read with text() or reflected tables):
# latest_marks, positions, exposure_by_market, exposure_by_key.
VIEWS = ("latest_marks", "positions", "exposure_by_market", "exposure_by_key")
