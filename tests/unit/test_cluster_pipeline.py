"""The cluster profile's compiled pipeline: what kfp.local ignores (pod resources, GPUs, scheduling, env from
ConfigMap/Secrets, retries, caching) is in the YAML exactly as params.yaml's `cluster:` says, and
`llmops run finetune --profile cluster --host URL` really submits it over HTTP with `kfp.Client`.

No KFP API server can run here: the submission goes to a small HTTP server on 127.0.0.1 that speaks the
part of KFP's v2beta1 REST API the client uses (healthz, experiments, runs) and records every request.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app
from llmops.errors import LlmopsError
from llmops.settings import Settings
from pipelines._resources import step_settings
from pipelines.runner import compile_finetune, compiled_path

STEPS = ("start_run", "validate_data", "train", "evaluate", "register", "compile_engine", "finish_run",
         "stage_checkpoint", "compile_trtllm", "attach_trtllm")
GIB = 2**30 / 1e9  # KFP writes memory in GB (10^9 bytes)


def _docs(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the DAG (nested groups too) by its component's step name."""
    out: dict[str, dict] = {}

    def walk(dag: dict) -> None:
        for task in dag.get("tasks", {}).values():
            name = task["componentRef"]["name"].removeprefix("comp-").replace("-", "_")
            if name in STEPS:
                out[name] = task
            elif "dag" in spec["components"][task["componentRef"]["name"]]:  # a condition/exit-handler group
                walk(spec["components"][task["componentRef"]["name"]]["dag"])

    walk(spec["root"]["dag"])
    return out


def _gib(text: str) -> float:
    assert text.endswith("Gi"), text
    return float(text[:-2]) * GIB


def test_cluster_yaml_loads_and_carries_every_setting_from_params(settings: Settings) -> None:
    from kfp.components import load_component_from_file

    path = compiled_path("cluster")
    assert load_component_from_file(str(path)).name == "llmops-finetune"
    cluster = settings.params().cluster
    spec, executors = _docs(path)
    tasks = _tasks(spec)
    assert set(tasks) == set(STEPS)
    for step in STEPS:
        want = step_settings(cluster, step)
        res = spec["deploymentSpec"]["executors"][f"exec-{step.replace('_', '-')}"]["container"]["resources"]
        assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == (want.cpu, want.cpu_limit), step
        assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == (want.memory, want.memory_limit), step
        assert res["memoryLimit"] == pytest.approx(_gib(want.memory_limit)), step
        if want.gpus:
            assert res["accelerator"]["resourceType"] == want.accelerator, step
            assert int(res["accelerator"]["resourceCount"]) == want.gpus, step
        else:
            assert "accelerator" not in res, step
        k8s = executors[f"exec-{step.replace('_', '-')}"]
        assert k8s.get("nodeSelector", {}).get("labels", {}) == want.node_selector, step
        assert k8s.get("tolerations", []) == [t.model_dump(exclude_none=True) for t in want.tolerations], step
        assert [(c["configMapName"], [e["envVar"] for e in c["keyToEnv"]]) for c in k8s["configMapAsEnv"]] == \
            [(cluster.config_map.name, cluster.config_map.keys)]
        assert [(s["secretName"], {e["envVar"]: e["secretKey"] for e in s["keyToEnv"]}) for s in k8s["secretAsEnv"]] \
            == [(s.name, s.env) for s in cluster.secrets]
        retry = tasks[step].get("retryPolicy")
        if want.retries:
            assert (retry["maxRetryCount"], retry["backoffDuration"]) == (want.retries, cluster.retry_backoff), step
        else:
            assert retry is None, step
        assert tasks[step]["cachingOptions"].get("enableCache", False) is want.caching, step
    # The GPU step really asks for one, and no secret value is inlined anywhere.
    assert step_settings(cluster, "train").gpus >= 1
    assert "secretKeyRef" not in path.read_text() and "password:" not in path.read_text().lower()


