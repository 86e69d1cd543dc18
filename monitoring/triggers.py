"""Turn a drift verdict into ONE retraining run per shift: de-duplication and cooldown with durable state.

State is a durable table opened through llmops/db.py (locally SQLite in the state dir,
`<state>/monitor/triggers.db`; on a cluster the PostgreSQL database of `settings.triggers_db_uri`), so the rule
holds across separate `llmops monitor run` processes (cron, a schedule, a person, several pods) and across
restarts. The decision and the row that records it are one transaction under a lock (sqlite `BEGIN IMMEDIATE`,
PostgreSQL an advisory lock on the reference): two monitors racing on the same shift cannot both start a run.

A shift is identified by the reference it drifted from (the training data of the serving model): after a retrain
the new model has a new reference, so the next shift triggers again. Within one reference:
- the same window (same first/last request and size) never starts a second run (`duplicate`),
- another drifted window within `monitoring.trigger.cooldown_s` of the last start is `suppressed` (cooldown),
- a drift that has not yet held over `monitoring.trigger.persist_windows` consecutive windows is `pending`
  (every scored window's severity is a row of the `windows` table),
- a drift with nothing new to learn (no data since the champion's training data that covers the drifted
  prompts: monitoring/retrain_gate.py) is `held`: the same data would train the same model.
Every decision is a row: started (with the command, its pid and log), suppressed / pending / held (with why),
failed (could not start). The retraining command gets `--reason` and `--drift-report PATH` (`llmops run retrain`
attaches the report to its MLflow run), and in its environment the monitor's MLflow run id (`LLMOPS_TRIGGER_RUN_ID`).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from llmops import db
from llmops.errors import LlmopsError

REPORT_ENV = "LLMOPS_TRIGGER_REPORT"
RUN_ID_ENV = "LLMOPS_TRIGGER_RUN_ID"
TRIGGER_ID_ENV = "LLMOPS_TRIGGER_ID"



class TriggerOutcome(enum.StrEnum):
    """What a drifted window led to (the `triggers.outcome` column)."""

    STARTED = "started"
    SUPPRESSED = "suppressed"  # duplicate window, or within the cooldown
    FAILED = "failed"  # the command could not be started
    PENDING = "pending"  # drift not yet persistent
    HELD = "held"  # nothing new to learn


OUTCOMES = tuple(TriggerOutcome)
metadata = sa.MetaData()
triggers_table = sa.Table(
    "triggers", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("reference_id", sa.Text, nullable=False),
    sa.Column("window_id", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("report_path", sa.Text),
    sa.Column("mlflow_run_id", sa.Text),
    sa.Column("command", sa.Text),  # JSON list
    sa.Column("pid", sa.Integer),
    sa.Column("log_path", sa.Text),
    sa.Column("fired", sa.Text),  # JSON list
    sa.CheckConstraint("outcome IN (" + ", ".join(f"'{o}'" for o in OUTCOMES) + ")", name="triggers_outcome"),
    sa.Index("triggers_reference", "reference_id", "outcome", "created"),
    sqlite_autoincrement=True,
)
windows_table = sa.Table(
    "windows", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("reference_id", sa.Text, nullable=False),
    sa.Column("window_id", sa.Text, nullable=False),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Index("windows_reference", "reference_id", "id"),
    sqlite_autoincrement=True,
)
STORE = db.Store("triggers", metadata, what="the retrain trigger db", setting="LLMOPS_TRIGGERS_DB_URI")


@dataclass(frozen=True)
class TriggerDecision:
    id: int
    outcome: TriggerOutcome
    reason: str
    reference_id: str
    window_id: str
    created: float
    pid: int | None = None
    log_path: str | None = None
    command: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_command(command: list[str]) -> list[str]:
    """`llmops ...` runs with this interpreter's installation (a cron/daemon PATH may lack the venv)."""
    return [sys.executable, "-m", "cli.main", *command[1:]] if command[:1] == ["llmops"] else list(command)


def db_path(state_dir: Path) -> Path:
    return state_dir / "monitor" / "triggers.db"


