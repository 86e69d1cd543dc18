"""Remove buildah's stale cache images: unnamed images whose layer no named image builds on.

With the vfs storage driver every layer is a full copy of the filesystem (GBs for these images), so each
code change would leave a few GB of layers no build can reuse. The layers of named images, and the cache
images along their chains (what `--layers` reuses next time), stay. Called by build.sh before and after a buildah
build (before: what an interrupted build left).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def main(buildah: list[str]) -> int:
    info = json.loads(subprocess.run([*buildah, "info"], capture_output=True, text=True, check=True).stdout)
    root = Path(info["store"]["GraphRoot"])
    driver = info["store"]["GraphDriverName"]
    images = json.loads((root / f"{driver}-images" / "images.json").read_text())
    layers = {la["id"]: la.get("parent") for la in json.loads((root / f"{driver}-layers" / "layers.json").read_text())}
    keep: set[str] = set()
    for image in images:
        layer = image.get("layer") if image.get("names") else None
        while layer and layer not in keep:
            keep.add(layer)
            layer = layers.get(layer)
    stale = [image["id"] for image in images if not image.get("names") and image.get("layer") not in keep]
    for image_id in stale:  # buildah refuses images a container still uses; that is fine
        subprocess.run([*buildah, "rmi", image_id], capture_output=True)
    if stale:
        print(f"==> removed {len(stale)} stale cache image(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["buildah"]))
