"""Durable rollout state, every decision, and the per-model rollout lock, in the alias audit trail's database.

Same URI as the audit trail (`settings.audit_db_uri`: sqlite locally, PostgreSQL on a cluster), so a
rollout's decisions sit next to the `champion` moves they lead to. Three tables:

- `rollouts`: one row per rollout: model, candidate, stable version, status, current step and weight, the
  frozen config and golden set, how to reach the actuator again, and its controller (pid, host, a random
  owner token, heartbeat). A dead controller is detectable: its heartbeat goes stale, and on the same host
  its pid is gone (or a zombie).
- `rollout_decisions`: append-only: time, step, weight, kind, verdict, metrics (JSON), message.
- `rollout_locks`: at most one row per model (primary key): the active rollout. Inserting it is the lock,
  so two rollouts of one model cannot run at once on either backend; it is deleted when the rollout ends.

Status changes are compare-and-set (`transition`): of a controller and a person running `llmops canary
abort` at the same moment, exactly one finishes the rollout.
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from llmops import db
from llmops.errors import LlmopsError
from serving.rollout.errors import RolloutError, RolloutLocked


class RolloutStatus(enum.StrEnum):
    """Where a rollout stands (the `rollouts.status` column). Active ones hold the model's rollout lock."""

    RUNNING = "running"
    PROMOTING = "promoting"
    ABORTING = "aborting"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    INCONCLUSIVE = "inconclusive"
    ABORTED = "aborted"


ACTIVE = (RolloutStatus.RUNNING, RolloutStatus.PROMOTING, RolloutStatus.ABORTING)
FINAL = (RolloutStatus.PROMOTED, RolloutStatus.ROLLED_BACK, RolloutStatus.INCONCLUSIVE, RolloutStatus.ABORTED)


@dataclass(frozen=True)
class Rollout:
    id: int
    model: str
    version: str
    stable_version: str | None
    status: RolloutStatus
    step_index: int  # -1 before the first step
    weight: int
    config: dict[str, Any]
    actuator: dict[str, Any]  # how to rebuild the actuator (serving.rollout.actuators.build)
    traffic_url: str | None
    probe: dict[str, Any]  # {"golden": [records], "prompts": [load generator prompts]}, frozen at start
    reason: str
    failures: int
    started: float
    updated: float
    finished: float | None
    owner_pid: int | None
    owner_host: str | None
    owner_token: str | None
    heartbeat: float | None
    actor: str

    @property
    def golden(self) -> list[dict[str, str]]:
        return list(self.probe.get("golden") or [])

    def controller_alive(self, stale_after_s: float) -> bool:
        """True when the controller's heartbeat is fresh and (on this host) its process still exists."""
        if self.status not in ACTIVE or self.heartbeat is None or self.owner_pid is None:
            return False
        if time.time() - self.heartbeat > stale_after_s:
            return False
        if self.owner_host == socket.gethostname():
            return pid_alive(self.owner_pid)
        return True

    def to_json(self, stale_after_s: float | None = None) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("owner_token", "probe")}
        out["golden_size"] = len(self.golden)
        if stale_after_s is not None:
            out["controller_alive"] = self.controller_alive(stale_after_s)
        return out


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a SIGKILLed child nobody reaped still answers kill(pid, 0))."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/status")
    try:
        for line in status.read_text().splitlines():
            if line.startswith("State:"):
                return "Z" not in line.split()[1] and "X" not in line.split()[1]
    except OSError:
        pass
    return True