def db_url(state_dir: Path, url: str | None = None) -> str:
    """The trigger db: `url` when given (settings.triggers_db_uri: PostgreSQL on a cluster), else the local
    SQLite file in the state dir."""
    return url or db.sqlite_url(db_path(state_dir))


@functools.lru_cache(maxsize=16)
def _engine(url: str) -> sa.Engine:
    """One migrated engine per URL and process (monitors call several functions per window)."""
    return db.open_store(url, STORE)


def record_window(state_dir: Path, *, reference_id: str, window_id: str, severity: str,
                  now: float | None = None, url: str | None = None) -> int:
    """Record a scored window's severity; returns how many consecutive windows (this one included, same
    reference) were `drift`. The same window scored again is not counted twice."""
    w = windows_table
    with _engine(db_url(state_dir, url)).begin() as conn:  # sqlite: BEGIN IMMEDIATE; PostgreSQL: a row lock
        _lock_reference(conn, reference_id)
        last = conn.execute(sa.select(w.c.id, w.c.window_id).where(w.c.reference_id == reference_id)
                            .order_by(w.c.id.desc()).limit(1)).first()
        if last is None or last.window_id != window_id:
            conn.execute(w.insert().values(created=time.time() if now is None else now, reference_id=reference_id,
                                           window_id=window_id, severity=severity))
        else:
            conn.execute(w.update().where(w.c.id == last.id).values(severity=severity))
        rows = conn.execute(sa.select(w.c.severity).where(w.c.reference_id == reference_id)
                            .order_by(w.c.id.desc()).limit(1000)).scalars().all()
    run = 0
    for sev in rows:
        if sev != "drift":
            break
        run += 1
    return run


def _lock_reference(conn: sa.Connection, reference_id: str) -> None:
    """Serialise racing monitors on one reference: sqlite already holds the write lock (BEGIN IMMEDIATE);
    PostgreSQL takes an advisory lock on the reference for the transaction."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"triggers:{reference_id}".encode()).digest()[:8], "big", signed=True)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def _decide(conn: sa.Connection, *, reference_id: str, window_id: str, cooldown_s: float, now: float,
            consecutive: int, persist_windows: int, learnable: tuple[bool, str] | None,
            fired: list[str] | None) -> tuple[TriggerOutcome, str]:
    """The rule (module docstring), read under the reference's lock."""
    t = triggers_table
    started = sa.and_(t.c.reference_id == reference_id, t.c.outcome == TriggerOutcome.STARTED.value)
    dup = conn.execute(sa.select(t.c.id).where(started, t.c.window_id == window_id).order_by(t.c.id)
                       .limit(1)).scalar()
    last = conn.execute(sa.select(t.c.id, t.c.created).where(started).order_by(t.c.created.desc()).limit(1)).first()
    if dup is not None:
        return TriggerOutcome.SUPPRESSED, f"duplicate: this window already started trigger #{dup}"
    if last is not None and now - last.created < cooldown_s:
        return TriggerOutcome.SUPPRESSED, (f"cooldown: trigger #{last.id} started a run for this shift "
                                           f"{now - last.created:.0f} s ago (monitoring.trigger.cooldown_s="
                                           f"{cooldown_s:g})")
    if consecutive < persist_windows:
        return TriggerOutcome.PENDING, (f"persistence: drift in {consecutive} consecutive window(s), "
                                        f"monitoring.trigger.persist_windows={persist_windows} needed")
    if learnable is not None and not learnable[0]:
        return TriggerOutcome.HELD, f"nothing new to learn: {learnable[1]}"
    reason = "drift detected: " + (", ".join(fired or []) or "verdict drifted")
    return TriggerOutcome.STARTED, reason + (f"; {learnable[1]}" if learnable is not None else "")


