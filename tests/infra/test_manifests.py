"""infra/k8s renders, validates against Kubernetes and CRD schemas, and passes the security lint, offline."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from llmops.settings import Settings
from tests.infra.manifests import (
    K8S,
    OVERLAYS,
    REPO,
    is_custom,
    kustomize,
    pod_specs,
    security_findings,
    validate_core,
    validate_custom,
    with_change,
)

CUSTOM_KINDS = {"InferenceService", "RayCluster", "RayJob", "ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_overlays_render_the_whole_stack(rendered):
    overlay, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert kinds >= CUSTOM_KINDS
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "StatefulSet", "Deployment",
            "Service", "ConfigMap"} <= kinds
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "minio") in names if overlay == "dev" else ("Deployment", "minio") not in names
    assert (("InferenceService", "llmops-trtllm") in names) == (overlay == "prod")  # dev has no GPUs
    assert all(d["metadata"].get("namespace") == "llmops" for d in docs if d["kind"] != "Namespace")


def test_core_objects_match_the_kubernetes_schemas(rendered):
    _, docs = rendered
    errors = {f"{d['kind']}/{d['metadata']['name']}": validate_core(d) for d in docs if not is_custom(d)}
    assert not {k: v for k, v in errors.items() if v}


def test_custom_resources_match_their_crd_schemas(rendered):
    _, docs = rendered
    custom = [d for d in docs if is_custom(d)]
    assert {d["kind"] for d in custom} == CUSTOM_KINDS
    errors = {f"{d['kind']}/{d['metadata']['name']}": validate_custom(d) for d in custom}
    assert not {k: v for k, v in errors.items() if v}


def test_schema_checks_reject_unknown_and_mistyped_fields():
    """The validators can fail: a typo'd canary field, a misplaced Ray field, an unknown Deployment field."""
    docs = kustomize(K8S / "overlays" / "prod")
    isvc = _find(docs, "InferenceService", "llmops-server")
    typo = with_change(isvc, ["spec", "predictor", "canaryTraficPercent"], 10)
    assert any("canaryTraficPercent" in e for e in validate_custom(typo))
    assert validate_custom(with_change(isvc, ["spec", "predictor", "canaryTrafficPercent"], "ten"))
    ray = _find(docs, "RayCluster", "llmops-ray")
    assert validate_custom(with_change(ray, ["spec", "headGroupSpec", "replicas"], 2))
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no vendored CRD schema" in validate_custom(unknown)[0]
    mlflow = _find(docs, "Deployment", "mlflow")
    assert validate_core(with_change(mlflow, ["spec", "replica"], 2))
    assert validate_core(with_change(mlflow, ["spec", "replicas"], "two"))


def test_security_posture(rendered):
    _, docs = rendered
    assert sum(1 for d in docs for _ in pod_specs(d)) >= 6
    findings = [f for d in docs for f in security_findings(d)]
    assert not findings


def test_security_lint_flags_a_bad_pod():
    docs = kustomize(K8S / "overlays" / "dev")
    mlflow = _find(docs, "Deployment", "mlflow")
    pod = ["spec", "template", "spec"]
    c0 = [*pod, "containers", 0]
    bad = with_change(mlflow, [*c0, "securityContext"], {"privileged": True})
    bad = with_change(bad, [*c0, "resources"], {"requests": {"cpu": "1"}})
    bad = with_change(bad, [*pod, "securityContext"], {"runAsUser": 0})
    bad = with_change(bad, [*pod, "volumes"], [{"name": "host", "hostPath": {"path": "/"}}])
    bad = with_change(bad, [*c0, "env"], [{"name": "POSTGRES_PASSWORD", "value": "hunter2"}])
    text = "\n".join(security_findings(bad))
    for expected in ("no cpu limit", "no memory limit", "runAsNonRoot", "uid 0", "privileged",
                     "allowPrivilegeEscalation", "drop: [ALL]", "hostPath", "POSTGRES_PASSWORD inlines a secret"):
        assert expected in text
    inlined = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    assert security_findings(inlined)


def test_canary_controller_may_only_patch_inferenceservices(rendered):
    """...and label its tag routes' Services cluster-local (patch, nothing else on core resources)."""
    _, docs = rendered
    role = _find(docs, "Role", "llmops-canary")
    verbs = {(res, v) for rule in role["rules"] for res in rule["resources"] for v in rule["verbs"]}
    assert ("inferenceservices", "patch") in verbs and ("services", "patch") in verbs
    assert not {v for _, v in verbs} & {"create", "delete", "deletecollection", "escalate", "bind", "*"}
    core = [rule for rule in role["rules"] if rule["apiGroups"] == [""]]
    assert core == [{"apiGroups": [""], "resources": ["services"], "verbs": ["patch"]}]
    assert all(rule["apiGroups"] == ["serving.kserve.io"] for rule in role["rules"] if rule not in core)
    for isvc in (d for d in docs if d["kind"] == "InferenceService"):
        assert "canaryTrafficPercent" in isvc["spec"]["predictor"]


