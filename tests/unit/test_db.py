"""llmops/db.py and the stores on it, on SQLite and a real PostgreSQL: the one SQLite policy (mode 0600, WAL even
under a lock, synchronous=FULL, busy timeout, BEGIN IMMEDIATE), PostgreSQL connect and statement timeouts,
migrations that end at the declared tables, older files adopted, round trips, racing writers."""

from __future__ import annotations

import datetime as dt
import itertools
import multiprocessing
import os
import socket
import sqlite3
import stat
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmops import db
from llmops.errors import LlmopsError
from llmops.registry import audit
from monitoring import schedules, triggers
from serving.rollout import state

STORES = {"audit": audit.STORE, "rollout": state.STORE, "triggers": triggers.STORE,
          "schedule_runs": schedules.STORE}


@pytest.fixture
def pg_url(pg_server: tuple[int, str]) -> str:
    """A fresh database on the module's PostgreSQL server."""
    from tests.postgres_stack import create_database

    return create_database(*pg_server, f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return db.sqlite_url(tmp_path / "state" / "store.db")


def _forget_migrations() -> None:
    """Make the next open_store run alembic again (as a new process would)."""
    db._MIGRATED.clear()
    triggers._engine.cache_clear()
    schedules._engine.cache_clear()


# ---- the SQLite policy ------------------------------------------------------------------------------------------

def test_sqlite_files_are_private_wal_full_sync_with_a_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "audit.db"
    engine = db.open_store(db.sqlite_url(path), audit.STORE)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == int(db.SQLITE_BUSY_TIMEOUT_S * 1000)
    for f in (path, Path(f"{path}-wal")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    old = tmp_path / "old.db"  # a file an earlier version created with the umask's mode
    sqlite3.connect(old).close()
    old.chmod(0o644)
    db.create_engine(db.sqlite_url(old)).dispose()
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


def test_sqlite_transactions_take_the_write_lock_up_front(tmp_path: Path) -> None:
    """A read-then-write holds the lock from its first read: a second writer waits (busy timeout), then
    fails only when the timeout runs out. DEFERRED per connection stays possible for plain readers."""
    url = db.sqlite_url(tmp_path / "x.db")
    first = db.create_engine(url)
    second = db.create_engine(url, busy_timeout_s=0.3)
    with first.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    with first.begin() as conn:
        conn.exec_driver_sql("SELECT * FROM t").all()  # only a read so far, yet the lock is held
        start = time.monotonic()
        with pytest.raises(sa.exc.OperationalError, match="locked"), second.begin() as other:
            other.exec_driver_sql("SELECT 1")
        assert time.monotonic() - start >= 0.25
        with second.connect() as reader:  # a DEFERRED reader is not blocked by the writer (WAL)
            reader = reader.execution_options(sqlite_begin="DEFERRED")
            assert reader.exec_driver_sql("SELECT COUNT(*) FROM t").scalar() == 0


def test_wal_switch_waits_for_a_lock_held_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # what a plain PRAGMA does meanwhile
        other.execute("PRAGMA journal_mode=WAL")
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    start = time.monotonic()
    db.enable_wal(other, timeout_s=10)
    assert time.monotonic() - start >= 0.2
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_lock_that_outlasts_the_wal_timeout_still_fails(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        db.enable_wal(other, timeout_s=0.3)
    holder.execute("COMMIT")


def test_unsupported_or_unreachable_urls_name_cause_and_fix(tmp_path: Path) -> None:
    with pytest.raises(LlmopsError, match="not supported") as info:
        db.open_store("mysql://u:secret@db/audit", audit.STORE)
    assert "secret" not in str(info.value) and "LLMOPS_AUDIT_DB_URI" in info.value.fix
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(LlmopsError, match="cannot open the audit store"):
            db.open_store(db.sqlite_url(tmp_path / "ro" / "sub" / "a.db"), audit.STORE)


# ---- migrations -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(STORES))
def test_migrations_end_at_the_declared_tables(url: str, name: str) -> None:
    store = STORES[name]
    engine = db.open_store(url, store)
    assert db.current_revision(engine, store) == db.head_revision(store) is not None
    assert db.schema_diff(engine, store) == []
    _forget_migrations()
    db.open_store(url, store)  # again (as another process): a no-op
    assert db.current_revision(engine, store) == db.head_revision(store)


def test_a_declared_change_without_its_migration_is_caught(tmp_path: Path) -> None:
    """schema_diff is what the test above relies on: a column declared but never migrated shows up."""
    url = db.sqlite_url(tmp_path / "a.db")
    engine = db.open_store(url, audit.STORE)
    meta = sa.MetaData()
    for table in audit.metadata.tables.values():
        table.to_metadata(meta)
    sa.Table("alias_events", meta, sa.Column("ticket", sa.String(64)), extend_existing=True)
    diff = db.schema_diff(engine, db.Store("audit", meta))
    assert [(d[0], d[3].name) for d in diff] == [("add_column", "ticket")]


def test_stores_sharing_one_database_keep_their_own_version(url: str) -> None:
    """Audit trail and rollout state share one URL (settings.audit_db_uri); on a cluster any may."""
    for store in STORES.values():
        db.open_store(url, store)
    engine = db.create_engine(url)
    tables = set(sa.inspect(engine).get_table_names())
    assert {s.version_table for s in STORES.values()} <= tables
    for store in STORES.values():
        assert db.current_revision(engine, store) == db.head_revision(store)
        assert db.schema_diff(engine, store) == []


def test_files_from_before_migrations_are_adopted_with_their_rows(url: str) -> None:
    """The stores' tables as earlier versions created them (audit/rollout: SQLAlchemy create_all; schedule
    runs: raw DDL), with a row each: opening stamps them and keeps every row."""
    engine = db.create_engine(url)
    with engine.begin() as conn:
        audit.metadata.create_all(conn)
        state.metadata.create_all(conn)
        conn.execute(audit.alias_events.insert().values(model="m", alias="champion", action="promote",
                                                        from_version=None, to_version="1", actor="a", reason="r",
                                                        timestamp=dt.datetime.now(dt.UTC)))
        conn.exec_driver_sql("CREATE TABLE llmops_schedule_runs (id INTEGER PRIMARY KEY, schedule_id TEXT NOT NULL, "
                             "started REAL NOT NULL, finished REAL, exit_code INTEGER, log_path TEXT)")
        conn.exec_driver_sql("INSERT INTO llmops_schedule_runs (id, schedule_id, started) VALUES (1, 's', 1.0)")
    assert [e.to_version for e in audit.SqlAuditStore(url).history("m")] == ["1"]
    assert state.RolloutStore(url).history() == []
    assert [r["schedule_id"] for r in schedules.runs_of(Path("/nonexistent"), url=url)] == ["s"]
    for name in ("audit", "rollout", "schedule_runs"):
        assert db.current_revision(engine, STORES[name]) == db.head_revision(STORES[name])


def test_a_trigger_db_from_before_pending_and_held_is_rebuilt(tmp_path: Path) -> None:
    path = triggers.db_path(tmp_path)
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript("""CREATE TABLE triggers (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL,
        reference_id TEXT NOT NULL, window_id TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('started', 'suppressed', 'failed')), reason TEXT NOT NULL,
        report_path TEXT, mlflow_run_id TEXT, command TEXT, pid INTEGER, log_path TEXT, fired TEXT);
        CREATE INDEX triggers_reference ON triggers (reference_id, outcome, created);
        INSERT INTO triggers (created, reference_id, window_id, outcome, reason)
        VALUES (1, 'r', 'w', 'started', 'x');""")
    conn.close()
    held = triggers.decide_and_start(tmp_path, reference_id="r2", window_id="w2", cooldown_s=0,
                                     command=[sys.executable, "-c", "pass"], learnable=(False, "no data"))
    assert held.outcome == triggers.TriggerOutcome.HELD
    assert triggers.counts(tmp_path) == {"started": 1, "suppressed": 0, "failed": 0, "pending": 0, "held": 1}
    engine = db.create_engine(db.sqlite_url(path))
    assert db.schema_diff(engine, triggers.STORE) == []


# ---- round trips on both backends -----------------------------------------------------------------------------

def test_audit_round_trip(url: str) -> None:
    store = audit.SqlAuditStore(url)
    with store.transaction("m") as tx:
        tx.record("champion", "promote", None, "1", "me@host", "first")
    with store.transaction("m") as tx:
        prev = tx.latest("champion")
        tx.record("champion", "promote", prev.to_version, "2", "me@host", "second")
    events = store.history("m", "champion")
    assert [(e.from_version, e.to_version) for e in events] == [(None, "1"), ("1", "2")]
    assert events[0].timestamp.endswith("+00:00")


def test_rollout_state_round_trip(url: str) -> None:
    store = state.RolloutStore(url)
    r, _ = store.create(model="m", version="2", stable_version="1", config={"a": 1}, actuator={"kind": "x"},
                            traffic_url=None, probe={"golden": []}, actor="me", stale_after_s=30)
    assert r.status is state.RolloutStatus.RUNNING and store.active("m").id == r.id
    store.record(r.id, 0, 10, "analysis", verdict="pass", metrics={"x": 1.5})
    assert store.transition(r.id, state.ACTIVE, state.RolloutStatus.ABORTED, "stop")
    assert not store.transition(r.id, state.ACTIVE, state.RolloutStatus.PROMOTED)  # lost the race: already final
    assert store.get(r.id).status == "aborted" and store.active("m") is None
    assert [d["metrics"] for d in store.decisions_of(r.id)] == [{"x": 1.5}]


def test_trigger_round_trip(url: str, tmp_path: Path) -> None:
    kw = {"reference_id": "ref", "cooldown_s": 3600, "command": [sys.executable, "-c", "pass"], "url": url}
    assert triggers.record_window(tmp_path, reference_id="ref", window_id="a", severity="drift", url=url) == 1
    assert triggers.record_window(tmp_path, reference_id="ref", window_id="b", severity="drift", url=url) == 2
    first = triggers.decide_and_start(tmp_path, window_id="b", **kw)
    again = triggers.decide_and_start(tmp_path, window_id="b", **kw)
    later = triggers.decide_and_start(tmp_path, window_id="c", **kw)
    assert (first.outcome, again.outcome, later.outcome) == ("started", "suppressed", "suppressed")
    assert "duplicate" in again.reason and "cooldown" in later.reason and first.pid
    assert [h["outcome"] for h in triggers.history(tmp_path, url=url)] == ["suppressed", "suppressed", "started"]
    assert triggers.counts(tmp_path, url=url)["started"] == 1
    assert triggers.history(tmp_path / "elsewhere") == []  # no local file: nothing yet, and none created
    assert not triggers.db_path(tmp_path / "elsewhere").exists()


def test_schedule_store_round_trip(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """APScheduler's jobs and our runs share the store's database (sqlite or PostgreSQL)."""
    made = schedules.create_local(tmp_path, "retrain", "0 3 * * 1", [sys.executable, "-c", "pass"], tmp_path,
                                  url=url)
    assert schedules.pause_local(tmp_path, made["id"], url=url)["paused"]
    monkeypatch.setattr(schedules, "_daemon_url", url)
    assert schedules.fire(made["id"], [sys.executable, "-c", "raise SystemExit(3)"], str(tmp_path),
                          str(tmp_path)) == 3
    listed = schedules.list_local(tmp_path, url=url)
    assert [s["id"] for s in listed] == [made["id"]] and listed[0]["last_run"]["exit_code"] == 3
    assert schedules.delete_local(tmp_path, made["id"], url=url)["deleted"]


# ---- concurrency and timeouts ---------------------------------------------------------------------------------

def _append_events(url: str, n: int, who: int) -> None:
    store = audit.SqlAuditStore(url)
    for i in range(n):
        with store.transaction("m") as tx:
            prev = tx.latest("champion")
            tx.record("champion", "promote", prev.to_version if prev else None, f"{who}.{i}", "w", "race")


def test_racing_processes_on_a_fresh_database_migrate_once_and_lose_no_write(url: str) -> None:
    n, procs = 5, 4
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_events, args=(url, n, w)) for w in range(procs)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0] * procs
    events = audit.SqlAuditStore(url).history("m")
    assert len(events) == n * procs
    assert all(a.to_version == b.from_version for a, b in itertools.pairwise(events))  # unbroken chain
    engine = db.create_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM alembic_version_audit").scalar() == 1


def test_postgres_statement_timeout_ends_a_stuck_call(pg_url: str) -> None:
    engine = db.create_engine(pg_url, statement_timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(sa.exc.OperationalError, match="statement timeout"), engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_sleep(5)"))
    assert time.monotonic() - start < 3
    # A lock another session holds: the audit store's transaction fails instead of waiting forever
    # (timeout from the URL this time: a value given there wins over the default).
    db.open_store(pg_url, audit.STORE)
    holder = db.create_engine(pg_url).connect()
    try:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": audit._lock_key("m")})
        store = audit.SqlAuditStore(pg_url + "?options=-c%20statement_timeout%3D400")
        start = time.monotonic()
        with pytest.raises(sa.exc.OperationalError, match="statement timeout"), store.transaction("m"):
            pass
        assert time.monotonic() - start < 3
    finally:
        holder.close()


def test_postgres_connect_timeout_ends_a_silent_server() -> None:
    """A server that accepts TCP and never answers (a hung host, a black-holing proxy)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        engine = db.create_engine(f"postgresql+psycopg2://u@127.0.0.1:{port}/x", connect_timeout_s=1)
        start = time.monotonic()
        with pytest.raises(sa.exc.OperationalError, match="timeout"):
            engine.connect()
        assert time.monotonic() - start < 5
