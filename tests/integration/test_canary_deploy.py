"""The canary_deploy step's logic on tiny models, every piece a real process (two `llmops serve`, `llmops router`):
the first version is champion without a rollout; a good second version (the champion's own weights) is promoted;
a third whose server fails every request (LLMOPS_SERVE_FAULTS, the server's test-only fault setting) is rolled
back with `champion` untouched. Each decision lands in MLflow with its chart, and no process outlives the step."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest

from components.canary_deploy.logic import canary_deploy, decision_of
from llmops.registry import Registry
from llmops.settings import Settings
from tests.registry_setup import register_checkpoint

pytestmark = pytest.mark.slow
NAME = "llmops-smollm2"
FAST = [  # two short steps on a quick load: the rollout takes seconds
    "canary.steps=[{weight: 50}, {weight: 100}]",
    "canary.step_defaults={min_duration_s: 2, min_requests: 5}",
    "canary.max_step_duration_s=40", "canary.interval_s=1", "canary.heartbeat_s=0.5",
    "canary.loadgen.rate=10", "canary.loadgen.max_tokens=6",
    "canary.quality.golden_source=data/splits/test.jsonl", "canary.quality.golden_size=4",
    "canary.quality.max_tokens=8",
    "serve.max_tokens=64",
    # The good candidate has the champion's weights, so any latency gap is this shared machine's noise in a p95
    # of a handful of requests; this test is about the step (decisions, processes, records), not the latency
    # analysis (tests/unit/test_rollout_analysis.py), so latency needs a 3 s gap to count.
    "canary.analysis.latency_p95={max_ratio: 1.5, min_delta_s: 3}",
    "canary.analysis.ttft_p95={max_ratio: 1.5, min_delta_s: 3}",
]


def _register(settings: Settings, model_dir: Path) -> str:
    return register_checkpoint(settings, model_dir, NAME)


def _closed(url: str) -> bool:
    u = urlparse(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((u.hostname, u.port)) != 0


def _step_run(settings: Settings, parent: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    exp = client.get_run(parent).info.experiment_id
    (run,) = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    return client, run


def test_decision_strings():
    assert decision_of("promoted", "all 2 steps passed") == "promoted"
    assert decision_of("rolled_back", "step 1 (50%): error_rate 1 vs 0.05") == \
        "rolled_back:step 1 (50%): error_rate 1 vs 0.05"
    assert decision_of("inconclusive", "step 1 inconclusive").startswith("rolled_back:")
    assert decision_of("aborted", "by hand") == "rolled_back:aborted: by hand"


def test_first_version_then_promoted_then_rolled_back(settings: Settings, tiny_model_dir: Path) -> None:
    import mlflow

    from llmops.tracking import configure, ensure_experiment
    from serving.rollout.controller import rollout_status

    configure(settings)
    registry = Registry(settings)
    params = settings.params(FAST)
    v1 = _register(settings, tiny_model_dir)
    registry.set_alias(NAME, "champion", v1, action="register", only_if_unset=True, reason="first version")

    def step(version: str, **kw):
        with mlflow.start_run(experiment_id=ensure_experiment(settings)) as parent:
            pass
        result = canary_deploy(settings, params, name=NAME, version=version, parent_run_id=parent.info.run_id,
                               overrides=FAST, **kw)
        return result, parent.info.run_id

    first, parent = step(v1)
    assert first["decision"] == "first_version" and first["rollout_id"] is None
    _, run = _step_run(settings, parent)
    assert run.data.tags["canary.decision"] == "first_version"

    v2 = _register(settings, tiny_model_dir)  # the champion's own weights: nothing to hold against it
    good, parent = step(v2)
    assert good["decision"] == "promoted", good["reason"]
    assert registry.alias_version(NAME, "champion") == v2 == good["champion_after"]
    move = registry.history(NAME, "champion")[-1]  # the audited alias move, as `llmops models promote` makes it
    assert (move["from_version"], move["to_version"]) == (v1, v2) and f"rollout {good['rollout_id']}" in move["reason"]
    status = rollout_status(settings, NAME, good["rollout_id"])
    assert status["status"] == "promoted" and [d["kind"] for d in status["decisions"]][-1] == "promote"
    assert _closed(status["traffic_url"])  # the router (and the servers behind it) were stopped
    client, run = _step_run(settings, parent)
    assert run.data.tags["canary.decision"] == "promoted" and run.data.tags["canary.champion_after"] == v2
    assert (run.data.tags["canary.version"], run.data.tags["canary.stable_version"]) == (v2, v1)  # summaries read these
    assert run.data.metrics["canary.weight"] == 100  # the last analysed interval ran at the 100% step
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "canary")}
    assert arts == {"canary/rollout.json", "canary/rollout.png"}
    local = Path(client.download_artifacts(run.info.run_id, "canary/rollout.png", str(settings.state_dir)))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    v3 = _register(settings, tiny_model_dir)  # same weights, but its server fails every generation
    bad, parent = step(v3, canary_env={"LLMOPS_SERVE_FAULTS": "error_rate=1.0"})
    assert bad["decision"].startswith("rolled_back:step 1 (50%)"), bad["decision"]
    assert "error_rate" in bad["decision"]
    assert registry.alias_version(NAME, "champion") == v2 == bad["champion_after"]  # champion untouched
    status = rollout_status(settings, NAME, bad["rollout_id"])
    assert status["status"] == "rolled_back" and _closed(status["traffic_url"])
    tags = registry.show(f"{NAME}/{v3}")["tags"]
    assert tags["canary.verdict"] == "rejected" and tags["canary.rejected.metric"].startswith("error_rate")
    _, run = _step_run(settings, parent)
    assert run.data.tags["canary.decision"] == bad["decision"][:5000]
    assert (run.data.tags["canary.version"], run.data.tags["canary.stable_version"]) == (v3, v2)
    assert run.data.tags["canary.champion_after"] == v2
    rollout = json.loads(Path(client.download_artifacts(run.info.run_id, "canary/rollout.json",
                                                        str(settings.state_dir / "b"))).read_text())
    assert rollout["outcome"]["breach"]["metric"].startswith("error_rate")
    assert any(e.get("kind") == "analysis" and e["analysis"]["verdict"] == "fail" for e in rollout["events"])
