"""Durable retraining (and monitoring) schedules: a KFP recurring run on a cluster, APScheduler locally.

Locally the schedules live in an APScheduler `SQLAlchemyJobStore` on the database of `settings.schedules_db_uri`
(default SQLite, `<state>/schedules.db`; PostgreSQL works too), opened through llmops/db.py together with our
own table of runs, so they survive restarts and any process can manage them; `llmops schedule daemon` is the one
process that runs them.
APScheduler rather than the system's cron: it needs no crontab access (containers, CI, laptops without cron),
keeps pause/resume state and next-run times in the same store `schedule list` reads, coalesces runs missed while
the daemon was down into one (misfire grace), and never runs two instances of one schedule at once.

Another process's changes (create/pause/delete) reach a running daemon through the shared store: the daemon
wakes every `WAKE_S` seconds to re-read it (APScheduler 3 otherwise sleeps until its next known run time).

Cron expressions: standard 5 fields (minute hour day month weekday), or 6 with seconds first (KFP's format).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from llmops import db
from llmops.errors import LlmopsError

WAKE_S = 5.0
FIRE_FUNC = "monitoring.schedules:fire"
metadata = sa.MetaData()
runs_table = sa.Table(
    "llmops_schedule_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("schedule_id", sa.Text, nullable=False),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("finished", sa.Float, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("log_path", sa.Text, nullable=True),
    sqlite_autoincrement=True,
)
STORE = db.Store("schedule_runs", metadata, what="the schedule store", setting="LLMOPS_SCHEDULES_DB_URI")
_daemon_url: str | None = None  # the store `run_daemon` serves: `fire` records runs there


def store_path(state_dir: Path) -> Path:
    return state_dir / "schedules.db"


def db_url(state_dir: Path, url: str | None = None) -> str:
    """The schedule store: `url` when given (settings.schedules_db_uri), else the SQLite file in the state dir."""
    return url or db.sqlite_url(store_path(state_dir))


@functools.lru_cache(maxsize=16)
def _engine(url: str) -> sa.Engine:
    """One migrated engine per URL and process, shared by APScheduler's job store and the runs table."""
    return db.open_store(url, STORE)


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
def _store(state_dir: Path, url: str | None) -> Iterator[Any]:
    """A paused scheduler on the job store: jobs can be read and changed, nothing runs (the daemon runs them)."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    state_dir.mkdir(parents=True, exist_ok=True)
    sched = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(engine=_engine(db_url(state_dir, url)))})
    sched.start(paused=True)
    try:
        yield sched
    finally:
        sched.shutdown(wait=False)


def create_local(state_dir: Path, kind: str, cron: str, command: list[str], cwd: Path,
                 name: str | None = None, url: str | None = None) -> dict[str, Any]:
    """Add a schedule that runs `command` (in `cwd`) on `cron`; returns its description."""
    from apscheduler.triggers.cron import CronTrigger

    fields = parse_cron(cron)
    schedule_id = f"{kind}-{uuid.uuid4().hex[:8]}"
    with _store(state_dir, url) as sched:
        job = sched.add_job(
            FIRE_FUNC, CronTrigger(**fields), id=schedule_id, name=name or f"{kind} ({cron})",
            kwargs={"schedule_id": schedule_id, "command": command, "cwd": str(cwd), "state_dir": str(state_dir),
                    "cron": cron, "kind": kind},
            coalesce=True, max_instances=1, misfire_grace_time=3600, replace_existing=False)
        return _describe(job, state_dir, url)


def list_local(state_dir: Path, url: str | None = None) -> list[dict[str, Any]]:
    if not db.exists(db_url(state_dir, url)):
        return []
    with _store(state_dir, url) as sched:
        return [_describe(j, state_dir, url) for j in sched.get_jobs()]


def _job(sched: Any, schedule_id: str) -> Any:
    job = sched.get_job(schedule_id)
    if job is None:
        raise LlmopsError(f"no schedule {schedule_id!r}", "list them with `llmops schedule list`")
    return job


def pause_local(state_dir: Path, schedule_id: str, url: str | None = None) -> dict[str, Any]:
    with _store(state_dir, url) as sched:
        _job(sched, schedule_id)
        return _describe(sched.pause_job(schedule_id), state_dir, url)


def resume_local(state_dir: Path, schedule_id: str, url: str | None = None) -> dict[str, Any]:
    with _store(state_dir, url) as sched:
        _job(sched, schedule_id)
        return _describe(sched.resume_job(schedule_id), state_dir, url)


def delete_local(state_dir: Path, schedule_id: str, url: str | None = None) -> dict[str, Any]:
    with _store(state_dir, url) as sched:
        out = _describe(_job(sched, schedule_id), state_dir, url)
        sched.remove_job(schedule_id)
        return out | {"deleted": True}


def _describe(job: Any, state_dir: Path, url: str | None) -> dict[str, Any]:
    kw = job.kwargs
    runs = runs_of(state_dir, job.id, limit=1, url=url)
    return {"id": job.id, "name": job.name, "kind": kw.get("kind"), "cron": kw.get("cron"),
            "command": kw.get("command"), "paused": job.next_run_time is None,
            "next_run": job.next_run_time.isoformat() if job.next_run_time else None,
            "last_run": runs[0] if runs else None, "where": "local"}


# --- runs -------------------------------------------------------------------------------------------------------

def runs_of(state_dir: Path, schedule_id: str | None = None, limit: int = 20,
            url: str | None = None) -> list[dict[str, Any]]:
    url = db_url(state_dir, url)
    if not db.exists(url):
        return []
    r = runs_table
    query = sa.select(r).order_by(r.c.id.desc()).limit(limit)
    if schedule_id:
        query = query.where(r.c.schedule_id == schedule_id)
    with _engine(url).connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def fire(schedule_id: str, command: list[str], cwd: str, state_dir: str, **_: Any) -> int:
    """What the daemon calls on schedule: run the command to completion, its output in a log file, and record
    the run (start, end, exit code) so `llmops schedule list` shows it."""
    sdir = Path(state_dir)
    log_dir = sdir / "schedules" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log_path = log_dir / f"{schedule_id}-{datetime.fromtimestamp(started).strftime('%Y%m%dT%H%M%S')}.log"
    engine, r = _engine(db_url(sdir, _daemon_url)), runs_table
    with engine.begin() as conn:
        run_id = conn.execute(r.insert().values(schedule_id=schedule_id, started=started,
                                                log_path=str(log_path))).inserted_primary_key[0]
    with open(log_path, "ab") as log:
        try:
            code = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "LLMOPS_SCHEDULE_ID": schedule_id}).returncode
        except OSError as exc:
            log.write(f"could not start {command!r}: {exc}\n".encode())
            code = 127
    with engine.begin() as conn:
        conn.execute(r.update().where(r.c.id == run_id).values(finished=time.time(), exit_code=code))
    return code


def run_daemon(state_dir: Path, wake_s: float = WAKE_S, url: str | None = None) -> None:
    """Run every schedule in the store until SIGTERM/SIGINT (`llmops schedule daemon`)."""
    global _daemon_url
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.blocking import BlockingScheduler

    state_dir.mkdir(parents=True, exist_ok=True)
    _daemon_url = url
    sched = BlockingScheduler(jobstores={
        "default": SQLAlchemyJobStore(engine=_engine(db_url(state_dir, url))),
        "internal": MemoryJobStore()})
    # Re-read the shared store now and then: schedules created or paused by other processes take effect.
    sched.add_job(sched.wakeup, "interval", seconds=wake_s, id="llmops-wakeup", jobstore="internal")

    def stop(*_: Any) -> None:
        sched.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"llmops schedule daemon: pid {os.getpid()}, store {db.redact(db_url(state_dir, url))}",
          file=sys.stderr, flush=True)
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
