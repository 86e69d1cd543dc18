"""Who may reach whom on the cluster: the rendered NetworkPolicies, evaluated for every ordered pair of
components (tests/infra/netpol.py), must allow exactly the paths of the table in infra/README.md ("Network
policy") -- a path the table does not name fails, and so does a named path the policies block."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.infra.manifests import K8S, OVERLAYS, REPO, kustomize
from tests.infra.netpol import NAMESPACE, Endpoint, allowed_ports, cluster_endpoints, reachability

# Pods KFP starts for pipeline steps (not in the manifests; KFP v2 labels them) and what lives outside the
# namespace: platform pods, the Kubernetes API, S3 and the rest of the internet, the cloud metadata service,
# and an unrelated pod of another namespace. Platform pods carry the labels their charts set.
WORLD = [
    Endpoint("pipeline-step", NAMESPACE, {"pipelines.kubeflow.org/v2_component": "true"}, "10.244.1.2"),
    Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, "10.244.2.2", (("UDP", 53, "dns"),
                                                                                  ("TCP", 53, "dns-tcp"))),
    Endpoint("kfp", "kubeflow", {"app": "ml-pipeline"}, "10.244.3.2", (("TCP", 8888, "http"), ("TCP", 8887, "grpc"))),
    Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, "10.244.4.2",
             (("TCP", 9090, "web"),)),
    Endpoint("knative-activator", "knative-serving", {"app": "activator"}, "10.244.5.2", (("TCP", 8012, "http1"),)),
    Endpoint("istio-gateway", "istio-system", {"istio": "ingressgateway"}, "10.244.6.2",
             (("TCP", 8080, "http2"), ("TCP", 8443, "https"))),
    Endpoint("kuberay-operator", "ray-system", {"app.kubernetes.io/name": "kuberay-operator"}, "10.244.7.2",
             (("TCP", 8080, "http"),)),
    Endpoint("other-pod", "default", {"app": "unrelated"}, "10.244.8.2",
             (("TCP", 443, "https"), ("TCP", 8080, "http"))),
    Endpoint("kube-apiserver", None, {}, "10.0.0.1", (("TCP", 443, None), ("TCP", 6443, None))),
    Endpoint("s3", None, {}, "52.216.10.20", (("TCP", 443, None),)),
    Endpoint("internet", None, {}, "203.0.113.10", (("TCP", 443, None), ("TCP", 80, None))),
    Endpoint("cloud-metadata", None, {}, "169.254.169.254", (("TCP", 80, None),)),
]
TABLE_START = "<!-- network-policy-table"


def design_table() -> list[tuple[list[str], list[str], list[str] | None, set[str]]]:
    """The README's rows: (sources, destinations, ports or None for all, overlays)."""
    text = (REPO / "infra" / "README.md").read_text()
    assert TABLE_START in text, "infra/README.md lost its network policy table"
    rows = []
    for line in text[text.index(TABLE_START):].splitlines()[3:]:
        if not line.startswith("|"):
            break
        src, dst, ports, overlays = (c.strip() for c in line.strip("|").split("|")[:4])
        port_list = None if ports == "all" else [p if "/" in p else f"{p}/TCP" for p in re.split(r",\s*", ports)]
        rows.append((re.findall(r"`([^`]+)`", src), re.findall(r"`([^`]+)`", dst), port_list,
                     set(OVERLAYS) if overlays == "both" else {overlays}))
    assert rows
    return rows


def expected_paths(overlay: str, endpoints: list[Endpoint]) -> dict[tuple[str, str], set[str]]:
    by_name = {e.name: e for e in endpoints}
    ours = [e.name for e in endpoints if e.namespace == NAMESPACE]
    out: dict[tuple[str, str], set[str]] = {}
    for sources, dests, ports, overlays in design_table():
        if overlay not in overlays:
            continue
        for src in (ours if sources == ["*"] else sources):
            for dst in dests:
                if src not in by_name or dst not in by_name:
                    continue  # e.g. llmops-trtllm (prod only) or minio (dev only)
                listening = {f"{p[1]}/{p[0]}" for p in by_name[dst].ports}
                allowed = listening if ports is None else listening & set(ports)
                if allowed:
                    out.setdefault((src, dst), set()).update(allowed)
    return out


@pytest.fixture(scope="module", params=OVERLAYS)
def cluster(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]], list[Endpoint]]:
    docs = kustomize(K8S / "overlays" / request.param)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    return request.param, policies, cluster_endpoints(docs) + WORLD


