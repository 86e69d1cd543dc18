"""Baseline of the retrain trigger db: `triggers` and `windows` as written before migrations existed (adopted as
is). A `triggers` table older still, whose CHECK predates the `pending` and `held` outcomes (SQLite only: the
store was SQLite-only then), is copied into the current shape so those outcomes can be recorded."""

import sqlalchemy as sa
from alembic import op

from llmops.db import create_missing

revision = "triggers_0001"
down_revision = None
branch_labels = None
depends_on = None

OUTCOMES = ("started", "suppressed", "failed", "pending", "held")


def _tables() -> tuple[sa.Table, sa.Table]:
    meta = sa.MetaData()
    triggers = sa.Table(
        "triggers", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("reference_id", sa.Text, nullable=False),
        sa.Column("window_id", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("report_path", sa.Text),
        sa.Column("mlflow_run_id", sa.Text),
        sa.Column("command", sa.Text),
        sa.Column("pid", sa.Integer),
        sa.Column("log_path", sa.Text),
        sa.Column("fired", sa.Text),
        sa.CheckConstraint("outcome IN (" + ", ".join(f"'{o}'" for o in OUTCOMES) + ")", name="triggers_outcome"),
        sa.Index("triggers_reference", "reference_id", "outcome", "created"),
        sqlite_autoincrement=True,
    )
    windows = sa.Table(
        "windows", meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("reference_id", sa.Text, nullable=False),
        sa.Column("window_id", sa.Text, nullable=False),
        sa.Column("severity", sa.Text, nullable=False),
        sa.Index("windows_reference", "reference_id", "id"),
        sqlite_autoincrement=True,
    )
    return triggers, windows


def _rebuild_v1(bind: sa.Connection, triggers: sa.Table) -> None:
    """Copy a pre-`pending`/`held` triggers table (its CHECK rejects them) into the current shape."""
    if bind.dialect.name != "sqlite":
        return
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type='table' AND name='triggers'").scalar()
    if not sql or "'held'" in sql:
        return
    columns = ", ".join(c.name for c in triggers.columns)
    op.execute("DROP INDEX IF EXISTS triggers_reference")
    op.execute("ALTER TABLE triggers RENAME TO triggers_v1")
    triggers.create(bind)
    op.execute(f"INSERT INTO triggers ({columns}) SELECT {columns} FROM triggers_v1")
    op.execute("DROP TABLE triggers_v1")


def upgrade() -> None:
    triggers, windows = _tables()
    _rebuild_v1(op.get_bind(), triggers)
    create_missing(op, triggers, windows)


def downgrade() -> None:
    op.drop_table("windows")
    op.drop_table("triggers")
