"""Where the inference log keeps its rows: one abstract store, one backend per database (as MLflow does it).

`LogStore` says what the log needs from a database; `SqlStore` implements it once with SQLAlchemy Core over the
project's one persistence layer (llmops/db.py: the SQLite policy -- WAL, `synchronous=FULL`, busy timeout, a
0600 file -- PostgreSQL connect and statement timeouts, alembic migrations in llmops/migrations/inference_log/);
the backends differ only in their dialect's upsert: `SqliteStore` (local) and `PostgresStore` (a cluster).
A new column or table is a change to the tables below AND a new revision there (tests/unit/
test_inference_log_failures.py checks that the migrated database matches these tables on both backends).

A logged row is never overwritten by another request. The one merge allowed: a model server behind a router
logs a request first (its hook completes before its response does), then the router logs the same request id
(it forwarded its `x-request-id`); the router's record (side, session) joins the server's row and what only the
server knows (its mean log-probability) is kept. Any other record under a taken id -- a client that reuses an
id, sends one straight to a server, or races itself -- is stored under a fresh id (`<id>.dup-<hex>`, with
`extra.duplicate_of`) and overwrites nothing. Each row carries the identity of the key that made it
(`key_id`, serving/http/identity.py): feedback is accepted only from that key.
"""

from __future__ import annotations

import abc
import json
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from llmops import db
from llmops.errors import LlmopsError

PRUNE_CHUNK = 5000  # rows deleted per transaction by `prune`
metadata = sa.MetaData()

requests_table = sa.Table(
    "requests", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # insertion order: tail, size retention
    sa.Column("request_id", sa.String(128), nullable=False, unique=True),
    sa.Column("time", sa.Float, nullable=False, index=True),  # unix time the request started
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("model_version", sa.String(64)),
    sa.Column("route", sa.String(64), nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),  # JSON: the messages, or the prompt string
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
    sa.Column("extra", sa.Text, nullable=False),  # JSON object
    sa.Column("key_id", sa.String(32)),  # identity of the API key that made the request (None: auth off)
)

feedback_table = sa.Table(
    "feedback", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(128), nullable=False, index=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("rating", sa.Integer),  # -1 bad, 0 neutral, 1 good
    sa.Column("correction", sa.Text),  # the answer the model should have given
    sa.Column("comment", sa.Text),
)

