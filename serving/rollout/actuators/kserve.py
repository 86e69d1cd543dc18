"""The KServe actuator: a rollout on an InferenceService's predictor (Serverless mode, Knative revisions).

KServe's canary model (https://kserve.github.io/website/docs/model-serving/predictive-inference/rollout-strategies/canary):
one predictor spec; changing it (here the model's storage URI) makes a new Knative revision, and
`canaryTrafficPercent` splits traffic between that latest revision (the canary) and the last revision that was
rolled out with 100% (the stable side, KServe's LatestRolledoutRevision). KServe itself does no analysis; this
actuator only executes what the rollout controller decides:

- `deploy_canary(uri, version)`: one merge patch sets the new storage URI, the model-version env/annotation and
  `canaryTrafficPercent: 0` (the revision starts, takes no traffic), then waits until that revision is ready.
- `set_canary_weight(p)`: merge patch `{"spec": {"predictor": {"canaryTrafficPercent": p}}}`.
- `abort()`: `canaryTrafficPercent: 0` -- all traffic back on the previously rolled-out revision (KServe pins it
  to PreviousRolledoutRevision even after a 100% step).
- `promote()`: `canaryTrafficPercent: 100` -- the latest revision becomes the rolled-out one; the manifest in
  infra/k8s/base/kserve.yaml keeps the field at 100, so the cluster ends as declared there.
- `window()`: PromQL per revision (serving/rollout/prometheus.py), revisions read from the ISVC's status.
- `endpoints()`: the `prev` / `latest` tag routes of the predictor's traffic (annotation
  `serving.kserve.io/enable-tag-routing: "true"`), which reach one revision each, bypassing the split. A tag
  route is public by default, which would let any client pick the canary (`latest-...`); the actuator labels
  each tag's Kubernetes Service `networking.knative.dev/visibility: cluster-local` (Knative's per-tag
  visibility) and probes through the cluster-local address, so only pods inside the cluster reach one side.

All writes are JSON merge patches (RFC 7386) through the official client's CustomObjectsApi. The patch that
replaces the containers list (a merge patch replaces lists whole) carries the object's resourceVersion, so a
concurrent edit makes it fail with 409 instead of being overwritten. Needs the `llmops-canary` Role
(infra/k8s/base/rbac.yaml: get/list/watch/patch on inferenceservices, patch on services for the tag labels).
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any
from urllib.parse import urlsplit

from serving.rollout.actuators.base import Actuator, WindowStats
from serving.rollout.errors import RolloutError
from serving.rollout.prometheus import PrometheusClient

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
STORAGE_ENV = "STORAGE_URI"  # a custom container's model location (KServe's storage initializer reads it)
VERSION_ENV = "LLMOPS_MODEL_VERSION"  # name/version the server reports (metrics label, responses)
VERSION_ANNOTATION = "llmops.io/model-version"  # on the predictor: lands on the revision, visible in kubectl
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
VISIBILITY = "networking.knative.dev/visibility"  # on a tag's Kubernetes Service: cluster-local keeps it private
RBAC_FIX = "run as the llmops-canary service account (infra/k8s/base/rbac.yaml) or fix the kubeconfig"


def load_api_client(in_cluster: bool | None = None):
    """A kubernetes ApiClient from the pod's service account, else the kubeconfig."""
    from kubernetes import client, config

    try:
        if in_cluster is not False:
            try:
                config.load_incluster_config()
                return client.ApiClient()
            except config.ConfigException:
                if in_cluster:
                    raise
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # read now, not at the client's import
        return client.ApiClient()
    except config.ConfigException as exc:
        raise RolloutError(f"no Kubernetes credentials: {exc}",
                           "run inside the cluster (service account llmops-canary) or set KUBECONFIG") from None


def _revisions(status: dict[str, Any]) -> tuple[str | None, str | None]:
    """(stable, canary) Knative revision names from `status.components.predictor`, by KServe's own rule:
    the canary is the latest ready revision; the stable side is the last revision rolled out with 100%, or
    the one before it when the latest ready one has itself been rolled out (a 100% step, then a rollback)."""
    pred = ((status or {}).get("components") or {}).get("predictor") or {}
    latest_ready, rolled = pred.get("latestReadyRevision"), pred.get("latestRolledoutRevision")
    stable = pred.get("previousRolledoutRevision") if rolled and rolled == latest_ready else rolled
    return stable, latest_ready


