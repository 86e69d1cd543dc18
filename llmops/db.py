"""One way to open a small durable table: a URL in, a migrated SQLAlchemy engine out (after MLflow's `store/db`).

Every store of the project (audit trail, rollout state, retrain triggers, schedule runs; the inference log is
being moved onto it) opens its database here, so they share one policy instead of one each:

- **URL**: `sqlite:///path` locally, `postgresql://...` (psycopg2) on a cluster; anything else is refused
  with the fix (the stores rely on per-dialect locking: sqlite `BEGIN IMMEDIATE`, PostgreSQL advisory locks).
- **SQLite**: the parent directory is created if missing and the file with mode 0600 before SQLite opens it
  (prompts, actors and commands are private; SQLite gives its -wal/-shm files the same mode; an older file
  with a wider mode is tightened when it is ours); WAL journal, switched
  with a retry because `PRAGMA journal_mode=WAL` answers "database is locked" at once, without the busy
  handler, while another process holds the file (one of 4 racing monitors died that way in CI);
  `synchronous=FULL` (a commit survives a power cut); a busy timeout so writers wait instead of failing;
  transactions begin `IMMEDIATE` by default, so a read-then-write holds the write lock from its first
  read (override per engine with `sqlite_begin=`, per connection with `execution_options(sqlite_begin=)`).
- **PostgreSQL**: a connect timeout and a statement timeout (a hung server or a held lock fails the call
  instead of hanging it forever), `pool_pre_ping`, and an `application_name` naming the store in
  `pg_stat_activity`. Values given in the URL's query (`?connect_timeout=`, `?options=`) win.
- **Migrations**: alembic, run on open. Each store has its own revision chain in its own directory and
  its own version table (`alembic_version_<store>`), with one shared `env.py` (llmops/migrations/env.py).
  Why one table per store rather than one chain for all: stores share databases in different
  combinations (audit + rollout state share `audit.db`; on a cluster any of them may share one
  PostgreSQL database), and each store upgrades when its own code is released -- a single chain would
  tie every store's schema to every other's. Upgrades take the write lock first (sqlite `BEGIN
  IMMEDIATE`, PostgreSQL an advisory lock on the version table's name), so processes opening a fresh
  database at once migrate it once. A store's first revision is a *baseline* that creates only the
  tables and indexes that are missing, so files written before migrations existed are adopted as they are.

How a store declares its tables and migrations and opens itself::

    import sqlalchemy as sa
    from llmops import db

    metadata = sa.MetaData()
    things = sa.Table("things", metadata,
                      sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                      sa.Column("name", sa.String(256), nullable=False))
    STORE = db.Store("things", metadata, what="the thing store", setting="LLMOPS_THINGS_DB_URI")
    # revisions in llmops/migrations/things/ (or pass migrations=Path(...) for a directory of your own):
    #   0001_baseline.py:  revision = "things_0001"; down_revision = None
    #       def upgrade(): db.create_missing(op, sa.Table("things", sa.MetaData(), ...frozen copy...))
    #   0002_...py: revision = "things_0002"; down_revision = "things_0001"; def upgrade(): op.add_column(...)

    engine = db.open_store(url, STORE)  # creates/migrates; LlmopsError with the fix when it cannot
    with engine.begin() as conn:         # sqlite: BEGIN IMMEDIATE; PostgreSQL: an ordinary transaction
        conn.execute(things.insert().values(name="x"))

Revisions are frozen copies of the schema at that point (never import the live `metadata` in one): a new
column is a new revision *and* a change to the declared table; tests/unit/test_db.py checks that the
migrated database matches the declared tables on SQLite and PostgreSQL (`schema_diff`). SQLite cannot
ALTER most things in place: write such changes with `op.batch_alter_table` (alembic copies the table).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from llmops.errors import LlmopsError

MIGRATIONS_ROOT = Path(__file__).parent / "migrations"
FILE_MODE = 0o600
SQLITE_BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another's lock before "database is locked"
PG_CONNECT_TIMEOUT_S = 10
PG_STATEMENT_TIMEOUT_S = 60.0  # also bounds a wait for a row or advisory lock
DIALECTS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Store:
    """A store's identity: its name (version table `alembic_version_<name>`, revisions in
    `llmops/migrations/<name>/` unless `migrations` is given), declared tables, and how errors name it."""

    name: str
    metadata: sa.MetaData = field(compare=False)
    what: str = ""  # e.g. "the audit trail"
    setting: str = ""  # the setting holding its URL, for the fix, e.g. LLMOPS_AUDIT_DB_URI
    migrations: Path | None = None

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.name}"

    @property
    def migrations_dir(self) -> Path:
        return self.migrations or MIGRATIONS_ROOT / self.name


# ---- URLs ---------------------------------------------------------------------------------------------------

def sqlite_url(path: Path | str) -> str:
    return f"sqlite:///{Path(path)}"


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite URL (None for PostgreSQL or `:memory:`)."""
    u = sa.engine.make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def exists(url: str) -> bool:
    """False only for a sqlite file not created yet (readers then answer "nothing yet" without creating it)."""
    path = sqlite_path(url)
    return path is None or path.is_file()


def redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def error_line(exc: BaseException) -> str:
    """The driver's first line of a database error (SQLAlchemy wraps it in a page of context)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---- the SQLite policy ----------------------------------------------------------------------------------------

def enable_wal(conn: Any, timeout_s: float = 30.0) -> None:
    """Run `PRAGMA journal_mode=WAL` on `conn` (a sqlite3 connection or cursor), retrying while it is locked:
    SQLite answers that pragma SQLITE_BUSY at once, without calling the busy handler."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _prepare_sqlite_file(path: Path) -> None:
    """Create the file owner-only before SQLite does (SQLite would use the umask); tighten an older file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE))
    try:
        if path.stat().st_mode & 0o077 and path.stat().st_uid == os.geteuid():
            os.chmod(path, FILE_MODE)
    except OSError:  # not ours to change: keep working
        pass


def _sqlite_engine(url: str, busy_timeout_s: float, sqlite_begin: str) -> sa.Engine:
    path = sqlite_path(url)
    if path is not None:
        _prepare_sqlite_file(path)
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})

    @sa.event.listens_for(engine, "connect")
    def _policy(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver begins nothing itself; "begin" below does
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        if path is not None:
            enable_wal(cur, timeout_s=busy_timeout_s)
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        mode = str(conn.get_execution_options().get("sqlite_begin", sqlite_begin)).upper()
        if mode not in ("IMMEDIATE", "DEFERRED", "EXCLUSIVE"):
            raise ValueError(f"sqlite_begin={mode!r}: IMMEDIATE, DEFERRED or EXCLUSIVE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _postgres_engine(url: str, connect_timeout_s: float, statement_timeout_s: float,
                     application_name: str) -> sa.Engine:
    query = sa.engine.make_url(url).query
    args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        args["connect_timeout"] = max(1, int(connect_timeout_s))
    if "options" not in query:
        args["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    if "application_name" not in query and application_name:
        args["application_name"] = application_name[:63]
    return sa.create_engine(url, connect_args=args, pool_pre_ping=True)


def create_engine(url: str, *, sqlite_begin: str = "IMMEDIATE", busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S,
                  connect_timeout_s: float = PG_CONNECT_TIMEOUT_S,
                  statement_timeout_s: float = PG_STATEMENT_TIMEOUT_S, application_name: str = "llmops",
                  what: str = "the database", setting: str = "") -> sa.Engine:
    """An engine with the policy above (no tables, no migrations: `open_store` adds those)."""
    try:
        dialect, shown = sa.engine.make_url(url).get_backend_name(), redact(url)
    except sa.exc.ArgumentError:
        dialect, shown = None, "a URL that does not parse"
    if dialect not in DIALECTS:
        raise LlmopsError(f"{what}: {shown} is not supported (sqlite and postgresql are)",
                          f"set {setting or 'it'} to sqlite:///PATH or postgresql://USER@HOST/DB")
    if dialect == "sqlite":
        return _sqlite_engine(url, busy_timeout_s, sqlite_begin)
    return _postgres_engine(url, connect_timeout_s, statement_timeout_s, application_name)


# ---- migrations ---------------------------------------------------------------------------------------------

_MIGRATED: set[tuple[str, str, int | None]] = set()
_MIGRATE_LOCK = threading.Lock()


def _alembic_config(store: Store, conn: sa.Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_ROOT))
    cfg.set_main_option("version_locations", str(store.migrations_dir))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes.update(connection=conn, target_metadata=store.metadata, version_table=store.version_table)
    return cfg


def _lock_key(name: str) -> int:
    """Stable signed 64-bit key for pg_advisory_xact_lock (Python's hash() differs per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def upgrade(engine: sa.Engine, store: Store, revision: str = "head") -> None:
    """Bring `store`'s tables to `revision` under the write lock (a no-op when already there)."""
    from alembic import command

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(store.version_table)})
        command.upgrade(_alembic_config(store, conn), revision)


def current_revision(engine: sa.Engine, store: Store) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": store.version_table}).get_current_revision()


def head_revision(store: Store) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(store)).get_current_head()


def schema_diff(engine: sa.Engine, store: Store) -> list[Any]:
    """What differs between the migrated database and the declared tables (alembic autogenerate's diff);
    other stores' tables in a shared database are not looked at."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    ours = set(store.metadata.tables)

    def include_name(name: str | None, type_: str, _parent: Any) -> bool:
        return type_ != "table" or name in ours

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": store.version_table,
                                                     "include_name": include_name})
        return list(compare_metadata(ctx, store.metadata))


def create_missing(op: Any, *tables: sa.Table) -> None:
    """For a baseline revision: create the tables and indexes not there yet, keep those that are (an
    older file written before migrations existed is adopted as it is)."""
    bind = op.get_bind()
    for table in tables:
        inspector = sa.inspect(bind)
        if not inspector.has_table(table.name):
            table.create(bind)
            continue
        have = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in have:
                index.create(bind)


# ---- opening a store ------------------------------------------------------------------------------------------

def open_store(url: str, store: Store, **engine_options: Any) -> sa.Engine:
    """An engine on `url` with `store`'s tables migrated to head (once per process and URL). Raises
    LlmopsError naming the store, the URL (password hidden), the cause and the fix."""
    engine = create_engine(url, what=store.what or store.name, setting=store.setting,
                           application_name=f"llmops-{store.name}", **engine_options)
    path = sqlite_path(url)
    # A sqlite file deleted and created anew (make clean under a running process) must be migrated again.
    key = (str(engine.url), store.name, path.stat().st_ino if path is not None else None)
    try:
        with _MIGRATE_LOCK:
            if key not in _MIGRATED:
                upgrade(engine, store)
                _MIGRATED.add(key)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        engine.dispose()
        raise LlmopsError(f"cannot open {store.what or store.name} at {redact(url)}: {error_line(exc)}",
                          f"check {store.setting or 'its URL'} and that the database is reachable and "
                          "writable") from None
    return engine