# Review of feedback before it may become training data (monitoring/review): no row = pending. `correction` and
# `rating` are what the reviewer let through (an edit changes them); every decision is also kept in review_audit.
review_table = sa.Table(
    "feedback_review", metadata,
    sa.Column("feedback_id", sa.Integer, primary_key=True),  # feedback.id
    sa.Column("request_id", sa.String(128), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),  # accepted | rejected (edited items are accepted)
    sa.Column("rating", sa.Integer),
    sa.Column("correction", sa.Text),
    sa.Column("edited", sa.Boolean, nullable=False, default=False),
    sa.Column("reviewer", sa.String(128), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
)
review_audit_table = sa.Table(
    "review_audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("feedback_id", sa.Integer, nullable=False, index=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("reviewer", sa.String(128), nullable=False),  # who: the name given, plus how and with which key
    sa.Column("via", sa.String(16), nullable=False),  # cli | web
    sa.Column("key_id", sa.String(32)),
    sa.Column("action", sa.String(16), nullable=False),  # accept | edit | reject
    sa.Column("before", sa.Text, nullable=False),  # JSON: status, rating, correction before the decision
    sa.Column("after", sa.Text, nullable=False),  # JSON: the same after it
)
# The tables above, created and migrated by llmops/db.py from llmops/migrations/inference_log/.
STORE = db.Store("inference_log", metadata, what="the inference log", setting="LLMOPS_INFERENCE_LOG_URI")

_KEPT_FROM_EITHER = ("model_version", "session", "side", "mean_logprob")


@dataclass
class FeedbackEntry:
    request_id: str
    time: float
    rating: int | None
    correction: str | None
    comment: str | None = None


@dataclass
class LoggedRequest:
    """One logged request as the drift monitors, the export and the CLI read it; `rating`/`correction` are
    from the latest feedback on it (None without feedback)."""

    request_id: str
    time: float
    model: str
    model_version: str | None
    route: str
    prompt: Any
    response: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ttft_s: float | None
    status: int
    finish_reason: str | None
    error: str | None
    session: str | None
    side: str | None
    mean_logprob: float | None
    extra: dict[str, Any] = field(default_factory=dict)
    rating: int | None = None
    correction: str | None = None
    feedback: list[FeedbackEntry] = field(default_factory=list)
    key_id: str | None = None  # identity of the key that made the request (serving/http/identity.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row_to_logged(row: Any) -> LoggedRequest:
    m = dict(row._mapping)
    m.pop("id", None)
    m["prompt"] = json.loads(m["prompt"])
    m["extra"] = json.loads(m["extra"] or "{}")
    return LoggedRequest(**m)


class LogStore(abc.ABC):
    """What the inference log needs from a database. Writes come in batches from one writer thread."""

    @abc.abstractmethod
    def write_batch(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert (or upsert by request id) `rows` in ONE transaction: all are durable when it returns."""

    @abc.abstractmethod
    def add_feedback(self, entry: FeedbackEntry, key_id: str | None = None) -> bool:
        """Record feedback on a logged request; False (nothing written) when the request id is unknown or the
        request was made with another key than `key_id`'s."""

    @abc.abstractmethod
    def exists(self, request_id: str) -> bool: ...

    @abc.abstractmethod
    def get(self, request_id: str) -> LoggedRequest | None: ...

    @abc.abstractmethod
    def query(self, since: float | None = None, until: float | None = None, limit: int | None = None,
              newest_first: bool = False) -> list[LoggedRequest]: ...

    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def prune(self, max_age_days: float | None, max_rows: int | None, now: float | None = None) -> dict[str, int]:
        """Delete requests older than `max_age_days` and the oldest beyond `max_rows` (with their feedback)."""

    @abc.abstractmethod
    def erase(self, request_ids: Sequence[str] = (), session: str | None = None) -> list[str]:
        """Delete the given requests and/or a session's, with everything recorded about them (right to erasure)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def transient(self, exc: BaseException) -> bool:
        """Whether `exc` is the database's state (locked, unreachable, full, timed out) rather than a row it
        refuses: the writer retries a batch after a transient error and writes it row by row after any other."""
        return False


class SqlStore(LogStore):
    """The SQLAlchemy implementation; subclasses give the dialect's upsert.

    Reads begin DEFERRED (a monitor or `llmops log tail` reading never takes SQLite's write lock from the
    writer); writes begin IMMEDIATE (a read-then-write holds the lock from its first read: no mid-transaction
    'database is locked'). On PostgreSQL both are ordinary transactions."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.engine = db.open_store(uri, STORE, sqlite_begin="DEFERRED")  # LlmopsError with the fix
        self.writes = self.engine.execution_options(sqlite_begin="IMMEDIATE")

    @abc.abstractmethod
    def _insert(self) -> Any:
        """The dialect's INSERT that supports ON CONFLICT (sqlite/postgresql `insert`)."""

    def _upsert(self) -> Any:
        """INSERT, or on a taken id the router-joins-server merge -- guarded in SQL too, so even a race between
        the check in `write_batch` and this statement cannot overwrite a row."""
        t = requests_table
        stmt = self._insert()(t)
        ex = stmt.excluded
        updates = {c.name: ex[c.name] for c in t.c if c.name not in ("id", "request_id")}
        for name in _KEPT_FROM_EITHER:
            updates[name] = sa.func.coalesce(ex[name], t.c[name])
        mergeable = sa.and_(t.c.side.is_(None), ex.side.is_not(None),
                            sa.or_(t.c.key_id.is_(None), t.c.key_id == ex.key_id))
        return stmt.on_conflict_do_update(index_elements=["request_id"], set_=updates, where=mergeable)

    def _taken(self, conn: sa.Connection, ids: list[str]) -> dict[str, tuple[Any, Any]]:
        t = requests_table
        taken: dict[str, tuple[Any, Any]] = {}
        for start in range(0, len(ids), 500):
            found = conn.execute(sa.select(t.c.request_id, t.c.side, t.c.key_id).where(
                t.c.request_id.in_(ids[start:start + 500])))
            taken.update({r.request_id: (r.side, r.key_id) for r in found})
        return taken

    def write_batch(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        with self.writes.begin() as conn:
            taken = self._taken(conn, list({r["request_id"] for r in rows}))
            stmt = self._upsert()
            fresh: list[dict[str, Any]] = []
            later: list[dict[str, Any]] = []  # under a taken id (or twice in this batch): decided one by one
            for row in rows:
                if row["request_id"] in taken:
                    later.append(row)
                else:
                    taken[row["request_id"]] = (row["side"], row["key_id"])
                    fresh.append(row)
            if fresh:
                conn.execute(stmt, fresh)
            for row in later:
                rid = row["request_id"]
                if _joins(taken[rid], row):
                    taken[rid] = (row["side"], taken[rid][1] or row["key_id"])
                else:
                    row = _renamed(row)
                conn.execute(stmt, [row])

    def exists(self, request_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(requests_table.c.id).where(
                requests_table.c.request_id == request_id)).first() is not None

    def add_feedback(self, entry: FeedbackEntry, key_id: str | None = None) -> bool:
        t = requests_table
        with self.writes.begin() as conn:
            found = conn.execute(sa.select(t.c.id, t.c.key_id).where(t.c.request_id == entry.request_id)).first()
            if found is None or (found.key_id is not None and found.key_id != key_id):
                return False  # another key's request reads as unknown: its existence is not revealed either
            conn.execute(feedback_table.insert().values(**asdict(entry)))
        return True

    def _attach_feedback(self, conn: sa.Connection, logged: list[LoggedRequest]) -> list[LoggedRequest]:
        by_id = {r.request_id: r for r in logged}
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            rows = conn.execute(sa.select(feedback_table).where(feedback_table.c.request_id.in_(
                ids[start:start + 500])).order_by(feedback_table.c.time, feedback_table.c.id)).all()
            for row in rows:
                m = dict(row._mapping)
                m.pop("id")
                by_id[m["request_id"]].feedback.append(FeedbackEntry(**m))
        for r in logged:
            if r.feedback:
                latest = r.feedback[-1]
                r.rating, r.correction = latest.rating, latest.correction
        return logged

    def get(self, request_id: str) -> LoggedRequest | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(requests_table).where(requests_table.c.request_id == request_id)).first()
            return None if row is None else self._attach_feedback(conn, [_row_to_logged(row)])[0]

    def query(self, since: float | None = None, until: float | None = None, limit: int | None = None,
              newest_first: bool = False) -> list[LoggedRequest]:
        t = requests_table
        stmt = sa.select(t)
        if since is not None:
            stmt = stmt.where(t.c.time >= since)
        if until is not None:
            stmt = stmt.where(t.c.time < until)
        # the latest `limit` in a window is what a monitor scores; returned oldest first unless asked otherwise
        stmt = stmt.order_by(t.c.time.desc(), t.c.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            rows = [_row_to_logged(r) for r in conn.execute(stmt)]
            if not newest_first:
                rows.reverse()
            return self._attach_feedback(conn, rows)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(requests_table)).scalar_one())

    def prune(self, max_age_days: float | None, max_rows: int | None, now: float | None = None) -> dict[str, int]:
        t, f = requests_table, feedback_table
        now = time.time() if now is None else now
        by_age = by_size = 0
        if max_age_days is not None:
            by_age = self._delete_chunked(t.c.time < now - max_age_days * 86400)
        if max_rows is not None:
            with self.engine.connect() as conn:
                cutoff = conn.execute(sa.select(t.c.id).order_by(t.c.id.desc()).offset(max_rows).limit(1)).scalar()
            if cutoff is not None:
                by_size = self._delete_chunked(t.c.id <= cutoff)
        with self.writes.begin() as conn:
            orphans = conn.execute(f.delete().where(f.c.request_id.not_in(sa.select(t.c.request_id)))).rowcount
            conn.execute(review_table.delete().where(review_table.c.feedback_id.not_in(sa.select(f.c.id))))
        return {"deleted_by_age": by_age, "deleted_by_size": by_size, "feedback_deleted": orphans}

    def _delete_chunked(self, where: Any) -> int:
        """Delete matching requests PRUNE_CHUNK rows per transaction, so a large prune never holds the write lock
        (SQLite) or a long transaction (PostgreSQL) against the writer for more than a moment."""
        t, total = requests_table, 0
        while True:
            chosen = sa.select(t.c.id).where(where).order_by(t.c.id).limit(PRUNE_CHUNK).scalar_subquery()
            with self.writes.begin() as conn:
                n = conn.execute(t.delete().where(t.c.id.in_(chosen))).rowcount
            total += n
            if n < PRUNE_CHUNK:
                return total

    def transient(self, exc: BaseException) -> bool:
        # OperationalError: locked, unreachable, disk full, statement timeout; a DataError/IntegrityError or a
        # driver's ValueError (a NUL byte) is the row's fault and is not.
        return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError |
                          sa.exc.DisconnectionError)

    def erase(self, request_ids: Sequence[str] = (), session: str | None = None) -> list[str]:
        """Delete a person's requests -- the ids given (with their `.dup-` renamed copies) and/or every request of
        `session` -- and every row of any table that names them (feedback, review, audit); the ids deleted."""
        t = requests_table
        match = [t.c.request_id.in_(list(request_ids))] if request_ids else []
        match += [t.c.request_id.like(f"{rid.replace('%', '')}.dup-%") for rid in request_ids]
        if session is not None:
            match.append(t.c.session == session)
        if not match:
            return []
        with self.engine.connect() as conn:
            ids = sorted(conn.execute(sa.select(t.c.request_id).where(sa.or_(*match))).scalars())
        with self.writes.begin() as conn:  # one transaction: all of a person's rows go, or none
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                for table in metadata.sorted_tables:  # requests, feedback, review, audit: any that names them
                    if "request_id" in table.c:
                        conn.execute(table.delete().where(table.c.request_id.in_(chunk)))
        return ids

    def close(self) -> None:
        self.engine.dispose()


