"""The KServe actuator on the exact requests it sends (no cluster here).

Kubernetes: the official client is pointed at a local HTTP server that records every request (method, path,
content type, auth, JSON body), applies merge patches with RFC 7386 semantics to the InferenceService from
infra/k8s/base/kserve.yaml, honours resourceVersion (409 on a stale one) and validates every patched object
against the vendored KServe CRD schema (unknown fields rejected). Knative's part (a new revision becoming ready)
is played by the test, explicitly, between requests.

Prometheus: a real Prometheus scrapes two real `serving.metrics.Metrics` registries labelled as two revisions
(what the ServiceMonitor's relabelling produces); the actuator's PromQL runs against it.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.rollout.actuators.base import Actuator
from serving.rollout.actuators.kserve import TAG_ROUTING, KServeActuator, _revisions
from serving.rollout.errors import RolloutError
from serving.rollout.prometheus import PrometheusClient, parse_vector, side_queries
from tests.infra.manifests import validate_custom

REPO = Path(__file__).resolve().parents[2]
PATH = "/apis/serving.kserve.io/v1beta1/namespaces/llmops/inferenceservices/llmops-server"
REV1, REV2 = "llmops-server-predictor-00001", "llmops-server-predictor-00002"
DOMAIN = "llmops.example.com"
SERVICES = "/api/v1/namespaces/llmops/services/"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def initial_isvc() -> dict[str, Any]:
    doc = next(d for d in yaml.safe_load_all((REPO / "infra/k8s/base/kserve.yaml").read_text())
               if d["metadata"]["name"] == "llmops-server")
    doc["metadata"].update(resourceVersion="100", generation=1)
    doc["status"] = {"observedGeneration": 1, "components": {"predictor": {
        "latestCreatedRevision": REV1, "latestReadyRevision": REV1, "latestRolledoutRevision": REV1,
        "traffic": [{"revisionName": REV1, "latestRevision": True, "percent": 100}]}}}
    return doc


class ApiRecorder:
    """Records requests; serves GET and merge-PATCH of one InferenceService."""

    def __init__(self) -> None:
        self.obj = initial_isvc()
        self.services: dict[str, dict[str, Any]] = {}  # the tag routes' Kubernetes Services, by name
        self.forbid_services = False
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body: Any) -> None:
                recorder.requests.append({"method": self.command, "path": self.path,
                                          "content_type": self.headers.get("Content-Type"),
                                          "authorization": self.headers.get("Authorization"), "body": body})

            def do_GET(self):
                with recorder.lock:
                    self._record(None)
                    if self.path != PATH:
                        return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    self._send(200, recorder.obj)

            def do_PATCH(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with recorder.lock:
                    body = json.loads(raw)
                    self._record(body)
                    if self.path.startswith(SERVICES):
                        return self._patch_service(body)
                    if self.path != PATH:
                        return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    if self.headers.get("Content-Type") != "application/merge-patch+json":
                        return self._send(415, {"kind": "Status", "code": 415})
                    want = (body.get("metadata") or {}).get("resourceVersion")
                    if want is not None and want != recorder.obj["metadata"]["resourceVersion"]:
                        return self._send(409, {"kind": "Status", "code": 409, "reason": "Conflict"})
                    new = merge_patch(recorder.obj, body)
                    errors = validate_custom(new)
                    if errors:
                        return self._send(422, {"kind": "Status", "code": 422, "message": "; ".join(errors)})
                    meta = new["metadata"]
                    meta["resourceVersion"] = str(int(recorder.obj["metadata"]["resourceVersion"]) + 1)
                    if new["spec"] != recorder.obj["spec"]:
                        meta["generation"] = recorder.obj["metadata"]["generation"] + 1
                    recorder.obj = new
                    self._send(200, new)

            def _patch_service(self, body: dict[str, Any]) -> None:
                """Core v1 Service patch (merge or strategic merge: the same for a labels map)."""
                name = self.path[len(SERVICES):]
                if recorder.forbid_services:
                    return self._send(403, {"kind": "Status", "code": 403, "reason": "Forbidden"})
                if name not in recorder.services:
                    return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                recorder.services[name] = merge_patch(recorder.services[name], body)
                self._send(200, recorder.services[name])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def patches(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "PATCH"]

    def knative_rolls_out(self, revision: str, percent: int, *, ready: bool = True) -> None:
        """What KServe + Knative report once the new revision exists (ready or not) at `percent`."""
        with self.lock:
            pred = self.obj["status"]["components"]["predictor"]
            self.obj["status"]["observedGeneration"] = self.obj["metadata"]["generation"]
            pred["latestCreatedRevision"] = revision
            if ready:
                for tag in ("latest", "prev"):  # Knative makes one Kubernetes Service per tag route
                    self.services.setdefault(f"{tag}-llmops-server-predictor", {
                        "apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": f"{tag}-llmops-server-predictor", "namespace": "llmops"}})
                pred["latestReadyRevision"] = revision
                pred["traffic"] = [
                    {"revisionName": revision, "latestRevision": True, "percent": percent, "tag": "latest",
                     "url": f"http://latest-llmops-server-predictor.{DOMAIN}"},
                    {"revisionName": REV1, "latestRevision": False, "percent": 100 - percent, "tag": "prev",
                     "url": f"http://prev-llmops-server-predictor.{DOMAIN}"}]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    rec = ApiRecorder()
    yield rec
    rec.close()


def actuator(api: ApiRecorder, prometheus_url: str = "http://127.0.0.1:9", **kw) -> KServeActuator:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = api.url
    cfg.api_key = {"authorization": "token-123"}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return KServeActuator("llmops-server", "llmops", PrometheusClient(prometheus_url),
                          api_client=client.ApiClient(cfg), poll_s=0.05, **kw)


def test_is_an_actuator():
    assert issubclass(KServeActuator, Actuator) and KServeActuator.name == "kserve"


def test_manifest_enables_tag_routing():
    assert initial_isvc()["metadata"]["annotations"][TAG_ROUTING] == "true"


def test_weight_abort_promote_are_exact_merge_patches(api):
    act = actuator(api)
    act.set_canary_weight(25)
    act.abort()
    act.set_canary_weight(50)
    act.promote()
    got = [(p["path"], p["content_type"], p["authorization"], p["body"]) for p in api.patches()]
    assert got == [(PATH, "application/merge-patch+json", "Bearer token-123",
                    {"spec": {"predictor": {"canaryTrafficPercent": w}}}) for w in (25, 0, 50, 100)]
    assert api.obj["spec"]["predictor"]["canaryTrafficPercent"] == 100
    for bad in (-1, 101, 12.5):
        with pytest.raises(RolloutError):
            act.set_canary_weight(bad)
    assert len(api.patches()) == 4  # a bad weight sends nothing


def test_deploy_canary_patches_storage_uri_and_version_at_zero_percent(api):
    act = actuator(api)
    before = copy.deepcopy(api.obj)
    container_before = before["spec"]["predictor"]["containers"][0]
    # Knative's part: the new revision becomes ready a moment after the patch.
    threading.Timer(0.3, api.knative_rolls_out, args=(REV2, 0)).start()
    act.deploy_canary("s3://llmops-artifacts/mlflow/1/models/m-abc/artifacts", "llmops-smollm2/2")

    (patch,) = api.patches()
    assert patch["path"] == PATH and patch["content_type"] == "application/merge-patch+json"
    body = patch["body"]
    assert body["metadata"] == {"resourceVersion": "100"}  # optimistic concurrency: the list is replaced whole
    pred = body["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 0
    assert pred["annotations"] == {"llmops.io/model-version": "llmops-smollm2/2"}
    (container,) = pred["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["STORAGE_URI"] == {"name": "STORAGE_URI", "value": "s3://llmops-artifacts/mlflow/1/models/m-abc/artifacts"}
    assert env["LLMOPS_MODEL_VERSION"]["value"] == "llmops-smollm2/2"
    # Everything else in the container is kept exactly (secrets by reference, probes, security context).
    assert env["LLMOPS_API_KEY"] == next(e for e in container_before["env"] if e["name"] == "LLMOPS_API_KEY")
    assert {k: v for k, v in container.items() if k != "env"} == \
        {k: v for k, v in container_before.items() if k != "env"}
    # The result is still a valid InferenceService (the recorder validated it against the CRD) and the
    # rest of the spec is untouched.
    after = api.obj["spec"]["predictor"]
    assert {k: v for k, v in after.items() if k not in ("containers", "canaryTrafficPercent", "annotations")} == \
        {k: v for k, v in before["spec"]["predictor"].items() if k not in ("containers", "canaryTrafficPercent")}
    assert act.revisions() == (REV1, REV2)
    # The probe reaches each side through its tag route, made cluster-local first: a client outside the cluster
    # can no longer choose the canary through the public `latest-` URL (issue 17).
    assert act.endpoints() == ("http://prev-llmops-server-predictor.llmops.svc.cluster.local",
                               "http://latest-llmops-server-predictor.llmops.svc.cluster.local")
    for tag in ("prev", "latest"):
        labels = api.services[f"{tag}-llmops-server-predictor"]["metadata"]["labels"]
        assert labels == {"networking.knative.dev/visibility": "cluster-local"}


def test_tag_routes_that_cannot_be_made_private_stop_the_probe(api):
    act = actuator(api)
    threading.Timer(0.2, api.knative_rolls_out, args=(REV2, 0)).start()
    act.deploy_canary("s3://b/v2", "m/2")
    api.forbid_services = True
    with pytest.raises(RolloutError, match="cannot make the tag route prev-llmops-server-predictor cluster-local: "
                       "HTTP 403") as err:
        act.endpoints()
    assert "llmops-canary" in err.value.fix


def test_deploy_canary_on_a_model_format_predictor_sets_model_storage_uri(api):
    pred = api.obj["spec"]["predictor"]
    pred.pop("containers")
    pred["model"] = {"modelFormat": {"name": "huggingface"}, "storageUri": "s3://b/v1"}
    threading.Timer(0.2, api.knative_rolls_out, args=(REV2, 0)).start()
    actuator(api).deploy_canary("s3://b/v2", "m/2")
    pred_patch = api.patches()[0]["body"]["spec"]["predictor"]
    assert pred_patch["model"] == {"storageUri": "s3://b/v2"} and "containers" not in pred_patch
    assert api.obj["spec"]["predictor"]["model"] == {"modelFormat": {"name": "huggingface"}, "storageUri": "s3://b/v2"}


def test_stale_resource_version_is_a_conflict_not_an_overwrite(api):
    act = actuator(api)
    isvc = act.get()
    act.set_canary_weight(10)  # someone else's change bumps resourceVersion
    with pytest.raises(RolloutError, match="HTTP 409") as err:
        act._patch(act.canary_patch(isvc, "s3://x", "m/9"))
    assert "changed the InferenceService" in err.value.fix


def test_failed_or_slow_canary_revision_is_a_clear_error(api):
    act = actuator(api, ready_timeout_s=0.5)
    with pytest.raises(RolloutError, match="not ready after"):
        act.deploy_canary("s3://x", "m/2")  # Knative never reports a new revision
    api.knative_rolls_out(REV2 + "-x", 0, ready=False)
    api.obj["status"]["conditions"] = [{"type": "PredictorReady", "status": "False", "reason": "RevisionFailed",
                                        "message": "container exited: OOMKilled"}]
    with pytest.raises(RolloutError, match="OOMKilled"):
        act.wait_ready(previous=REV1)


def test_missing_isvc_and_missing_tag_routing(api):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = api.url
    other = KServeActuator("nope", "llmops", PrometheusClient("http://127.0.0.1:9"), api_client=client.ApiClient(cfg))
    with pytest.raises(RolloutError, match="HTTP 404") as err:
        other.set_canary_weight(10)
    assert "apply infra/k8s" in err.value.fix
    del api.obj["metadata"]["annotations"][TAG_ROUTING]
    with pytest.raises(RolloutError, match="enable-tag-routing"):
        actuator(api).deploy_canary("s3://x", "m/2")
    assert [p["path"] for p in api.patches()] == [PATH.replace("llmops-server", "nope")]  # only the 404 one


def test_revisions_follow_kserve_rules():
    pred = {"latestReadyRevision": REV2, "latestRolledoutRevision": REV1, "previousRolledoutRevision": None}
    assert _revisions({"components": {"predictor": pred}}) == (REV1, REV2)
    # after a 100% step KServe records the canary as rolled out; the stable side is the one before it
    pred = {"latestReadyRevision": REV2, "latestRolledoutRevision": REV2, "previousRolledoutRevision": REV1}
    assert _revisions({"components": {"predictor": pred}}) == (REV1, REV2)


def test_promql_strings_and_response_parsing():
    q = side_queries({"isvc": "llmops-server", "namespace": "llmops", "revision": REV2}, 30.25)
    sel = f'isvc="llmops-server",namespace="llmops",revision="{REV2}"'
    routes = 'route=~"/v1/chat/completions|/v1/completions|/v1/responses"'
    # client-caused 4xx (401, 400, 413, 499) are neither requests nor errors; 429 and 408 are the side's errors
    assert q["requests"] == (f'sum(increase(llmops_requests_total{{{sel},{routes},status=~"[123]..|5..|429|408"}}'
                             "[30250ms]))")
    assert q["errors"] == f'sum(increase(llmops_requests_total{{{sel},{routes},status=~"5..|429|408"}}[30250ms]))'
    assert q["latency_p95_s"] == ("histogram_quantile(0.95, sum by (le) (increase("
                                  f"llmops_request_latency_seconds_bucket{{{sel},{routes}}}[30250ms])))")
    assert q["ttft_p95_s"] == ("histogram_quantile(0.95, sum by (le) (increase("
                               f"llmops_time_to_first_token_seconds_bucket{{{sel}}}[30250ms])))")
    assert side_queries({"a": 'x"\\y'}, 1)["requests"].startswith('sum(increase(llmops_requests_total{a="x\\"\\\\y"')
    ok = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"revision": "r"}, "value": [1.7e9, "12.5"]}, {"metric": {}, "value": [1.7e9, "NaN"]}]}}
    assert parse_vector(ok)[0] == ({"revision": "r"}, 12.5)
    assert parse_vector({"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "+Inf"]}}) == \
        [({}, float("inf"))]
    with pytest.raises(RolloutError, match="bad_data: parse error"):
        parse_vector({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"})


def test_metric_names_match_the_servers_registry():
    """The PromQL reads the server's metrics by name: renaming one in serving/metrics.py must fail here."""
    from prometheus_client.parser import text_string_to_metric_families

    from serving.metrics import Metrics
    from serving.rollout import prometheus

    m = Metrics()
    m.requests.labels(route="/v1/completions", status="200", model="m/1").inc()
    m.latency.labels(route="/v1/completions", model="m/1").observe(0.1)
    m.ttft.labels(model="m/1").observe(0.1)
    samples = {s.name: s.labels for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}
    for name in (prometheus.REQUESTS, prometheus.LATENCY_BUCKET, prometheus.TTFT_BUCKET):
        assert name in samples
    assert {"route", "status"} <= set(samples[prometheus.REQUESTS])
    assert "route" in samples[prometheus.LATENCY_BUCKET]


