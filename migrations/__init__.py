"""Alembic revisions of the projection schema (PostgreSQL in production, SQLite for the embedded default)."""
