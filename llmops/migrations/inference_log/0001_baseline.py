"""Baseline of the inference log: `requests`, `feedback` and the review tables (`feedback_review`, `review_audit`)
as written before migrations existed (schema version 2, adopted as they are); a version-1 `requests` table (no
`key_id`) gains that column, as the store did on open before."""

import sqlalchemy as sa
from alembic import op

from llmops.db import create_missing

revision = "inference_log_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_missing(op, sa.Table(
        "requests", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False, unique=True),
        sa.Column("time", sa.Float, nullable=False, index=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(64)),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_s", sa.Float, nullable=False),
        sa.Column("ttft_s", sa.Float),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("finish_reason", sa.String(32)),
        sa.Column("error", sa.Text),
        sa.Column("session", sa.String(256)),
        sa.Column("side", sa.String(16)),
        sa.Column("mean_logprob", sa.Float),
        sa.Column("extra", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(32)),
    ), sa.Table(
        "feedback", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False, index=True),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("rating", sa.Integer),
        sa.Column("correction", sa.Text),
        sa.Column("comment", sa.Text),
    ), sa.Table(
        "feedback_review", sa.MetaData(),
        sa.Column("feedback_id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False, index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rating", sa.Integer),
        sa.Column("correction", sa.Text),
        sa.Column("edited", sa.Boolean, nullable=False),
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
    if "key_id" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("requests")}:
        op.add_column("requests", sa.Column("key_id", sa.String(32)))


def downgrade() -> None:
    for table in ("review_audit", "feedback_review", "feedback", "requests"):
        op.drop_table(table)
