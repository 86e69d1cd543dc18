"""Baseline of the schedule runs: `llmops_schedule_runs` as written before migrations existed (adopted as is).
APScheduler's own `apscheduler_jobs` table in the same database is APScheduler's to create and change."""

import sqlalchemy as sa
from alembic import op

from llmops.db import create_missing

revision = "schedule_runs_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_missing(op, sa.Table(
        "llmops_schedule_runs", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("schedule_id", sa.Text, nullable=False),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("finished", sa.Float, nullable=True),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("log_path", sa.Text, nullable=True),
        sqlite_autoincrement=True,
    ))


def downgrade() -> None:
    op.drop_table("llmops_schedule_runs")
