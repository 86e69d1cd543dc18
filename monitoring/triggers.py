"""Turn a drift verdict into ONE retraining run per shift: de-duplication and cooldown with durable state.

State is a SQLite table in the state dir (`<state>/monitor/triggers.db`), so the rule holds across separate
`llmops monitor run` processes (cron, a schedule, a person) and across restarts. The decision and the row that
records it are one `BEGIN IMMEDIATE` transaction: two monitors racing on the same shift cannot both start a run.

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

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmops.errors import LlmopsError
from llmops.sqlite_wal import enable_wal

REPORT_ENV = "LLMOPS_TRIGGER_REPORT"
RUN_ID_ENV = "LLMOPS_TRIGGER_RUN_ID"
TRIGGER_ID_ENV = "LLMOPS_TRIGGER_ID"

_TRIGGERS = """
CREATE TABLE IF NOT EXISTS triggers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    reference_id TEXT NOT NULL,
    window_id TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('started', 'suppressed', 'failed', 'pending', 'held')),
    reason TEXT NOT NULL,
    report_path TEXT,
    mlflow_run_id TEXT,
    command TEXT,
    pid INTEGER,
    log_path TEXT,
    fired TEXT
);
"""
_COLUMNS = ("id, created, reference_id, window_id, outcome, reason, report_path, mlflow_run_id, command, pid, "
            "log_path, fired")
_SCHEMA = """
CREATE INDEX IF NOT EXISTS triggers_reference ON triggers (reference_id, outcome, created);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    reference_id TEXT NOT NULL,
    window_id TEXT NOT NULL,
    severity TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS windows_reference ON windows (reference_id, id);
"""
OUTCOMES = ("started", "suppressed", "failed", "pending", "held")


@dataclass(frozen=True)
class TriggerDecision:
    id: int
    outcome: str  # started | suppressed | failed | pending (drift not yet persistent) | held (nothing new to learn)
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


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit; transactions are explicit
    enable_wal(conn)
    _migrate(conn)
    conn.executescript(_TRIGGERS + _SCHEMA)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """A triggers table from before `pending`/`held` (its CHECK rejects them): copy it into the new schema."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='triggers'").fetchone()
    if not row or "'held'" in row[0]:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DROP INDEX IF EXISTS triggers_reference")
        conn.execute("ALTER TABLE triggers RENAME TO triggers_v1")
        conn.execute(_TRIGGERS)
        conn.execute(f"INSERT INTO triggers ({_COLUMNS}) SELECT {_COLUMNS} FROM triggers_v1")
        conn.execute("DROP TABLE triggers_v1")
        conn.execute("COMMIT")
    except sqlite3.Error:
        conn.execute("ROLLBACK")
        raise