class KServeActuator(Actuator):
    name = "kserve"

    def __init__(self, isvc: str, namespace: str, prometheus: PrometheusClient, *, api_client=None,
                 container: str = "kserve-container", ready_timeout_s: float = 900, poll_s: float = 5) -> None:
        from kubernetes import client

        self.isvc, self.namespace, self.prometheus = isvc, namespace, prometheus
        self.container, self.ready_timeout_s, self.poll_s = container, ready_timeout_s, poll_s
        api_client = api_client or load_api_client()
        self.api, self.core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
        self._stable_rev: str | None = None  # pinned at deploy time: the revision the canary is compared with
        self._urls: tuple[str, str] | None = None

    def spec(self) -> dict[str, Any]:
        """What the rollout state records to rebuild this actuator on resume/abort (no credentials)."""
        return {"kind": self.name, "isvc": self.isvc, "namespace": self.namespace, "container": self.container,
                "prometheus_url": self.prometheus.url}

    # -- Kubernetes ---------------------------------------------------------------------------------------
    def get(self) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.isvc)
        except ApiException as exc:
            raise self._api_error("read", exc) from None

    def _patch(self, body: dict[str, Any]) -> dict[str, Any]:
        """One JSON merge patch (the client sends CustomObjectsApi patches as application/merge-patch+json)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.isvc, body)
        except ApiException as exc:
            raise self._api_error("patch", exc) from None

    def _api_error(self, verb: str, exc) -> RolloutError:
        where = f"InferenceService {self.namespace}/{self.isvc}"
        fixes = {401: RBAC_FIX, 403: RBAC_FIX, 404: f"apply infra/k8s (kustomize) so {where} exists",
                 409: "someone changed the InferenceService meanwhile: re-run the rollout step",
                 422: "the patched object is invalid for the installed KServe CRD: check its version"}
        return RolloutError(f"cannot {verb} {where}: HTTP {exc.status} {exc.reason}: {(exc.body or '')[:300]}",
                            fixes.get(exc.status, "check the API server and the InferenceService"))

    # -- starting a canary --------------------------------------------------------------------------------
    def canary_patch(self, isvc: dict[str, Any], storage_uri: str, model_version: str) -> dict[str, Any]:
        """The merge patch that starts a canary of `storage_uri` at 0% (built from the current object)."""
        pred = (isvc.get("spec") or {}).get("predictor") or {}
        patch_pred: dict[str, Any] = {"canaryTrafficPercent": 0,
                                      "annotations": {VERSION_ANNOTATION: model_version}}
        if isinstance(pred.get("model"), dict):  # a model-format predictor: storageUri is a field
            patch_pred["model"] = {"storageUri": storage_uri}
        else:  # a custom container: STORAGE_URI env (the storage initializer and the server read it)
            containers = copy.deepcopy(pred.get("containers") or [])
            target = next((c for c in containers if c.get("name") == self.container), None)
            if target is None:
                raise RolloutError(f"InferenceService {self.namespace}/{self.isvc} has no container "
                                   f"{self.container!r} and no spec.predictor.model",
                                   "deploy infra/k8s/base/kserve.yaml or pass the container's name")
            env = [e for e in target.get("env") or [] if e.get("name") not in (STORAGE_ENV, VERSION_ENV)]
            target["env"] = [{"name": STORAGE_ENV, "value": storage_uri},
                             {"name": VERSION_ENV, "value": model_version}, *env]
            patch_pred["containers"] = containers  # a merge patch replaces the list whole
        return {"metadata": {"resourceVersion": isvc["metadata"]["resourceVersion"]},
                "spec": {"predictor": patch_pred}}

    def deploy_canary(self, storage_uri: str, model_version: str) -> None:
        """Start `storage_uri` as the canary revision with 0% of traffic and wait until it is ready."""
        isvc = self.get()
        annotations = (isvc.get("metadata") or {}).get("annotations") or {}
        if annotations.get(TAG_ROUTING) != "true":
            raise RolloutError(f"InferenceService {self.namespace}/{self.isvc} has no {TAG_ROUTING}: \"true\" "
                               "annotation: the quality probe cannot reach the canary and stable revisions apart",
                               "apply infra/k8s/base/kserve.yaml (it sets the annotation)")
        stable, _ = _revisions(isvc.get("status") or {})
        before = ((isvc.get("status") or {}).get("components") or {}).get("predictor", {}).get("latestCreatedRevision")
        stable = stable or before
        if not stable:
            raise RolloutError(f"InferenceService {self.namespace}/{self.isvc} has no rolled-out revision yet",
                               "wait until it is Ready (kubectl get isvc) before starting a canary")
        self._stable_rev, self._urls = stable, None
        self._patch(self.canary_patch(isvc, storage_uri, model_version))
        self.wait_ready(previous=before)

    def wait_ready(self, previous: str | None) -> str:
        """Wait until a revision newer than `previous` is created and ready; returns its name."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            isvc = self.get()
            meta, status = isvc.get("metadata") or {}, isvc.get("status") or {}
            pred = (status.get("components") or {}).get("predictor") or {}
            created, ready = pred.get("latestCreatedRevision"), pred.get("latestReadyRevision")
            observed = status.get("observedGeneration", 0) >= meta.get("generation", 0)
            if observed and created and created != previous and ready == created:
                return created
            failed = [c for c in status.get("conditions") or []
                      if c.get("status") == "False" and c.get("reason") in ("RevisionFailed", "RevisionMissing")]
            if failed:
                raise RolloutError(f"canary revision {created} failed: {failed[0].get('message', failed[0])}",
                                   "kubectl describe revision " + str(created))
            if time.monotonic() > deadline:
                raise RolloutError(f"canary revision of {self.namespace}/{self.isvc} not ready after "
                                   f"{self.ready_timeout_s:.0f}s (created {created}, ready {ready})",
                                   "check the predictor pods (kubectl get pods -l "
                                   f"serving.kserve.io/inferenceservice={self.isvc})")
            time.sleep(self.poll_s)

    # -- the Actuator interface ---------------------------------------------------------------------------
    def set_canary_weight(self, percent: int) -> None:
        if not isinstance(percent, int) or not 0 <= percent <= 100:
            raise RolloutError(f"canary weight {percent!r} is outside 0..100", "pass an integer percentage")
        self._patch({"spec": {"predictor": {"canaryTrafficPercent": percent}}})

    def abort(self) -> None:
        self.set_canary_weight(0)

    def promote(self) -> None:
        self.set_canary_weight(100)

    def revisions(self) -> tuple[str, str]:
        stable, canary = _revisions(self.get().get("status") or {})
        stable = self._stable_rev or stable
        if not stable or not canary or stable == canary:
            raise RolloutError(f"InferenceService {self.namespace}/{self.isvc} has no canary revision beside the "
                               f"stable one (stable {stable}, latest ready {canary})",
                               "start the canary first (deploy_canary) and wait until it is ready")
        return stable, canary

    def window(self, since: float, until: float) -> WindowStats:
        stable, canary = self.revisions()
        base = {"isvc": self.isvc, "namespace": self.namespace}
        return WindowStats(stable=self.prometheus.side_stats({**base, "revision": stable}, since, until),
                           canary=self.prometheus.side_stats({**base, "revision": canary}, since, until))

    def endpoints(self) -> tuple[str, str]:
        """(stable, canary) cluster-local addresses of the `prev` / `latest` tag routes, made private first;
        remembered once seen, since the `prev` target leaves the route at 100%."""
        pred = ((self.get().get("status") or {}).get("components") or {}).get("predictor") or {}
        tags = {t.get("tag"): t.get("url") for t in pred.get("traffic") or [] if t.get("tag") and t.get("url")}
        if tags.get("prev") and tags.get("latest"):
            self._urls = (self._private(tags["prev"]), self._private(tags["latest"]))
        if self._urls is None:
            raise RolloutError(f"InferenceService {self.namespace}/{self.isvc} shows no prev/latest tag URLs "
                               f"(traffic tags: {sorted(tags)})",
                               f"set the {TAG_ROUTING}: \"true\" annotation and start the canary below 100%")
        return self._urls

    def _private(self, tag_url: str) -> str:
        """Label the tag route's Kubernetes Service cluster-local (Knative then drops it from the public gateway)
        and return its in-cluster address. The Service is named like the first label of the tag's host."""
        from kubernetes.client.exceptions import ApiException

        parts = urlsplit(tag_url)
        service = (parts.hostname or "").split(".")[0]
        if not service:
            raise RolloutError(f"tag URL {tag_url!r} of {self.namespace}/{self.isvc} names no host",
                               "check the InferenceService's status.components.predictor.traffic")
        try:
            self.core.patch_namespaced_service(service, self.namespace,
                                               {"metadata": {"labels": {VISIBILITY: "cluster-local"}}})
        except ApiException as exc:
            fixes = {401: RBAC_FIX, 403: RBAC_FIX, 404: "wait until Knative has created the tag route's Service"}
            raise RolloutError(f"cannot make the tag route {service} cluster-local: HTTP {exc.status} {exc.reason}",
                               fixes.get(exc.status, "check the API server")) from None
        return f"{parts.scheme or 'http'}://{service}.{self.namespace}.svc.cluster.local"


def from_settings(settings: Any, **kw: Any) -> KServeActuator:
    """The actuator for the InferenceService and Prometheus in settings (LLMOPS_KSERVE_*, LLMOPS_PROMETHEUS_URL)."""
    return KServeActuator(settings.kserve_isvc, settings.kserve_namespace, PrometheusClient(settings.prometheus_url),
                          **kw)


def from_spec(spec: dict[str, Any], settings: Any) -> KServeActuator:
    """Rebuild the actuator a rollout recorded (`spec()`), e.g. for `llmops canary resume/abort`."""
    return KServeActuator(spec.get("isvc") or settings.kserve_isvc,
                          spec.get("namespace") or settings.kserve_namespace,
                          PrometheusClient(spec.get("prometheus_url") or settings.prometheus_url),
                          container=spec.get("container") or "kserve-container")