metadata = sa.MetaData()
rollouts_table = sa.Table(
    "rollouts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("stable_version", sa.String(32), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("step_index", sa.Integer, nullable=False),
    sa.Column("weight", sa.Integer, nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("actuator", sa.Text, nullable=False),
    sa.Column("traffic_url", sa.Text, nullable=True),
    sa.Column("probe", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("finished", sa.Float, nullable=True),
    sa.Column("owner_pid", sa.Integer, nullable=True),
    sa.Column("owner_host", sa.String(256), nullable=True),
    sa.Column("owner_token", sa.String(64), nullable=True),
    sa.Column("heartbeat", sa.Float, nullable=True),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Index("ix_rollouts_model", "model", "id"),
)
decisions_table = sa.Table(
    "rollout_decisions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("rollout_id", sa.Integer, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("step_index", sa.Integer, nullable=False),
    sa.Column("weight", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("verdict", sa.String(16), nullable=True),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Index("ix_rollout_decisions_rollout", "rollout_id", "id"),
)
locks_table = sa.Table(
    "rollout_locks", metadata,
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("rollout_id", sa.Integer, nullable=False),
    sa.Column("acquired", sa.Float, nullable=False),
)
STORE = db.Store("rollout", metadata, what="the rollout state", setting="LLMOPS_AUDIT_DB_URI")


class RolloutStore:
    """The rollout tables on the audit trail's URL (sqlite, PostgreSQL), opened through llmops.db."""

    def __init__(self, uri: str) -> None:
        self.rollouts, self.decisions, self.locks = rollouts_table, decisions_table, locks_table
        try:
            self.engine = db.open_store(uri, STORE)
        except LlmopsError as exc:
            raise RolloutError(exc.cause, exc.fix) from None
        self.dialect = self.engine.dialect.name

    # ---- reading ---------------------------------------------------------------------------------

    def _row(self, row) -> Rollout:
        return Rollout(
            id=int(row.id), model=row.model, version=row.version, stable_version=row.stable_version,
            status=RolloutStatus(row.status), step_index=int(row.step_index), weight=int(row.weight),
            config=json.loads(row.config), actuator=json.loads(row.actuator), traffic_url=row.traffic_url,
            probe=json.loads(row.probe), reason=row.reason, failures=int(row.failures), started=row.started,
            updated=row.updated, finished=row.finished, owner_pid=row.owner_pid, owner_host=row.owner_host,
            owner_token=row.owner_token, heartbeat=row.heartbeat, actor=row.actor,
        )

    def get(self, rollout_id: int) -> Rollout:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.rollouts).where(self.rollouts.c.id == rollout_id)).first()
        if row is None:
            raise RolloutError(f"no rollout with id {rollout_id}", "`llmops canary history MODEL` lists them")
        return self._row(row)

    def active(self, model: str) -> Rollout | None:
        """The model's active rollout (the one holding its lock), or None."""
        with self.engine.connect() as conn:
            lock = conn.execute(sa.select(self.locks).where(self.locks.c.model == model)).first()
        return self.get(int(lock.rollout_id)) if lock is not None else None

    def latest(self, model: str) -> Rollout | None:
        t = self.rollouts
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.model == model).order_by(t.c.id.desc()).limit(1)).first()
        return self._row(row) if row is not None else None

    def history(self, model: str | None = None, limit: int = 50) -> list[Rollout]:
        t = self.rollouts
        q = sa.select(t)
        if model is not None:
            q = q.where(t.c.model == model)
        with self.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(q.order_by(t.c.id.desc()).limit(limit))]

    def decisions_of(self, rollout_id: int) -> list[dict[str, Any]]:
        d = self.decisions
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(d).where(d.c.rollout_id == rollout_id).order_by(d.c.id))
            return [{"id": r.id, "time": r.time, "step_index": r.step_index, "weight": r.weight, "kind": r.kind,
                     "verdict": r.verdict, "metrics": json.loads(r.metrics), "message": r.message} for r in rows]

    # ---- writing ---------------------------------------------------------------------------------

    def create(self, *, model: str, version: str, stable_version: str | None, config: dict[str, Any],
               actuator: dict[str, Any], traffic_url: str | None, probe: dict[str, Any], actor: str,
               stale_after_s: float) -> tuple[Rollout, str]:
        """Take the model's lock and record a new running rollout owned by this process; returns it and the
        owner token. RolloutLocked (naming the other rollout and whether its controller lives) when held."""
        now, token = time.time(), secrets.token_hex(16)
        try:
            with self.engine.begin() as conn:
                result = conn.execute(self.rollouts.insert().values(
                    model=model, version=str(version), stable_version=stable_version, status=RolloutStatus.RUNNING,
                    step_index=-1, weight=0, config=json.dumps(config), actuator=json.dumps(actuator),
                    traffic_url=traffic_url, probe=json.dumps(probe), reason="", failures=0, started=now,
                    updated=now, finished=None, owner_pid=os.getpid(), owner_host=socket.gethostname(),
                    owner_token=token, heartbeat=now, actor=actor))
                rollout_id = int(result.inserted_primary_key[0])
                conn.execute(self.locks.insert().values(model=model, rollout_id=rollout_id, acquired=now))
        except sa.exc.IntegrityError:
            other = self.active(model)
            if other is None:  # released between our insert and this read: say so, the caller may retry
                raise RolloutLocked(f"another rollout of {model} was starting at the same moment",
                                    "run the command again") from None
            alive = other.controller_alive(stale_after_s)
            who = f"rollout {other.id} of {model} version {other.version} is {other.status}"
            if alive:
                raise RolloutLocked(f"{who} (controller pid {other.owner_pid} on {other.owner_host} is alive)",
                                    f"wait for it, or stop it: `llmops canary abort {model}`") from None
            raise RolloutLocked(f"{who} but its controller (pid {other.owner_pid} on {other.owner_host}) is gone",
                                f"`llmops canary resume {model}` or `llmops canary abort {model}`") from None
        return self.get(rollout_id), token

    def take_over(self, rollout_id: int, old_token: str | None) -> str:
        """Become the rollout's controller if it is still owned by `old_token`; returns the new token."""
        token, t = secrets.token_hex(16), self.rollouts
        with self.engine.begin() as conn:
            cond = t.c.owner_token.is_(None) if old_token is None else t.c.owner_token == old_token
            n = conn.execute(sa.update(t).where(t.c.id == rollout_id, cond).values(
                owner_pid=os.getpid(), owner_host=socket.gethostname(), owner_token=token, heartbeat=time.time(),
                updated=time.time())).rowcount
        if n != 1:
            raise RolloutLocked(f"rollout {rollout_id} was taken over by another controller at the same moment",
                                "see `llmops canary status`")
        return token

    def heartbeat(self, rollout_id: int, token: str) -> bool:
        """Stamp liveness; False when this process no longer owns the rollout (taken over, or finished)."""
        t = self.rollouts
        with self.engine.begin() as conn:
            n = conn.execute(sa.update(t).where(t.c.id == rollout_id, t.c.owner_token == token,
                                                t.c.status.in_(ACTIVE)).values(heartbeat=time.time())).rowcount
        return n == 1

    def set_step(self, rollout_id: int, step_index: int, weight: int, failures: int | None = None) -> None:
        values: dict[str, Any] = {"step_index": step_index, "weight": weight, "updated": time.time()}
        if failures is not None:
            values["failures"] = failures
        with self.engine.begin() as conn:
            conn.execute(sa.update(self.rollouts).where(self.rollouts.c.id == rollout_id).values(**values))

    def transition(self, rollout_id: int, from_status: tuple[RolloutStatus, ...], to_status: RolloutStatus,
                   reason: str = "") -> bool:
        """Compare-and-set the status; a final status also releases the model's lock. False: lost the race."""
        t, now = self.rollouts, time.time()
        with self.engine.begin() as conn:
            values: dict[str, Any] = {"status": to_status, "updated": now}
            if reason:
                values["reason"] = reason
            if to_status in FINAL:
                values["finished"] = now
            n = conn.execute(sa.update(t).where(t.c.id == rollout_id, t.c.status.in_(from_status))
                             .values(**values)).rowcount
            if n == 1 and to_status in FINAL:
                conn.execute(sa.delete(self.locks).where(self.locks.c.rollout_id == rollout_id))
        return n == 1

    def record(self, rollout_id: int, step_index: int, weight: int, kind: str, *, verdict: str | None = None,
               metrics: dict[str, Any] | None = None, message: str = "", at: float | None = None) -> None:
        """Append one decision (every weight change, analysis, breach, promotion, abort)."""
        with self.engine.begin() as conn:
            conn.execute(self.decisions.insert().values(
                rollout_id=rollout_id, time=time.time() if at is None else at, step_index=step_index, weight=weight,
                kind=kind, verdict=verdict, metrics=json.dumps(metrics or {}, default=str), message=message))