def record_window(state_dir: Path, *, reference_id: str, window_id: str, severity: str,
                  now: float | None = None) -> int:
    """Record a scored window's severity; returns how many consecutive windows (this one included, same
    reference) were `drift`. The same window scored again is not counted twice."""
    conn = _connect(db_path(state_dir))
    try:
        conn.execute("BEGIN IMMEDIATE")
        last = conn.execute("SELECT window_id FROM windows WHERE reference_id=? ORDER BY id DESC LIMIT 1",
                            (reference_id,)).fetchone()
        if not last or last[0] != window_id:
            conn.execute("INSERT INTO windows (created, reference_id, window_id, severity) VALUES (?, ?, ?, ?)",
                         (time.time() if now is None else now, reference_id, window_id, severity))
        else:
            conn.execute("UPDATE windows SET severity=? WHERE id=(SELECT MAX(id) FROM windows WHERE reference_id=?)",
                         (severity, reference_id))
        rows = conn.execute("SELECT severity FROM windows WHERE reference_id=? ORDER BY id DESC LIMIT 1000",
                            (reference_id,)).fetchall()
        conn.execute("COMMIT")
    finally:
        conn.close()
    run = 0
    for (sev,) in rows:
        if sev != "drift":
            break
        run += 1
    return run


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
) -> TriggerDecision:
    """Record the decision for a drifted window and, if it is the first of its shift, start `command` detached
    (its output goes to a log file beside the trigger db). Returns what was decided.

    Before a start: the drift must have held over `persist_windows` consecutive windows (`consecutive` so far;
    else `pending`), and `learnable` (whether data arrived since the champion's training data, and why) must
    allow it (else `held`: retraining on the same data would give the same model)."""
    if not command:
        raise LlmopsError("monitoring.trigger.command is empty", "set it in params.yaml, e.g. [llmops, run, retrain]")
    now = time.time() if now is None else now
    path = db_path(state_dir)
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")  # serialises racing monitors: check and insert are one transaction
        dup = conn.execute("SELECT id FROM triggers WHERE reference_id=? AND window_id=? AND outcome='started' "
                           "ORDER BY id LIMIT 1", (reference_id, window_id)).fetchone()
        last = conn.execute("SELECT id, created FROM triggers WHERE reference_id=? AND outcome='started' "
                            "ORDER BY created DESC LIMIT 1", (reference_id,)).fetchone()
        if dup:
            outcome, reason = "suppressed", f"duplicate: this window already started trigger #{dup[0]}"
        elif last and now - last[1] < cooldown_s:
            outcome = "suppressed"
            reason = (f"cooldown: trigger #{last[0]} started a run for this shift {now - last[1]:.0f} s ago "
                      f"(monitoring.trigger.cooldown_s={cooldown_s:g})")
        elif consecutive < persist_windows:
            outcome = "pending"
            reason = (f"persistence: drift in {consecutive} consecutive window(s), "
                      f"monitoring.trigger.persist_windows={persist_windows} needed")
        elif learnable is not None and not learnable[0]:
            outcome, reason = "held", f"nothing new to learn: {learnable[1]}"
        else:
            outcome, reason = "started", "drift detected: " + (", ".join(fired or []) or "verdict drifted")
            if learnable is not None:
                reason += f"; {learnable[1]}"
        cur = conn.execute(
            "INSERT INTO triggers (created, reference_id, window_id, outcome, reason, report_path, mlflow_run_id, "
            "command, fired) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, reference_id, window_id, outcome, reason, str(report_path) if report_path else None,
             mlflow_run_id, json.dumps(command), json.dumps(fired or [])))
        trigger_id = int(cur.lastrowid)
        conn.execute("COMMIT")
        if outcome != "started":
            return TriggerDecision(trigger_id, outcome, reason, reference_id, window_id, now)
        log_path = path.parent / "runs" / f"trigger-{trigger_id}.log"
        try:
            argv = [*resolve_command(command), "--reason", reason]
            argv += ["--drift-report", str(report_path)] if report_path else []
            pid = _start(argv, log_path, cwd, {REPORT_ENV: str(report_path or ""),
                                                  RUN_ID_ENV: mlflow_run_id or "", TRIGGER_ID_ENV: str(trigger_id)})
        except OSError as exc:  # the start itself failed: record it, so the next window may try again
            reason = f"could not start {command[0]!r}: {exc}"
            conn.execute("UPDATE triggers SET outcome='failed', reason=? WHERE id=?", (reason, trigger_id))
            return TriggerDecision(trigger_id, "failed", reason, reference_id, window_id, now, command=command)
        conn.execute("UPDATE triggers SET pid=?, log_path=? WHERE id=?", (pid, str(log_path), trigger_id))
        return TriggerDecision(trigger_id, "started", reason, reference_id, window_id, now, pid, str(log_path), argv)
    finally:
        conn.close()


def _start(command: list[str], log_path: Path, cwd: Path | None, env: dict[str, str]) -> int:
    """Start the retraining command in its own session (it outlives the monitor), output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env={**os.environ, **env}, start_new_session=True)
    return proc.pid


def history(state_dir: Path, limit: int = 50) -> list[dict[str, Any]]:
    """The latest trigger decisions, newest first."""
    path = db_path(state_dir)
    if not path.is_file():
        return []
    conn = _connect(path)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM triggers ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) | {"command": json.loads(r["command"] or "null"), "fired": json.loads(r["fired"] or "[]")}
                for r in rows]
    finally:
        conn.close()


def counts(state_dir: Path) -> dict[str, int]:
    """Decisions so far by outcome (the monitor exports them as gauges)."""
    out = dict.fromkeys(OUTCOMES, 0)
    path = db_path(state_dir)
    if not path.is_file():
        return out
    conn = _connect(path)
    try:
        for outcome, n in conn.execute("SELECT outcome, COUNT(*) FROM triggers GROUP BY outcome"):
            out[outcome] = int(n)
        return out
    finally:
        conn.close()