class SqliteStore(SqlStore):
    """A local file in WAL mode (llmops/db.py's policy): readers never block the writer, and a commit is one
    append + fsync of the WAL (`synchronous=FULL`), so a committed batch survives a killed process and a power
    cut alike."""

    def _insert(self) -> Any:
        from sqlalchemy.dialects.sqlite import insert

        return insert


class PostgresStore(SqlStore):
    """A PostgreSQL database (the cluster profile): the same tables, the same upsert; llmops/db.py's connect and
    statement timeouts make a hung server fail the writer's call (retried, then counted) instead of holding it."""

    def _insert(self) -> Any:
        from sqlalchemy.dialects.postgresql import insert

        return insert


def _joins(existing: tuple[Any, Any], row: dict[str, Any]) -> bool:
    """The one allowed merge: a router's record (side set) joining the server's row of the same request."""
    side, key_id = existing
    return side is None and row["side"] is not None and (key_id is None or key_id == row["key_id"])


def _renamed(row: dict[str, Any]) -> dict[str, Any]:
    rid = row["request_id"]
    extra = {**json.loads(row["extra"] or "{}"), "duplicate_of": rid}
    return {**row, "request_id": f"{rid[:100]}.dup-{secrets.token_hex(4)}", "extra": json.dumps(extra)}