def test_images_and_secrets_agree_with_settings_and_guide(rendered, monkeypatch):
    """Project images are the names `make images` builds; every referenced secret is documented."""
    _, docs = rendered
    for var in ("LLMOPS_IMAGE", "LLMOPS_TRAIN_IMAGE", "LLMOPS_TRTLLM_IMAGE", "LLMOPS_IMAGE_REGISTRY",
                "LLMOPS_IMAGE_TAG"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    ours = {s.image, s.train_image, s.trtllm_image}
    images = {c["image"] for d in docs for _, p in pod_specs(d) for c in p.get("containers", [])}
    project = {i for i in images if i.startswith("ghcr.io/llmops/")}
    # prod runs them by digest (name@sha256:...): the name must still be one `make images` builds
    assert project and {i.split("@")[0] for i in project} <= ours | {o.rsplit(":", 1)[0] for o in ours}
    guide = (REPO / "infra" / "README.md").read_text()
    secrets = set(_secret_refs(docs))
    secrets |= {s["name"] for d in docs if d["kind"] == "ServiceAccount" for s in d.get("secrets", [])}
    assert {"mlflow-db", "llmops-audit-db", "llmops-inference-log-db", "s3-mlflow", "s3-ray"} <= secrets
    assert not [name for name in secrets if f"secret generic {name}" not in guide]


def _secret_refs(node: Any) -> Iterator[str]:
    """Names of every secretKeyRef / secretRef anywhere in the rendered objects."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                yield value["name"]
            else:
                yield from _secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_refs(value)


DIGEST = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64


def test_prod_images_are_pinned_by_digest():
    """Every container (and init container) image of prod runs by digest, so a pushed tag cannot change what
    runs. The all-zero digest is the overlay's marked placeholder; any other digest must look real."""
    docs = kustomize(K8S / "overlays" / "prod")
    images = {c["image"] for d in docs for _, p in pod_specs(d)
              for c in p.get("initContainers", []) + p.get("containers", [])}
    assert images
    assert not [i for i in images if not DIGEST.match(i)], "prod images without a digest"
    overlay = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    placeholders = [line for line in overlay.splitlines() if PLACEHOLDER_DIGEST in line]
    assert all("PLACEHOLDER" in line for line in placeholders), "placeholder digests must say PLACEHOLDER"
    unpinned = with_change(_find(docs, "Deployment", "mlflow"), ["spec", "template", "spec", "containers", 0,
                                                                 "image"], "ghcr.io/llmops/llmops:0.1.0")
    assert not DIGEST.match(next(c["image"] for _, p in pod_specs(unpinned) for c in p["containers"]))


def test_model_server_logs_to_the_cluster_database(rendered):
    """The inference log is the cluster PostgreSQL (a secret URI), not SQLite on the pod's emptyDir."""
    _, docs = rendered
    container = _find(docs, "InferenceService", "llmops-server")["spec"]["predictor"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["LLMOPS_INFERENCE_LOG_URI"]["valueFrom"]["secretKeyRef"] == {"name": "llmops-inference-log-db",
                                                                            "key": "uri"}
    assert Settings.model_fields["inference_log_uri"]  # the variable `llmops serve` reads (llmops/settings.py)


def test_grafana_dashboard_is_packaged(rendered):
    _, docs = rendered
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("llmops-grafana"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["llmops-serving.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs and all(e.strip() for e in exprs)


def test_compiled_pipeline_settings_match_the_manifests(rendered):
    """params.yaml's cluster section names the ConfigMap keys and Secrets the steps read: they must exist
    (ConfigMap) and be documented (Secrets, created by hand from the guide)."""
    _, docs = rendered
    cluster = Settings().params().model_dump()["cluster"]
    cm = _find(docs, "ConfigMap", cluster["config_map"]["name"])
    assert set(cluster["config_map"]["keys"]) <= set(cm["data"])
    guide = (REPO / "infra" / "README.md").read_text()
    assert not [s["name"] for s in cluster["secrets"] if f"secret generic {s['name']}" not in guide]


def test_dashboard_and_alerts_query_metrics_the_server_exports(rendered):
    """Every llmops_* series the dashboard and the PrometheusRule query is one that the model server, the router
    or the drift monitor exports (names read from their registries/renderers: tests/monitoring/exported.py)."""
    from tests.monitoring.exported import exported_names

    exported = exported_names()
    _, docs = rendered
    rule = _find(docs, "PrometheusRule", "llmops-serving")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("llmops-grafana"))
    exprs += [t["expr"] for p in json.loads(cm["data"]["llmops-serving.json"])["panels"] for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"\b(llmops_[a-z_]+)", e)}
    assert queried
    assert queried <= exported, f"not exported by the server, router or monitor: {sorted(queried - exported)}"
