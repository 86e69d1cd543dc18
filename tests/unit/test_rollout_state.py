"""Rollout state without servers, on both backends (sqlite; PostgreSQL as the slow variant): the per-model lock, a
dead controller detected by pid and by heartbeat, compare-and-set status changes, take-over, decisions in order."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from llmops.settings import Settings
from serving.rollout.errors import RolloutLocked
from serving.rollout.state import RolloutStore, pid_alive
from tests.registry_setup import backend_settings  # noqa: F401  (the `settings` fixture on sqlite and PostgreSQL)


def _create(store: RolloutStore, model: str, version: str = "2"):
    return store.create(model=model, version=version, stable_version="1", config={"steps": []},
                        actuator={"kind": "local", "router_url": "http://127.0.0.1:1"}, traffic_url=None,
                        probe={"golden": [{"id": "a", "prompt": "p", "reference": "r"}], "prompts": ["p"]},
                        actor="test", stale_after_s=20)


def test_two_rollouts_of_one_model_are_refused_other_models_are_not(settings: Settings) -> None:
    store, m = RolloutStore(settings.audit_db_uri), f"m-{uuid.uuid4().hex[:8]}"
    first, _ = _create(store, m)
    with pytest.raises(RolloutLocked) as exc:
        _create(RolloutStore(settings.audit_db_uri), m, version="3")  # another process's view of the same db
    assert "alive" in exc.value.cause and "abort" in exc.value.fix
    other, _ = _create(store, m + "-other")
    assert other.id != first.id and store.active(m).id == first.id
    # the end of a rollout releases the lock
    assert store.transition(first.id, ("running",), "rolled_back", "test")
    assert not store.transition(first.id, ("running",), "aborted")  # compare-and-set: lost, nothing changes
    assert store.get(first.id).status == "rolled_back" and store.active(m) is None
    again, _ = _create(store, m, version="3")
    assert again.status == "running" and again.golden[0]["id"] == "a"


def test_a_dead_controller_is_detected_by_pid_and_by_heartbeat(settings: Settings) -> None:
    store, m = RolloutStore(settings.audit_db_uri), f"m-{uuid.uuid4().hex[:8]}"
    r, token = _create(store, m)
    assert r.controller_alive(20)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with store.engine.begin() as conn:  # the rollout as a controller in that child would have left it
            conn.execute(store.rollouts.update().where(store.rollouts.c.id == r.id).values(owner_pid=child.pid))
        assert store.get(r.id).controller_alive(20)
        child.kill()
        deadline = time.time() + 5
        while pid_alive(child.pid) and time.time() < deadline:  # unreaped: a zombie still answers kill(pid, 0)
            time.sleep(0.05)
        assert not store.get(r.id).controller_alive(20), "a SIGKILLed (zombie) controller must read as dead"
    finally:
        child.wait()
    assert not store.get(r.id).controller_alive(20)
    with store.engine.begin() as conn:  # our own live pid, but silent for longer than stale_after_s
        conn.execute(store.rollouts.update().where(store.rollouts.c.id == r.id)
                     .values(owner_pid=os.getpid(), heartbeat=time.time() - 60))
    stale = store.get(r.id)
    assert not stale.controller_alive(20)
    with pytest.raises(RolloutLocked) as exc:
        _create(store, m, version="3")
    assert "gone" in exc.value.cause and "resume" in exc.value.fix
    new = store.take_over(r.id, stale.owner_token)
    assert not store.heartbeat(r.id, token), "the old owner lost the rollout"
    assert store.heartbeat(r.id, new) and store.get(r.id).controller_alive(20)
    with pytest.raises(RolloutLocked):
        store.take_over(r.id, stale.owner_token)  # a second resumer racing the first loses


def test_decisions_are_appended_in_order(settings: Settings) -> None:
    store = RolloutStore(settings.audit_db_uri)
    r, _ = _create(store, f"m-{uuid.uuid4().hex[:8]}")
    store.record(r.id, 0, 25, "weight", message="canary weight 25%")
    store.record(r.id, 0, 25, "analysis", verdict="fail", metrics={"metrics": [{"name": "error_rate", "value": 0.5}]})
    got = store.decisions_of(r.id)
    assert [d["kind"] for d in got] == ["weight", "analysis"]
    assert got[1]["metrics"]["metrics"][0]["value"] == 0.5 and got[1]["verdict"] == "fail"


def test_abort_with_the_router_gone_needs_force_and_says_so(settings: Settings, monkeypatch) -> None:
    from serving.rollout.controller import abort_rollout, rollout_status
    from serving.rollout.errors import RolloutError
    from tests.registry_setup import registry_with_versions
    from tests.serve_process import free_port

    name = f"m-{uuid.uuid4().hex[:8]}"
    registry_with_versions(settings, 2, name)
    monkeypatch.setenv("LLMOPS_ROUTER_ADMIN_TOKEN", "t")
    store = RolloutStore(settings.audit_db_uri)
    store.create(model=name, version="2", stable_version="1", config={"steps": [], "params": settings.params()
                                                                       .canary.model_dump(mode="json")},
                 actuator={"kind": "local", "router_url": f"http://127.0.0.1:{free_port()}"}, traffic_url=None,
                 probe={}, actor="test", stale_after_s=20)
    with pytest.raises(RolloutError) as exc:
        abort_rollout(settings, name, reason="router died too")
    assert "--force" in exc.value.fix and store.active(name) is not None  # nothing recorded as done
    out = abort_rollout(settings, name, reason="router died too", force=True)
    assert out.status == "aborted" and "forced" in out.reason and store.active(name) is None
    assert rollout_status(settings, name)["status"] == "aborted"