def safe_uri(uri: str) -> str:
    try:
        return db.redact(uri)
    except sa.exc.ArgumentError:
        return "<unparseable URI>"


def open_store(uri: str) -> LogStore:
    """The backend for `uri`: sqlite:///PATH or postgresql(+driver)://..."""
    try:
        backend = sa.engine.make_url(uri).get_backend_name()
    except sa.exc.ArgumentError:
        raise LlmopsError(f"the inference log URI {uri!r} is not a database URL",
                          "set LLMOPS_INFERENCE_LOG_URI to sqlite:///PATH or postgresql+psycopg2://USER@HOST/DB"
                          ) from None
    stores: dict[str, type[SqlStore]] = {"sqlite": SqliteStore, "postgresql": PostgresStore}
    if backend not in stores:
        raise LlmopsError(f"the inference log has no {backend!r} backend ({safe_uri(uri)})",
                          "use sqlite:///PATH (local) or postgresql+psycopg2://... (cluster)")
    return stores[backend](uri)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
CUT_MARKER = "\u2026"  # ends a value cut to its column's length: the row says it was cut
REQUEST_ID_MAX = 128  # requests_table.request_id; serving's ids are at most this long (serving/http/request_id.py)


class RejectedRecord(ValueError):
    """A record no column can hold as it is (a request id that is not a short non-empty string, a count that is
    not a number): it is refused before it reaches a batch, and counted as not logged."""


