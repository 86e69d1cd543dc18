"""Offline checks of the Kubernetes manifests (infra/k8s): render overlays with kustomize, validate core
objects against Kubernetes' schemas and custom resources against their CRDs' schemas (unknown fields
rejected), and lint the pods' security posture. No API server needed."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
CRD_DIR = K8S / "crds"
OVERLAYS = ("dev", "prod")
# Kubernetes release whose schemas the core objects are checked against (KServe 0.20 and KubeRay 1.7 support it).
KUBERNETES_VERSION = "1.32.0"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)


def kustomize(path: Path) -> list[dict[str, Any]]:
    """Render a kustomization (kubectl's built-in kustomize, or a kustomize binary)."""
    if kubectl := shutil.which("kubectl"):
        cmd = [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(path)]
    elif binary := shutil.which("kustomize"):
        cmd = [binary, "build", "--load-restrictor", "LoadRestrictionsNone", str(path)]
    else:
        raise RuntimeError("neither kubectl nor kustomize is installed: install kubectl "
                           "(https://kubernetes.io/docs/tasks/tools/) to render infra/k8s")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# --- CRD schemas --------------------------------------------------------------------------------------------

def _strict(node: Any) -> Any:
    """Reject unknown fields like the API server's pruning would drop them: every object schema that lists
    its properties gets additionalProperties: false, unless it preserves unknown fields."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a strict validator for each vendored CRD version."""
    validators = {}
    for path in sorted(CRD_DIR.glob("*.json")):
        crd = json.loads(path.read_text())
        for version, schema in crd["versions"].items():
            validators[(f"{crd['group']}/{version}", crd["kind"])] = jsonschema.Draft4Validator(_strict(schema))
    return validators


def is_custom(doc: dict[str, Any]) -> bool:
    group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
    return "." in group and not group.endswith(".k8s.io")


def validate_custom(doc: dict[str, Any]) -> list[str]:
    """Errors of a custom resource against its CRD schema; a CRD we have no schema for is an error."""
    key = (doc["apiVersion"], doc["kind"])
    validator = crd_validators().get(key)
    if validator is None:
        return [f"no vendored CRD schema for {key[0]} {key[1]} (add it to infra/k8s/crds with vendor.py)"]
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def validate_core(doc: dict[str, Any]) -> list[str]:
    """Errors of a built-in object against the Kubernetes JSON schemas (strict: unknown fields rejected).
    A missing schema raises (kubernetes_validate.SchemaNotFoundError): never a silent pass."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    return []


# --- security posture ---------------------------------------------------------------------------------------

def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for every pod template a resource carries, built-in or custom."""
    kind, spec = doc["kind"], doc.get("spec", {})
    name = f"{kind}/{doc['metadata']['name']}"
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield name, spec["template"]["spec"]
    elif kind == "CronJob":
        yield name, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield name, spec
    elif kind == "RayCluster":
        yield f"{name} head", spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"{name} workers {group['groupName']}", group["template"]["spec"]
    elif kind == "RayJob":
        if "submitterPodTemplate" in spec:
            yield f"{name} submitter", spec["submitterPodTemplate"]["spec"]
        if "rayClusterSpec" in spec:
            yield from pod_specs({"kind": "RayCluster", "metadata": doc["metadata"], "spec": spec["rayClusterSpec"]})
    elif kind == "InferenceService":
        for component in ("predictor", "transformer", "explainer"):
            if component in spec:
                yield f"{name} {component}", spec[component]


def security_findings(doc: dict[str, Any]) -> list[str]:
    """What a restricted-profile reviewer would reject: containers without limits, root, privilege,
    host access, secrets written into the manifest."""
    findings = []
    if doc["kind"] == "Secret" and (doc.get("data") or doc.get("stringData")):
        findings.append(f"Secret/{doc['metadata']['name']}: secret values inlined in a manifest")
    for where, pod in pod_specs(doc):
        pod_sc = pod.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                findings.append(f"{where}: {flag}")
        for vol in pod.get("volumes", []):
            if "hostPath" in vol:
                findings.append(f"{where}: hostPath volume {vol['name']}")
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            at = f"{where} container {c.get('name', '?')}"
            sc = c.get("securityContext", {})
            limits = c.get("resources", {}).get("limits", {})
            for res in ("cpu", "memory"):
                if res not in limits:
                    findings.append(f"{at}: no {res} limit")
            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot", False)):
                findings.append(f"{at}: runAsNonRoot is not set")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                findings.append(f"{at}: runs as uid 0")
            if sc.get("privileged"):
                findings.append(f"{at}: privileged")
            if sc.get("allowPrivilegeEscalation", True):
                findings.append(f"{at}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                findings.append(f"{at}: capabilities not dropped (drop: [ALL])")
            if sc.get("capabilities", {}).get("add"):
                findings.append(f"{at}: adds capabilities {sc['capabilities']['add']}")
            for env in c.get("env", []):
                if SECRET_NAME.search(env["name"]) and "value" in env:
                    findings.append(f"{at}: env {env['name']} inlines a secret (use valueFrom.secretKeyRef)")
    return findings


def with_change(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    """A deep copy of `doc` with one field set (for the checks' negative cases)."""
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out
