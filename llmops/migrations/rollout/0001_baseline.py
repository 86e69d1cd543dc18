"""Baseline of the rollout state: `rollouts`, `rollout_decisions`, `rollout_locks` as written before migrations
existed (adopted as is)."""

import sqlalchemy as sa
from alembic import op

from llmops.db import create_missing

revision = "rollout_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    meta = sa.MetaData()
    create_missing(op, sa.Table(
        "rollouts", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("stable_version", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("weight", sa.Integer, nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("actuator", sa.Text, nullable=False),
        sa.Column("traffic_url", sa.Text, nullable=True),
        sa.Column("probe", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("finished", sa.Float, nullable=True),
        sa.Column("owner_pid", sa.Integer, nullable=True),
        sa.Column("owner_host", sa.String(256), nullable=True),
        sa.Column("owner_token", sa.String(64), nullable=True),
        sa.Column("heartbeat", sa.Float, nullable=True),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Index("ix_rollouts_model", "model", "id"),
    ), sa.Table(
        "rollout_decisions", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.Integer, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("weight", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Index("ix_rollout_decisions_rollout", "rollout_id", "id"),
    ), sa.Table(
        "rollout_locks", meta,
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("rollout_id", sa.Integer, nullable=False),
        sa.Column("acquired", sa.Float, nullable=False),
    ))


def downgrade() -> None:
    for name in ("rollout_locks", "rollout_decisions", "rollouts"):
        op.drop_table(name)
