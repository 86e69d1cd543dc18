"""A small NetworkPolicy evaluator (networking.k8s.io/v1 semantics), for checking offline who may reach whom.

A connection from pod A to port P of pod B is allowed when B's ingress AND A's egress allow it. A pod that no
policy of its namespace selects for a direction is not isolated in that direction (everything allowed); once
selected, the union of the selecting policies' rules decides. A rule's peers: `podSelector` alone = pods of
the policy's namespace; `namespaceSelector` alone = every pod of those namespaces; both in one peer = both
must match; `ipBlock` = the address is in `cidr` and in none of `except`. No `from`/`to` = any peer, no `ports`
= any port; a port matches by number (up to `endPort`) or by the container port's name, and by protocol
(default TCP). Only namespace `llmops` has policies here: endpoints elsewhere are not isolated (their own
policies are not ours to model), and traffic between two endpoints outside it is not evaluated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "llmops"
# Knative's queue-proxy sits in every Serverless predictor pod: 8012 serves, 9090 feeds the autoscaler,
# 9091 re-exports the user container's /metrics.
QUEUE_PROXY_PORTS = (("TCP", 8012, "queue-http"), ("TCP", 9090, "queue-metrics"), ("TCP", 9091, "http-usermetric"))
# Ray opens its worker, object-manager and NCCL/gloo ports dynamically: one stands for them all.
RAY_DYNAMIC_PORT = ("TCP", 10002, None)

Port = tuple[str, int, str | None]  # (protocol, number, container port name)


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace + labels) or an address outside the cluster (namespace None), and what it listens on."""

    name: str
    namespace: str | None
    labels: Mapping[str, str]
    ip: str
    ports: tuple[Port, ...] = field(default=())

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: every matchLabels pair and every matchExpression holds ({} matches everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def peer_matches(peer: Mapping[str, Any], policy_namespace: str, ep: Endpoint) -> bool:
    if "ipBlock" in peer:
        addr = ipaddress.ip_address(ep.ip)
        block = peer["ipBlock"]
        return (addr in ipaddress.ip_network(block["cidr"])
                and not any(addr in ipaddress.ip_network(c) for c in block.get("except") or []))
    if ep.namespace is None:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], ep.namespace_labels):
            return False
    elif ep.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], ep.labels)


def port_matches(rule_ports: Iterable[Mapping[str, Any]] | None, port: Port) -> bool:
    rule_ports = list(rule_ports or [])
    if not rule_ports:
        return True
    protocol, number, name = port
    for rp in rule_ports:
        if rp.get("protocol", "TCP") != protocol:
            continue
        want = rp.get("port")
        if want is None or (isinstance(want, str) and want == name):
            return True
        if isinstance(want, int) and want <= number <= rp.get("endPort", want):
            return True
    return False


def _policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _selecting(policies: list[dict[str, Any]], ep: Endpoint, direction: str) -> list[dict[str, Any]]:
    return [p for p in policies
            if p["metadata"].get("namespace") == ep.namespace and direction in _policy_types(p)
            and selector_matches(p["spec"].get("podSelector"), ep.labels)]


def _allows(policies: list[dict[str, Any]], subject: Endpoint, peer: Endpoint, port: Port, direction: str) -> bool:
    """Does `subject`'s side allow this connection (its ingress from `peer`, or its egress to `peer`)?"""
    if subject.namespace != NAMESPACE:
        return True
    selecting = _selecting(policies, subject, direction)
    if not selecting:
        return True
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(p, subject.namespace, peer) for p in peers)) \
                    and port_matches(rule.get("ports"), port):
                return True
    return False


def allowed_ports(policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint) -> set[str]:
    """The destination's ports that `src` may open a connection to, as "5432/TCP"."""
    return {f"{port[1]}/{port[0]}" for port in dst.ports
            if _allows(policies, dst, src, port, "Ingress") and _allows(policies, src, dst, port, "Egress")}


def reachability(policies: list[dict[str, Any]], endpoints: list[Endpoint]) -> dict[tuple[str, str], set[str]]:
    """(source, destination) -> allowed ports, for every ordered pair with at least one end in the namespace
    (a pair of one name is two pods of the same component); pairs with no allowed port are left out."""
    out = {}
    for src in endpoints:
        for dst in endpoints:
            if NAMESPACE not in (src.namespace, dst.namespace):
                continue
            if ports := allowed_ports(policies, src, dst):
                out[(src.name, dst.name)] = ports
    return out


# --- the pods the manifests run ---------------------------------------------------------------------------

def _container_ports(pod: Mapping[str, Any]) -> tuple[Port, ...]:
    return tuple((p.get("protocol", "TCP"), p["containerPort"], p.get("name"))
                 for c in pod.get("containers", []) for p in c.get("ports", []))


def _labels(template: Mapping[str, Any]) -> dict[str, str]:
    return dict((template.get("metadata") or {}).get("labels") or {})


def _workload_pods(doc: Mapping[str, Any]) -> Iterable[tuple[str, dict[str, str], tuple[Port, ...]]]:
    """(component name, pod labels, listening ports) of each kind of pod a rendered object starts, with the
    labels its controller adds (KubeRay's ray.io/*, KServe's serving.kserve.io/inferenceservice)."""
    kind, name, spec = doc["kind"], doc["metadata"]["name"], doc.get("spec", {})
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        yield name, _labels(spec["template"]), _container_ports(spec["template"]["spec"])
    elif kind == "RayCluster":
        head = spec["headGroupSpec"]["template"]
        yield ("ray-head", _labels(head) | {"ray.io/cluster": name, "ray.io/node-type": "head"},
               (*_container_ports(head["spec"]), RAY_DYNAMIC_PORT))
        for group in spec.get("workerGroupSpecs", []):
            tpl = group["template"]
            yield ("ray-worker", _labels(tpl) | {"ray.io/cluster": name, "ray.io/node-type": "worker"},
                   (*_container_ports(tpl["spec"]), RAY_DYNAMIC_PORT))
    elif kind == "RayJob" and "submitterPodTemplate" in spec:
        yield "ray-job-submitter", _labels(spec["submitterPodTemplate"]), ()
    elif kind == "InferenceService":
        pred = spec["predictor"]
        labels = dict(pred.get("labels") or {}) | {"serving.kserve.io/inferenceservice": name,
                                                     "component": "predictor"}
        yield name, labels, (*_container_ports(pred), *QUEUE_PROXY_PORTS)


def cluster_endpoints(docs: list[dict[str, Any]]) -> list[Endpoint]:
    """One endpoint per kind of pod in the rendered manifests (addresses 10.244.0.x, the pod network)."""
    pods = [p for d in docs for p in _workload_pods(d)]
    return [Endpoint(name, NAMESPACE, labels, f"10.244.0.{i + 10}", ports)
            for i, (name, labels, ports) in enumerate(pods)]
