"""The review queue (monitoring/review): `feedback_review` (a reviewer's decision on a feedback entry; no row =
pending) and `review_audit` (every decision: who, when, how, before and after). Frozen copies of the tables."""

import sqlalchemy as sa
from alembic import op

from llmops.db import create_missing

revision = "inference_log_0002"
down_revision = "inference_log_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_missing(op, sa.Table(
        "feedback_review", sa.MetaData(),
        sa.Column("feedback_id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rating", sa.Integer),
        sa.Column("correction", sa.Text),
        sa.Column("edited", sa.Boolean, nullable=False, default=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
    ), sa.Table(
        "review_audit", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("feedback_id", sa.Integer, nullable=False, index=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("before", sa.Text, nullable=False),
        sa.Column("after", sa.Text, nullable=False),
    ))


def downgrade() -> None:
    op.drop_table("review_audit")
    op.drop_table("feedback_review")
