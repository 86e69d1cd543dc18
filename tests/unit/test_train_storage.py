"""The base checkpoint for Ray workers in other pods: uploaded once to the shared Ray storage by weights digest,
pulled into a node-local cache by each worker and verified; a local storage path means a shared disk (no copy).
A `file://` URI stands in for s3:// here (the same pyarrow code path; the real S3 run is in
tests/integration/test_ray_cluster.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmops.errors import ModelError
from llmops.modeling.hashing import weights_digest
from llmops.training.storage import MARKER, share_base_model, worker_model_dir


def test_remote_storage_shares_the_checkpoint_and_workers_pull_a_verified_copy(tiny_model_dir: Path, tmp_path: Path,
                                                                                monkeypatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "node"))
    digest = weights_digest(tiny_model_dir)
    assert share_base_model(str(tmp_path / "local-storage"), tiny_model_dir, digest) is None  # shared disk
    assert worker_model_dir({"base_model_dir": str(tiny_model_dir)}) == tiny_model_dir

    storage = f"file://{tmp_path / 'bucket'}/ray-results"
    uri = share_base_model(storage, tiny_model_dir, digest)
    assert uri == f"{storage}/base-models/{digest}"
    shared = tmp_path / "bucket" / "ray-results" / "base-models" / digest
    assert (shared / MARKER).read_text() == digest and weights_digest(shared) == digest
    config = {"base_model_dir": "/driver/only/path", "base_model_uri": uri, "base_model_digest": digest}
    local = worker_model_dir(config)
    assert local.parent == tmp_path / "node" / "llmops-base-models" and weights_digest(local) == digest
    assert worker_model_dir(config) == local  # cached on the node

    # A tampered upload is refused, naming the fix.
    shutil.rmtree(tmp_path / "node")
    for f in shared.glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ModelError, match="does not match the driver's weights"):
        worker_model_dir(config)
