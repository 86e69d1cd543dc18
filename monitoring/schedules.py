"""Durable retraining (and monitoring) schedules: a KFP recurring run on a cluster, APScheduler locally.

Locally the schedules live in an APScheduler `SQLAlchemyJobStore` (SQLite, `<state>/schedules.db`), so they
survive restarts and any process can manage them; `llmops schedule daemon` is the one process that runs them.
APScheduler rather than the system's cron: it needs no crontab access (containers, CI, laptops without cron),
keeps pause/resume state and next-run times in the same store `schedule list` reads, coalesces runs missed while
the daemon was down into one (misfire grace), and never runs two instances of one schedule at once.

Another process's changes (create/pause/delete) reach a running daemon through the shared store: the daemon
wakes every `WAKE_S` seconds to re-read it (APScheduler 3 otherwise sleeps until its next known run time).

Cron expressions: standard 5 fields (minute hour day month weekday), or 6 with seconds first (KFP's format).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from llmops.errors import LlmopsError

WAKE_S = 5.0
FIRE_FUNC = "monitoring.schedules:fire"
_RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS llmops_schedule_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule_id TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    exit_code INTEGER,
    log_path TEXT
);
"""


def store_path(state_dir: Path) -> Path:
    return state_dir / "schedules.db"


def parse_cron(expr: str) -> dict[str, str]:
    """CronTrigger fields from 5 (minute first) or 6 (second first) space-separated fields."""
    fields = expr.split()
    names = ["minute", "hour", "day", "month", "day_of_week"]
    if len(fields) == 6:
        names = ["second", *names]
    elif len(fields) != 5:
        raise LlmopsError(f"cron expression {expr!r} has {len(fields)} fields",
                          "give 5 fields (minute hour day month weekday, e.g. '0 3 * * 1') or 6 with seconds first")
    from apscheduler.triggers.cron import CronTrigger

    out = dict(zip(names, fields, strict=True))
    out["day_of_week"] = _crontab_weekdays(out["day_of_week"])
    try:
        CronTrigger(**out)
    except ValueError as exc:
        raise LlmopsError(f"bad cron expression {expr!r}: {exc}", "see `man 5 crontab` for the field syntax") from None
    return out


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_weekdays(field: str) -> str:
    """Crontab (and KFP) number weekdays from Sunday = 0 (7 too); APScheduler 3 from Monday = 0. Numeric parts
    (n, a-b, a-b/s, */s) become day names so "1" means Monday as in crontab; names pass through."""
    if not any(c.isdigit() for c in field):
        return field
    out: list[str] = []
    for part in field.split(","):
        body, _, step = part.partition("/")
        if body == "*":
            lo, hi = 0, 6
        elif "-" in body and body.replace("-", "").isdigit():
            lo, hi = (int(x) for x in body.split("-", 1))
        elif body.isdigit():
            lo = hi = int(body)
            if step:
                hi = 6
        else:
            out.append(part)  # names (mon-fri) mean the same in both
            continue
        if not (0 <= lo <= 7 and 0 <= hi <= 7 and lo <= hi):
            raise LlmopsError(f"bad cron weekday {part!r}", "weekdays are 0-7 (0 and 7 are Sunday) or sun..sat")
        out += [_DAYS[d % 7] for d in range(lo, hi + 1, int(step) if step else 1)]
    return ",".join(dict.fromkeys(out))


def kfp_cron(expr: str) -> str:
    """KFP's cron format has seconds first: a 5-field expression runs at second 0."""
    parse_cron(expr)
    fields = expr.split()
    return " ".join(["0", *fields] if len(fields) == 5 else fields)