def test_a_changed_param_changes_the_compiled_yaml(settings: Settings, tmp_path: Path) -> None:
    params = settings.params(["cluster.steps.train.gpus=4", "cluster.steps.train.memory=48Gi",
                              "cluster.steps.evaluate.retries=3", "cluster.retry_backoff=300s",
                              "cluster.steps.default.caching=true"])
    out = compile_finetune(tmp_path / "f.yaml", cluster=params.cluster)
    spec, _ = _docs(out)
    res = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert (res["accelerator"]["resourceCount"], res["resourceMemoryRequest"]) == ("4", "48Gi")
    tasks = _tasks(spec)
    assert (tasks["evaluate"]["retryPolicy"]["maxRetryCount"], tasks["evaluate"]["retryPolicy"]["backoffDuration"]) \
        == (3, "300s")
    assert tasks["start_run"]["cachingOptions"] == {"enableCache": True}
    assert out.read_text() != compiled_path("cluster").read_text()


def test_local_yaml_carries_none_of_it_and_the_cluster_yaml_is_current() -> None:
    spec = yaml.safe_load(compiled_path("local").read_text())  # one document: no kubernetes platform spec
    assert all("resources" not in e["container"] for e in spec["deploymentSpec"]["executors"].values())
    assert all("retryPolicy" not in t for t in _tasks(spec).values())
    # (the local one's currency is test_cli_and_repo's; this is the cluster one's)
    result = CliRunner().invoke(app, ["pipeline", "compile", "--profile", "cluster", "--check"])
    assert result.exit_code == 0, result.output


def test_a_step_name_typo_or_gpu_without_type_is_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    cluster = settings.params().cluster
    typo = cluster.model_copy(update={"steps": {**cluster.steps, "trian": cluster.steps["train"]}})
    with pytest.raises(LlmopsError, match="trian"):
        compile_finetune(tmp_path / "a.yaml", cluster=typo)
    no_type = settings.params(["cluster.steps.train.accelerator=null"]).cluster
    with pytest.raises(LlmopsError, match="names no accelerator"):
        compile_finetune(tmp_path / "b.yaml", cluster=no_type)


class _FakeKfpApi(BaseHTTPRequestHandler):
    """The KFP v2beta1 endpoints kfp.Client calls to submit a run; every request is recorded."""

    requests: ClassVar[list[tuple[str, str, dict | None]]] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            self._reply({"multi_user": False, "pipeline_store": "database"})
        elif self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": [], "total_size": 0})  # none yet: the client creates one
        else:
            self._reply({})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.requests.append(("POST", self.path, body))
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        elif self.path.startswith("/apis/v2beta1/runs"):
            self._reply({"run_id": "run-123", "display_name": body.get("display_name"), "state": "PENDING",
                         "experiment_id": body.get("experiment_id")})
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture
def kfp_api():
    _FakeKfpApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _FakeKfpApi.requests
    finally:
        server.shutdown()
        server.server_close()


def test_run_finetune_cluster_submits_the_cluster_pipeline_over_http(settings: Settings, kfp_api, monkeypatch) -> None:
    host, requests = kfp_api
    monkeypatch.setenv("LLMOPS_KFP_HOST", "http://unused.invalid")  # --host overrides it
    result = CliRunner().invoke(app, ["run", "finetune", "--profile", "cluster", "--host", host, "--json",
                                      "--set", "cluster.steps.train.gpus=2", "--set", "train.max_steps=7"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out == {"run_id": "run-123", "host": host, "url": f"{host}/#/runs/details/run-123"}
    posts = {path.split("?")[0]: body for method, path, body in requests if method == "POST"}
    run = posts["/apis/v2beta1/runs"]
    assert run["experiment_id"] == "exp-1"
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "llmops-finetune"
    assert run["runtime_config"]["parameters"]["overrides"] == ["cluster.steps.train.gpus=2", "train.max_steps=7"]
    # The body holds our pipeline spec, compiled with the cluster settings and the --set override.
    # (with a platform spec, kfp sends {"pipeline_spec": ..., "platform_spec": ...} as the run's pipeline_spec)
    spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "llmops-finetune"
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert train["accelerator"]["resourceCount"] == "2"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert k8s["tolerations"] and k8s["secretAsEnv"]
    # The client's calls, in order: the API's health, the experiment (looked up, then created), the run.
    assert [(m, p.split("?")[0]) for m, p, _ in requests] == [
        ("GET", "/apis/v2beta1/healthz"), ("GET", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/experiments"), ("POST", "/apis/v2beta1/runs")]


def test_cluster_submit_without_a_reachable_server_is_one_clear_line(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["run", "finetune", "--profile", "cluster", "--host", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "could not submit to the KFP API at http://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output
