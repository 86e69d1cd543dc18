"""`llmops canary promote` by hand on a real router process (no model servers needed: admin routes only): the
remaining steps are skipped, `champion` moves through the audited promotion with the reason, and the router's
canary becomes its stable side; `llmops canary status --watch` follows the rollout until it ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import httpx2 as httpx
import pytest
from typer.testing import CliRunner

from llmops.registry import Registry
from llmops.settings import Settings
from serving.rollout.actuators.local import LocalRouterActuator
from serving.rollout.config import resolve
from serving.rollout.state import RolloutStore
from tests.registry_setup import registry_with_versions
from tests.serve_process import REPO, free_port

pytestmark = pytest.mark.slow
# params.yaml's canary rate and golden size are `auto` (calibrated when a rollout starts); a rollout record
# written by hand takes concrete values
CALIBRATED = ["canary.loadgen.rate=1.5", "canary.quality.golden_size=8"]


def _json_docs(path) -> list[dict]:
    """The JSON documents `status --watch --json` printed so far (one per refresh)."""
    text, docs, at = path.read_text(), [], 0
    decoder = json.JSONDecoder()
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return docs
        try:
            doc, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:  # a document still being written
            return docs
        docs.append(doc)


def test_promote_by_hand_skips_the_remaining_steps_audited(settings: Settings, monkeypatch) -> None:
    from cli.main import app

    name, token = f"m-{uuid.uuid4().hex[:8]}", "t0ken"
    monkeypatch.setenv("LLMOPS_ROUTER_ADMIN_TOKEN", token)
    reg = registry_with_versions(settings, 2, name)
    reg.promote(name, "1", reason="first")
    port, stable, canary = free_port(), f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "router", "--stable", stable, "--port",
                             str(port)], cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    watcher: subprocess.Popen | None = None
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        act = LocalRouterActuator(url, token, canary_url=canary)
        act.attach_canary(canary)
        act.set_canary_weight(25)
        store = RolloutStore(settings.audit_db_uri)
        r, _ = store.create(model=name, version="2", stable_version="1",
                            config=resolve(settings.params(CALIBRATED).canary).to_json(), actuator=act.spec(),
                            traffic_url=url, probe={}, actor="test", stale_after_s=20)
        store.set_step(r.id, 0, 25)
        # `status --watch` (its own process) follows the rollout until it ends: running first, promoted last
        watch_out = settings.state_dir / "watch.json"
        with open(watch_out, "wb") as fh:
            watcher = subprocess.Popen([sys.executable, "-m", "cli.main", "canary", "status", name, "--watch",
                                        "--json"], cwd=REPO, env=dict(os.environ), stdout=fh,
                                       stderr=subprocess.STDOUT)
        for _ in range(300):
            if _json_docs(watch_out):
                break
            assert watcher.poll() is None, watch_out.read_text()
            time.sleep(0.1)
        result = CliRunner().invoke(app, ["canary", "promote", name, "--reason", "urgent fix", "--json"])
        assert result.exit_code == 0, result.output
        assert Registry(settings).alias_version(name, "champion") == "2"
        last = reg.history(name, "champion")[-1]
        assert (last["from_version"], last["to_version"]) == ("1", "2")
        steps = len(settings.params().canary.steps)
        assert f"promoted by hand at step 1/{steps} (remaining steps skipped): urgent fix" in last["reason"]
        state = act.state()
        assert state["stable"]["url"] == canary and state["canary"] is None and state["canary_percent"] == 0
        assert store.get(r.id).status == "promoted" and store.active(name) is None
        assert watcher.wait(30) == 0, watch_out.read_text()
        seen = [d["status"] for d in _json_docs(watch_out)]
        assert seen[0] == "running" and seen[-1] == "promoted", seen
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        proc.terminate()
        proc.wait(15)