# --- local store ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _store(state_dir: Path) -> Iterator[Any]:
    """A paused scheduler on the job store: jobs can be read and changed, nothing runs (the daemon runs them)."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    state_dir.mkdir(parents=True, exist_ok=True)
    sched = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{store_path(state_dir)}")})
    sched.start(paused=True)
    try:
        yield sched
    finally:
        sched.shutdown(wait=False)


def create_local(state_dir: Path, kind: str, cron: str, command: list[str], cwd: Path,
                 name: str | None = None) -> dict[str, Any]:
    """Add a schedule that runs `command` (in `cwd`) on `cron`; returns its description."""
    from apscheduler.triggers.cron import CronTrigger

    fields = parse_cron(cron)
    schedule_id = f"{kind}-{uuid.uuid4().hex[:8]}"
    with _store(state_dir) as sched:
        job = sched.add_job(
            FIRE_FUNC, CronTrigger(**fields), id=schedule_id, name=name or f"{kind} ({cron})",
            kwargs={"schedule_id": schedule_id, "command": command, "cwd": str(cwd), "state_dir": str(state_dir),
                    "cron": cron, "kind": kind},
            coalesce=True, max_instances=1, misfire_grace_time=3600, replace_existing=False)
        return _describe(job, state_dir)


def list_local(state_dir: Path) -> list[dict[str, Any]]:
    if not store_path(state_dir).is_file():
        return []
    with _store(state_dir) as sched:
        return [_describe(j, state_dir) for j in sched.get_jobs()]


def _job(sched: Any, schedule_id: str) -> Any:
    job = sched.get_job(schedule_id)
    if job is None:
        raise LlmopsError(f"no schedule {schedule_id!r}", "list them with `llmops schedule list`")
    return job


def pause_local(state_dir: Path, schedule_id: str) -> dict[str, Any]:
    with _store(state_dir) as sched:
        _job(sched, schedule_id)
        return _describe(sched.pause_job(schedule_id), state_dir)


def resume_local(state_dir: Path, schedule_id: str) -> dict[str, Any]:
    with _store(state_dir) as sched:
        _job(sched, schedule_id)
        return _describe(sched.resume_job(schedule_id), state_dir)


def delete_local(state_dir: Path, schedule_id: str) -> dict[str, Any]:
    with _store(state_dir) as sched:
        out = _describe(_job(sched, schedule_id), state_dir)
        sched.remove_job(schedule_id)
        return out | {"deleted": True}


def _describe(job: Any, state_dir: Path) -> dict[str, Any]:
    kw = job.kwargs
    runs = runs_of(state_dir, job.id, limit=1)
    return {"id": job.id, "name": job.name, "kind": kw.get("kind"), "cron": kw.get("cron"),
            "command": kw.get("command"), "paused": job.next_run_time is None,
            "next_run": job.next_run_time.isoformat() if job.next_run_time else None,
            "last_run": runs[0] if runs else None, "where": "local"}


# --- runs -------------------------------------------------------------------------------------------------------

def _runs_db(state_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(store_path(state_dir), timeout=30, isolation_level=None)
    conn.executescript(_RUNS_SCHEMA)
    return conn


def runs_of(state_dir: Path, schedule_id: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    if not store_path(state_dir).is_file():
        return []
    conn = _runs_db(state_dir)
    try:
        conn.row_factory = sqlite3.Row
        where, args = ("WHERE schedule_id=?", [schedule_id]) if schedule_id else ("", [])
        rows = conn.execute(f"SELECT * FROM llmops_schedule_runs {where} ORDER BY id DESC LIMIT ?",
                            [*args, limit]).fetchall()
        return [dict(r) for r in rows]
    finally:
        conn.close()


def fire(schedule_id: str, command: list[str], cwd: str, state_dir: str, **_: Any) -> int:
    """What the daemon calls on schedule: run the command to completion, its output in a log file, and record
    the run (start, end, exit code) so `llmops schedule list` shows it."""
    sdir = Path(state_dir)
    log_dir = sdir / "schedules" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log_path = log_dir / f"{schedule_id}-{datetime.fromtimestamp(started).strftime('%Y%m%dT%H%M%S')}.log"
    conn = _runs_db(sdir)
    try:
        run_id = conn.execute("INSERT INTO llmops_schedule_runs (schedule_id, started, log_path) VALUES (?, ?, ?)",
                              (schedule_id, started, str(log_path))).lastrowid
    finally:
        conn.close()
    with open(log_path, "ab") as log:
        try:
            code = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "LLMOPS_SCHEDULE_ID": schedule_id}).returncode
        except OSError as exc:
            log.write(f"could not start {command!r}: {exc}\n".encode())
            code = 127
    conn = _runs_db(sdir)
    try:
        conn.execute("UPDATE llmops_schedule_runs SET finished=?, exit_code=? WHERE id=?", (time.time(), code, run_id))
    finally:
        conn.close()
    return code


def run_daemon(state_dir: Path, wake_s: float = WAKE_S) -> None:
    """Run every schedule in the store until SIGTERM/SIGINT (`llmops schedule daemon`)."""
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.blocking import BlockingScheduler

    state_dir.mkdir(parents=True, exist_ok=True)
    sched = BlockingScheduler(jobstores={
        "default": SQLAlchemyJobStore(url=f"sqlite:///{store_path(state_dir)}"),
        "internal": MemoryJobStore()})
    # Re-read the shared store now and then: schedules created or paused by other processes take effect.
    sched.add_job(sched.wakeup, "interval", seconds=wake_s, id="llmops-wakeup", jobstore="internal")

    def stop(*_: Any) -> None:
        sched.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"llmops schedule daemon: pid {os.getpid()}, store {store_path(state_dir)}", file=sys.stderr, flush=True)
    sched.start()


# --- cluster (KFP recurring runs) ------------------------------------------------------------------------------

def _kfp_client(host: str) -> Any:
    import kfp

    with contextlib.redirect_stdout(sys.stderr):
        return kfp.Client(host=host)


def _kfp_call(host: str, what: str, fn: Any) -> Any:
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return fn(_kfp_client(host))
    except LlmopsError:
        raise
    except Exception as exc:  # kfp_server_api.ApiException, connection errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LlmopsError(f"could not {what} at the KFP API {host}: {first[:300]}",
                          "check --host / LLMOPS_KFP_HOST and that the KFP API server is reachable") from exc


def create_cluster(host: str, package: Path, pipeline_name: str, cron: str, arguments: dict[str, Any],
                   name: str | None = None) -> dict[str, Any]:
    """A KFP recurring run of the compiled `package` (one at a time, no catch-up of missed runs)."""
    expr = kfp_cron(cron)

    def go(client: Any) -> dict[str, Any]:
        exp = client.create_experiment(pipeline_name)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=name or f"{pipeline_name} ({cron})",
            cron_expression=expr, max_concurrency=1, no_catchup=True,
            pipeline_package_path=str(package), params=arguments, enable_caching=None)
        return {"id": job.recurring_run_id, "name": job.display_name, "cron": expr, "where": "cluster",
                "host": host, "url": f"{host}/#/recurringrun/details/{job.recurring_run_id}"}

    return _kfp_call(host, "create a recurring run", go)


def list_cluster(host: str) -> list[dict[str, Any]]:
    def go(client: Any) -> list[dict[str, Any]]:
        resp = client.list_recurring_runs(page_size=100)
        out = []
        for r in resp.recurring_runs or []:
            cron = getattr(getattr(r.trigger, "cron_schedule", None), "cron", None) if r.trigger else None
            out.append({"id": r.recurring_run_id, "name": r.display_name, "cron": cron,
                        "paused": str(r.status).upper().endswith("DISABLED"), "where": "cluster"})
        return out

    return _kfp_call(host, "list recurring runs", go)


def set_cluster(host: str, schedule_id: str, action: str) -> dict[str, Any]:
    """pause | resume | delete a recurring run."""
    method = {"pause": "disable_recurring_run", "resume": "enable_recurring_run",
              "delete": "delete_recurring_run"}[action]
    _kfp_call(host, f"{action} recurring run {schedule_id}", lambda c: getattr(c, method)(schedule_id))
    return {"id": schedule_id, "action": action, "where": "cluster", "host": host}


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
