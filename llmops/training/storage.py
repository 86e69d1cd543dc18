"""Files between local paths and shared storage URIs (s3://, gs://, a mount), and the base checkpoint for Ray
workers that do not share the driver's disk.

On one machine (or with a shared mount) every Ray worker reads the base checkpoint from the driver's path.
On a real cluster the workers run in other pods: when the Ray storage is remote (the cluster profile's
`LLMOPS_RAY_STORAGE=s3://...`, already shared for checkpoints), the driver uploads the checkpoint once to
`<storage>/base-models/<weights digest>/` (a marker written last) and each worker pulls it into a node-local
cache keyed by that digest, checks the digest, and loads it from there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from llmops.errors import LlmopsError, ModelError

STAGE_DIR = "base-models"
MARKER = "_COMPLETE"


def _resolve(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).resolve())


def copy(src: str, dst: str) -> None:
    """Copy a file or directory between local paths and remote URIs (pyarrow filesystems)."""
    from pyarrow import fs

    try:
        src_fs, src_path = fs.FileSystem.from_uri(_resolve(src))
        dst_fs, dst_path = fs.FileSystem.from_uri(_resolve(dst))
        is_dir = src_fs.get_file_info(src_path).type == fs.FileType.Directory
        # Local filesystems need the target folder to exist; object stores ignore this.
        dst_fs.create_dir(dst_path if is_dir else dst_path.rsplit("/", 1)[0], recursive=True)
        fs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)
    except (OSError, ValueError) as exc:
        raise LlmopsError(f"cannot copy {src} -> {dst}: {exc}", "check the URI and the storage credentials") from exc


def _exists(uri: str) -> bool:
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(_resolve(uri))
    return filesystem.get_file_info(path).type != fs.FileType.NotFound


def share_base_model(storage: str | None, model_dir: Path, digest: str) -> str | None:
    """Upload the base checkpoint to remote Ray storage once (per weights digest); its URI, or None when the
    storage is a local path (the workers share the driver's disk)."""
    from pyarrow import fs

    if not storage or "://" not in storage:
        return None
    uri = f"{storage.rstrip('/')}/{STAGE_DIR}/{digest}"
    if not _exists(f"{uri}/{MARKER}"):
        copy(str(model_dir), uri)
        filesystem, path = fs.FileSystem.from_uri(f"{uri}/{MARKER}")
        with filesystem.open_output_stream(path) as out:
            out.write(digest.encode())
    return uri


def worker_model_dir(config: dict[str, Any]) -> Path:
    """The base checkpoint on this worker: the driver's path, or (with `base_model_uri`) a node-local copy
    pulled from shared storage, verified against the driver's weights digest."""
    from llmops.modeling.hashing import weights_digest

    uri, digest = config.get("base_model_uri"), config.get("base_model_digest")
    if not uri:
        return Path(config["base_model_dir"])
    local = Path(tempfile.gettempdir()) / "llmops-base-models" / str(digest)
    if (local / MARKER).is_file():
        return local
    staging = local.with_name(f"{local.name}.{os.getpid()}.partial")
    copy(uri, str(staging))
    if weights_digest(staging) != digest:
        raise ModelError(f"the base checkpoint pulled from {uri} does not match the driver's weights {digest}",
                         f"delete {uri} so the next run uploads it again")
    try:
        staging.rename(local)  # atomic; another worker on this node may have won the race
    except OSError:
        if not (local / MARKER).is_file():
            raise
    return local
