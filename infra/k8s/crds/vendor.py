"""Vendor the OpenAPI schemas of the CRDs our manifests instantiate, from the upstream CRD YAMLs.

Keeps only what validation needs: group, kind, each served version's `openAPIV3Schema`, with the
`description` strings dropped (they are most of the bytes and never affect validation). Run it on a
checkout of each project at the pinned tag (SOURCES), e.g.

    git -C kserve show v0.20.0:config/crd/full/serving.kserve.io_inferenceservices.yaml > /tmp/isvc.yaml
    python infra/k8s/crds/vendor.py /tmp/isvc.yaml serving.kserve.io_inferenceservices.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

# Where each vendored schema comes from (repo, tag, commit, path); tests/infra reads the schemas only.
SOURCES = {
    "serving.kserve.io_inferenceservices.json": (
        "github.com/kserve/kserve", "v0.20.0", "1fb781055dd1567164358233e1125142ca6ef1fe",
        "config/crd/full/serving.kserve.io_inferenceservices.yaml"),
    "ray.io_rayclusters.json": (
        "github.com/ray-project/kuberay", "v1.7.0", "59d663aeec13760646da3db9c1cf8cfe883e30b7",
        "ray-operator/config/crd/bases/ray.io_rayclusters.yaml"),
    "ray.io_rayjobs.json": (
        "github.com/ray-project/kuberay", "v1.7.0", "59d663aeec13760646da3db9c1cf8cfe883e30b7",
        "ray-operator/config/crd/bases/ray.io_rayjobs.yaml"),
    "monitoring.coreos.com_servicemonitors.json": (
        "github.com/prometheus-operator/prometheus-operator", "v0.93.0", "f8fafd475f3d132e239432ae6172de60a6cb6516",
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"),
    "monitoring.coreos.com_prometheusrules.json": (
        "github.com/prometheus-operator/prometheus-operator", "v0.93.0", "f8fafd475f3d132e239432ae6172de60a6cb6516",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"),
}


def _strip(node):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def vendor(crd_yaml: Path, out_name: str) -> dict:
    crd = yaml.safe_load(crd_yaml.read_text())
    repo, tag, commit, path = SOURCES[out_name]
    return {
        "source": {"repo": repo, "tag": tag, "commit": commit, "path": path},
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "versions": {v["name"]: _strip(v["schema"]["openAPIV3Schema"]) for v in crd["spec"]["versions"]
                     if v.get("served", True)},
    }


if __name__ == "__main__":
    src, name = Path(sys.argv[1]), sys.argv[2]
    out = Path(__file__).with_name(name)
    out.write_text(json.dumps(vendor(src, name), separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{out}: {out.stat().st_size} bytes")
