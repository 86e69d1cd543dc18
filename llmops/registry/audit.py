"""Audit trail of alias changes, because MLflow keeps none.

MLflow stores only where an alias points *now*. Who moved `champion`, from which version, when and why
is needed for rollbacks and post-mortems, so every alias change goes through an `AuditStore`, which
also serialises changes per model: `transaction(model)` holds a cross-process lock (sqlite:
`BEGIN IMMEDIATE`; PostgreSQL: `pg_advisory_xact_lock`) so that read-current-alias -> set-alias ->
record-event is atomic. Two promotions racing each other therefore leave an unbroken chain: each
event's `from_version` is the previous event's `to_version`, and the alias equals the newest event's.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import getpass
import hashlib
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import sqlalchemy as sa

from llmops import db
from llmops.errors import LlmopsError, RegistryError

Action = Literal["promote", "rollback", "register", "remove"]
ACTIONS: tuple[str, ...] = ("promote", "rollback", "register", "remove")


def default_actor() -> str:
    """`user@host` of the process making the change (the audit trail's "who")."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name (some containers): still record something honest
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class AliasEvent:
    """One alias change. `from_version`/`to_version` are None when the alias was unset / removed."""

    id: int
    model: str
    alias: str
    action: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str
    timestamp: str  # ISO 8601, UTC

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class AuditTransaction(abc.ABC):
    """What can be done while holding one model's lock: read its trail and append to it."""

    @abc.abstractmethod
    def latest(self, alias: str) -> AliasEvent | None:
        """Newest event of `alias` of the locked model, or None."""

    @abc.abstractmethod
    def record(
        self,
        alias: str,
        action: Action,
        from_version: str | None,
        to_version: str | None,
        actor: str,
        reason: str,
    ) -> AliasEvent:
        """Append one event; it becomes durable when the transaction commits."""


class AuditStore(abc.ABC):
    """Append-only store of alias events with per-model mutual exclusion across processes."""

    @abc.abstractmethod
    def transaction(self, model: str) -> contextlib.AbstractContextManager[AuditTransaction]:
        """Hold `model`'s lock for the block; commit on success, roll back on an exception."""

    @abc.abstractmethod
    def history(self, model: str, alias: str | None = None) -> list[AliasEvent]:
        """Events of `model` (of one alias when given), oldest first."""


def _lock_key(model: str) -> int:
    """Stable signed 64-bit key for pg_advisory_xact_lock (Python's hash() differs per process)."""
    return int.from_bytes(hashlib.sha256(model.encode()).digest()[:8], "big", signed=True)


metadata = sa.MetaData()
alias_events = sa.Table(
    "alias_events", metadata,
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
)
STORE = db.Store("audit", metadata, what="the audit store", setting="LLMOPS_AUDIT_DB_URI")


class SqlAuditStore(AuditStore):
    """`AuditStore` on a sqlite (local) or PostgreSQL (cluster) URL, opened through llmops.db: every sqlite
    transaction begins IMMEDIATE (the read of the current alias already holds the write lock); PostgreSQL
    transactions take the model's `pg_advisory_xact_lock`."""

    def __init__(self, uri: str, busy_timeout_s: float = db.SQLITE_BUSY_TIMEOUT_S) -> None:
        self.uri = uri
        self.table = alias_events
        try:
            self.engine = db.open_store(uri, STORE, busy_timeout_s=busy_timeout_s)
        except LlmopsError as exc:
            raise RegistryError(exc.cause, exc.fix) from None
        self.dialect = self.engine.dialect.name

    def _to_event(self, row) -> AliasEvent:
        ts = row.timestamp
        if ts.tzinfo is None:  # sqlite drops the offset; everything is written in UTC
            ts = ts.replace(tzinfo=dt.UTC)
        return AliasEvent(
            id=int(row.id), model=row.model, alias=row.alias, action=row.action,
            from_version=row.from_version, to_version=row.to_version, actor=row.actor,
            reason=row.reason, timestamp=ts.astimezone(dt.UTC).isoformat(),
        )

    @contextlib.contextmanager
    def transaction(self, model: str) -> Iterator[AuditTransaction]:
        with self.engine.begin() as conn:  # sqlite: BEGIN IMMEDIATE (whole-db write lock)
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(model)})
            yield _SqlTransaction(self, conn, model)

    def history(self, model: str, alias: str | None = None) -> list[AliasEvent]:
        t = self.table
        query = sa.select(t).where(t.c.model == model)
        if alias is not None:
            query = query.where(t.c.alias == alias)
        with self.engine.connect() as conn:
            return [self._to_event(r) for r in conn.execute(query.order_by(t.c.id))]


class _SqlTransaction(AuditTransaction):
    def __init__(self, store: SqlAuditStore, conn, model: str) -> None:
        self._store, self._conn, self._model = store, conn, model

    def latest(self, alias: str) -> AliasEvent | None:
        t = self._store.table
        row = self._conn.execute(
            sa.select(t).where(t.c.model == self._model, t.c.alias == alias).order_by(t.c.id.desc()).limit(1)
        ).first()
        return self._store._to_event(row) if row is not None else None

    def record(
        self,
        alias: str,
        action: Action,
        from_version: str | None,
        to_version: str | None,
        actor: str,
        reason: str,
    ) -> AliasEvent:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        now = dt.datetime.now(dt.UTC)
        values = {
            "model": self._model, "alias": alias, "action": action,
            "from_version": None if from_version is None else str(from_version),
            "to_version": None if to_version is None else str(to_version),
            "actor": actor, "reason": reason,
        }
        result = self._conn.execute(self._store.table.insert().values(timestamp=now, **values))
        return AliasEvent(id=int(result.inserted_primary_key[0]), timestamp=now.isoformat(), **values)