def _diff(actual: dict, expected: dict) -> list[str]:
    lines = []
    for pair in sorted(set(actual) | set(expected)):
        got, want = actual.get(pair, set()), expected.get(pair, set())
        if got != want:
            lines.append(f"{pair[0]} -> {pair[1]}: policies allow {sorted(got) or 'nothing'}, "
                         f"the design table allows {sorted(want) or 'nothing'}")
    return lines


def test_policies_allow_exactly_the_design_table(cluster):
    overlay, policies, endpoints = cluster
    names = {e.name for e in endpoints}
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "ray-job-submitter", "llmops-server",
            "postgres-setup"} <= names
    assert not _diff(reachability(policies, endpoints), expected_paths(overlay, endpoints))


def test_table_names_only_known_components():
    names = {"*"} | {e.name for o in OVERLAYS for e in cluster_endpoints(kustomize(K8S / "overlays" / o)) + WORLD}
    named = {n for sources, dests, _, _ in design_table() for n in sources + dests}
    assert named <= names, f"unknown components in infra/README.md's table: {sorted(named - names)}"


def test_model_server_reaches_its_database_and_nothing_else(cluster):
    """The issue's paths: the internet-facing server never reaches the Ray head, MLflow, the Kubernetes API or
    the metadata service; only pipeline steps (and Ray's own pods) reach the Ray head and MLflow."""
    overlay, policies, endpoints = cluster
    paths = reachability(policies, endpoints)
    reached = {dst for (src, dst) in paths if src == "llmops-server"}
    assert reached == {"postgres", "kube-dns", "minio" if overlay == "dev" else "s3"} | (
        {"internet"} if overlay == "prod" else set())
    assert {src for (src, dst) in paths if dst == "mlflow"} == {"pipeline-step", "kfp"}
    assert {src for (src, dst) in paths if dst == "ray-head"} == {"pipeline-step", "ray-worker", "ray-job-submitter",
                                                                  "kuberay-operator"}
    assert not [pair for pair in paths if pair[1] == "cloud-metadata"]


def test_evaluator_catches_an_allow_all_policy(cluster):
    """The check can fail: yesterday's allow-same-namespace policy opens the Ray head to the model server."""
    overlay, policies, endpoints = cluster
    allow_all = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "allow-same-namespace", "namespace": NAMESPACE},
                 "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                          "ingress": [{"from": [{"podSelector": {}}]}], "egress": [{"to": [{"podSelector": {}}]}]}}
    diff = _diff(reachability([*policies, allow_all], endpoints), expected_paths(overlay, endpoints))
    assert any(line.startswith("llmops-server -> ray-head") for line in diff)
    assert any(line.startswith("llmops-server -> mlflow") for line in diff)


def test_evaluator_semantics():
    """Peers and ports the way the API defines them: a peer with both selectors is an AND, two peers an OR;
    ipBlock except; named ports and endPort; a pod no policy selects is not isolated."""
    a = Endpoint("a", NAMESPACE, {"app": "a"}, "10.244.0.2", (("TCP", 8080, "http"), ("UDP", 53, "dns")))
    b = Endpoint("b", "other", {"app": "b"}, "10.244.0.3")
    ext = Endpoint("ext", None, {}, "169.254.169.254", (("TCP", 80, None),))

    def policy(spec: dict) -> dict:
        return {"metadata": {"name": "p", "namespace": NAMESPACE}, "spec": {"podSelector": {}, **spec}}

    pod_x = {"podSelector": {"matchLabels": {"app": "x"}}}
    both = policy({"ingress": [{"from": [{"namespaceSelector": {}, **pod_x}]}]})
    either = policy({"ingress": [{"from": [{"namespaceSelector": {}}, pod_x]}]})
    assert allowed_ports([both], b, a) == set()
    assert allowed_ports([either], b, a) == {"8080/TCP", "53/UDP"}
    named = policy({"ingress": [{"ports": [{"port": "http"}, {"protocol": "UDP", "port": 50, "endPort": 60}]}]})
    assert allowed_ports([named], b, a) == {"8080/TCP", "53/UDP"}
    assert allowed_ports([policy({"ingress": [{"ports": [{"port": 8081}]}]})], b, a) == set()
    egress = policy({"policyTypes": ["Egress"],
                     "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}}]}]})
    assert allowed_ports([egress], a, ext) == set()
    assert allowed_ports([policy({"policyTypes": ["Egress"], "egress": [{}]})], a, ext) == {"80/TCP"}
    assert allowed_ports([], a, ext) == {"80/TCP"}  # not isolated
