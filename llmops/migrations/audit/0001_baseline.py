"""Baseline of the alias audit trail: `alias_events` as written before migrations existed (adopted as is)."""

import sqlalchemy as sa
from alembic import op

from llmops.db import create_missing

revision = "audit_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_missing(op, sa.Table(
        "alias_events", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("alias", sa.String(256), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_version", sa.String(32), nullable=True),
        sa.Column("to_version", sa.String(32), nullable=True),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_alias_events_model_alias", "model", "alias", "id"),
    ))


def downgrade() -> None:
    op.drop_table("alias_events")