def decide_and_start(
    state_dir: Path,
    *,
    reference_id: str,
    window_id: str,
    command: list[str],
    cooldown_s: float,
    report_path: Path | None = None,
    mlflow_run_id: str | None = None,
    fired: list[str] | None = None,
    cwd: Path | None = None,
    now: float | None = None,
    consecutive: int = 1,
    persist_windows: int = 1,
    learnable: tuple[bool, str] | None = None,
    url: str | None = None,
) -> TriggerDecision:
    """Record the decision for a drifted window and, if it is the first of its shift, start `command` detached
    (its output goes to a log file beside the trigger db). Returns what was decided.

    Before a start: the drift must have held over `persist_windows` consecutive windows (`consecutive` so far;
    else `pending`), and `learnable` (whether data arrived since the champion's training data, and why) must
    allow it (else `held`: retraining on the same data would give the same model)."""
    if not command:
        raise LlmopsError("monitoring.trigger.command is empty", "set it in params.yaml, e.g. [llmops, run, retrain]")
    now = time.time() if now is None else now
    engine, t = _engine(db_url(state_dir, url)), triggers_table
    with engine.begin() as conn:  # serialises racing monitors: check and insert are one transaction
        _lock_reference(conn, reference_id)
        outcome, reason = _decide(conn, reference_id=reference_id, window_id=window_id, cooldown_s=cooldown_s,
                                  now=now, consecutive=consecutive, persist_windows=persist_windows,
                                  learnable=learnable, fired=fired)
        trigger_id = int(conn.execute(t.insert().values(
            created=now, reference_id=reference_id, window_id=window_id, outcome=outcome.value, reason=reason,
            report_path=str(report_path) if report_path else None, mlflow_run_id=mlflow_run_id,
            command=json.dumps(command), fired=json.dumps(fired or []))).inserted_primary_key[0])
    if outcome != TriggerOutcome.STARTED:
        return TriggerDecision(trigger_id, outcome, reason, reference_id, window_id, now)
    log_path = db_path(state_dir).parent / "runs" / f"trigger-{trigger_id}.log"
    try:
        argv = [*resolve_command(command), "--reason", reason]
        argv += ["--drift-report", str(report_path)] if report_path else []
        pid = _start(argv, log_path, cwd, {REPORT_ENV: str(report_path or ""),
                                              RUN_ID_ENV: mlflow_run_id or "", TRIGGER_ID_ENV: str(trigger_id)})
    except OSError as exc:  # the start itself failed: record it, so the next window may try again
        reason = f"could not start {command[0]!r}: {exc}"
        with engine.begin() as conn:
            conn.execute(t.update().where(t.c.id == trigger_id).values(outcome=TriggerOutcome.FAILED.value,
                                                                       reason=reason))
        return TriggerDecision(trigger_id, TriggerOutcome.FAILED, reason, reference_id, window_id, now,
                               command=command)
    with engine.begin() as conn:
        conn.execute(t.update().where(t.c.id == trigger_id).values(pid=pid, log_path=str(log_path)))
    return TriggerDecision(trigger_id, TriggerOutcome.STARTED, reason, reference_id, window_id, now, pid,
                           str(log_path), argv)


def _start(command: list[str], log_path: Path, cwd: Path | None, env: dict[str, str]) -> int:
    """Start the retraining command in its own session (it outlives the monitor), output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env={**os.environ, **env}, start_new_session=True)
    return proc.pid


def history(state_dir: Path, limit: int = 50, url: str | None = None) -> list[dict[str, Any]]:
    """The latest trigger decisions, newest first."""
    url = db_url(state_dir, url)
    if not db.exists(url):
        return []
    t = triggers_table
    with _engine(url).connect() as conn:
        rows = conn.execute(sa.select(t).order_by(t.c.id.desc()).limit(limit)).mappings().all()
    return [dict(r) | {"command": json.loads(r["command"] or "null"), "fired": json.loads(r["fired"] or "[]")}
            for r in rows]


def counts(state_dir: Path, url: str | None = None) -> dict[str, int]:
    """Decisions so far by outcome (the monitor exports them as gauges)."""
    out = {o.value: 0 for o in TriggerOutcome}
    url = db_url(state_dir, url)
    if not db.exists(url):
        return out
    t = triggers_table
    with _engine(url).connect() as conn:
        for outcome, n in conn.execute(sa.select(t.c.outcome, sa.func.count()).group_by(t.c.outcome)):
            out[outcome] = int(n)
    return out
