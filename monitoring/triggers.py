"""Turn a drift verdict into ONE retraining run per shift: de-duplication and cooldown with durable state.

State is a SQLite table in the state dir (`<state>/monitor/triggers.db`), so the rule holds across separate
`llmops monitor run` processes (cron, a schedule, a person) and across restarts. The decision and the row that
records it are one `BEGIN IMMEDIATE` transaction: two monitors racing on the same shift cannot both start a run.

A shift is identified by the reference it drifted from (the training data of the serving model): after a retrain
the new model has a new reference, so the next shift triggers again. Within one reference:
- the same window (same first/last request and size) never starts a second run (`duplicate`),
- another drifted window within `monitoring.trigger.cooldown_s` of the last start is `suppressed` (cooldown).
Every decision is a row: started (with the command, its pid and log), suppressed (with why), failed (could not
start). The retraining command gets `--reason` and `--drift-report PATH` (`llmops run retrain` attaches the report
to its MLflow run), and in its environment the monitor's MLflow run id (`LLMOPS_TRIGGER_RUN_ID`).
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triggers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    reference_id TEXT NOT NULL,
    window_id TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('started', 'suppressed', 'failed')),
    reason TEXT NOT NULL,
    report_path TEXT,
    mlflow_run_id TEXT,
    command TEXT,
    pid INTEGER,
    log_path TEXT,
    fired TEXT
);
CREATE INDEX IF NOT EXISTS triggers_reference ON triggers (reference_id, outcome, created);
"""


@dataclass(frozen=True)
class TriggerDecision:
    id: int
    outcome: str  # started | suppressed | failed
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
    return [sys.executable, "-m", "llmops.cli.main", *command[1:]] if command[:1] == ["llmops"] else list(command)


def db_path(state_dir: Path) -> Path:
    return state_dir / "monitor" / "triggers.db"


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit; transactions are explicit
    enable_wal(conn)
    conn.executescript(_SCHEMA)
    return conn


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
) -> TriggerDecision:
    """Record the decision for a drifted window and, if it is the first of its shift, start `command` detached
    (its output goes to a log file beside the trigger db). Returns what was decided."""
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
        else:
            outcome, reason = "started", "drift detected: " + (", ".join(fired or []) or "verdict drifted")
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
    out = {"started": 0, "suppressed": 0, "failed": 0}
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