def _text(value: Any, limit: int | None = None) -> str | None:
    """Text every backend stores alike, so one client's odd value never fails the commit of the batch it shares
    with other requests:
    - a NUL byte (PostgreSQL text cannot hold one) and a lone surrogate (valid in JSON, unencodable in UTF-8)
      become U+FFFD;
    - a value longer than a bounded column (model 256, session 256, model_version 64, route 64, finish_reason 32,
      side 16 characters) is TRUNCATED, not rejected: cut to limit-1 characters plus CUT_MARKER (U+2026 '...'),
      so the request is still logged and the cut is visible. Unbounded columns (prompt, response, error) are
      never cut."""
    if value is None:
        return None
    value = _UNSTORABLE.sub("\ufffd", str(value))
    if limit is not None and len(value) > limit:
        value = value[:limit - 1] + CUT_MARKER
    return value


def _json(value: Any) -> str:
    return _text(json.dumps(value, ensure_ascii=False, default=str)) or "null"


def _request_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= REQUEST_ID_MAX or _UNSTORABLE.search(value):
        raise RejectedRecord(f"request id {str(value)[:40]!r}... is not 1-{REQUEST_ID_MAX} storable characters")
    return value


def _row(r: Any) -> dict[str, Any]:
    extra = dict(r.extra or {})
    mean_logprob = extra.pop("mean_logprob", None)
    key_id = extra.pop("key_id", None)
    return {
        "request_id": _request_id(r.request_id), "time": float(r.time or (time.time() - r.latency_s)),
        "model": _text(r.model, 256) or "", "model_version": _text(r.model_version, 64),
        "route": _text(r.route, 64) or "",
        "prompt": _json(r.prompt), "response": _text(r.response) or "",
        "prompt_tokens": int(r.prompt_tokens), "completion_tokens": int(r.completion_tokens),
        "latency_s": float(r.latency_s), "ttft_s": None if r.ttft_s is None else float(r.ttft_s),
        "status": int(r.status), "finish_reason": _text(r.finish_reason, 32), "error": _text(r.error),
        "session": _text(getattr(r, "session", None), 256),
        "side": _text(getattr(r, "side", None), 16),
        "mean_logprob": None if mean_logprob is None else float(mean_logprob),
        "extra": _json(extra),
        "key_id": None if key_id is None else str(key_id)[:32],  # an identity: cut, never marked
    }


def rows_from(records: Iterable[Any]) -> list[dict[str, Any]]:
    """Plain column dicts from `serving.records.RequestRecord`s (duck-typed: this module imports no server);
    RejectedRecord for a record that no sanitising can make storable."""
    out = []
    for r in records:
        try:
            out.append(_row(r))
        except RejectedRecord:
            raise
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise RejectedRecord(f"record {getattr(r, 'request_id', '?')!s:.40} cannot be stored: {exc}") from None
    return out