@pytest.mark.slow
def test_window_from_a_real_prometheus(api, tmp_path):
    """Two revisions' real metrics registries, scraped by a real Prometheus; the actuator's window() separates
    them by the revision label and reads counts and p95s that match what was observed."""
    from prometheus_client import start_http_server

    from serving.metrics import Metrics
    from tests.prometheus_process import running_prometheus

    sides = {REV1: Metrics(), REV2: Metrics()}
    servers, targets = [], []
    for rev, m in sides.items():
        server, _thread = start_http_server(0, addr="127.0.0.1", registry=m.registry)
        servers.append(server)
        targets.append((f"127.0.0.1:{server.server_port}",
                        {"isvc": "llmops-server", "namespace": "llmops", "revision": rev}))
        for status in ("200", "500"):  # series exist at 0 before traffic, as on a started server
            m.requests.labels(route="/v1/chat/completions", status=status, model=rev)
        m.latency.labels(route="/v1/chat/completions", model=rev)
        m.ttft.labels(model=rev)
    try:
        with running_prometheus(tmp_path / "prom", targets) as url:
            prom = PrometheusClient(url)
            deadline = time.monotonic() + 30
            while (prom.value("count(up == 1)") or 0) < 2:  # both targets scraped once
                assert time.monotonic() < deadline, "prometheus never scraped the targets"
                time.sleep(0.2)
            time.sleep(1.2)
            since = time.time()
            for i in range(40):
                stable, canary = sides[REV1], sides[REV2]
                stable.requests.labels(route="/v1/chat/completions", status="200", model=REV1).inc()
                stable.latency.labels(route="/v1/chat/completions", model=REV1).observe(0.3)
                stable.ttft.labels(model=REV1).observe(0.2)
                stable.requests.labels(route="/health", status="200", model=REV1).inc(5)  # not traffic
                status = "500" if i % 4 == 0 else "200"
                canary.requests.labels(route="/v1/chat/completions", status=status, model=REV2).inc()
                canary.latency.labels(route="/v1/chat/completions", model=REV2).observe(3.0)
                canary.ttft.labels(model=REV2).observe(1.5)
            time.sleep(3.5)  # a few scrapes after the traffic
            until = time.time()
            api.knative_rolls_out(REV2, 25)
            w = actuator(api, prometheus_url=url).window(since - 1.0, until)
            with pytest.raises(RolloutError, match="bad_data"):
                prom.query("sum(rate(llmops_requests_total[5m]")  # Prometheus's own parser rejects it
    finally:
        for server in servers:
            server.shutdown()
    # increase() extrapolates to the window's edges: counts within a scrape interval's worth.
    assert 32 <= w.stable.requests <= 56 and 32 <= w.canary.requests <= 56
    assert w.stable.errors == 0 and 0.15 <= w.canary.errors / w.canary.requests <= 0.35
    assert 0.25 < w.stable.latency_p95_s <= 0.5 and 2 < w.canary.latency_p95_s <= 4  # the observations' buckets
    assert 0.1 < w.stable.ttft_p95_s <= 0.25 and 1 < w.canary.ttft_p95_s <= 2


def test_rebuilt_from_its_recorded_spec_through_a_kubeconfig(api, tmp_path, monkeypatch, settings):
    """`llmops canary resume/abort` rebuild the actuator from the rollout state's spec and the kubeconfig."""
    from serving.rollout.actuators import build

    spec = json.loads(json.dumps(actuator(api).spec()))  # what the state stores
    assert spec == {"kind": "kserve", "isvc": "llmops-server", "namespace": "llmops", "container": "kserve-container",
                    "prometheus_url": "http://127.0.0.1:9"}
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "t",
                  "clusters": [{"name": "c", "cluster": {"server": api.url}}],
                  "users": [{"name": "u", "user": {"token": "kc-token"}}],
                  "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u", "namespace": "llmops"}}]}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rebuilt = build(spec, settings)
    assert isinstance(rebuilt, KServeActuator) and rebuilt.prometheus.url == "http://127.0.0.1:9"
    rebuilt.abort()
    last = api.patches()[-1]
    assert (last["path"], last["authorization"], last["body"]) == \
        (PATH, "Bearer kc-token", {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(RolloutError, match="no Kubernetes credentials"):
        build(spec, settings)
