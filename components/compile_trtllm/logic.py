"""The cluster's GPU TensorRT-LLM build, around the TRT-LLM image's entry point (cluster pipeline only).

Three steps, because the TRT-LLM image carries NVIDIA's own package versions and not the project's (no
MLflow client there): `stage_checkpoint` (CPU image) downloads the registered version's merged checkpoint
into a KFP artifact and says what to build (weights digest, build config from params.yaml
`engine.trtllm`, with this run's overrides); `compile_trtllm` (a container component on the TRT-LLM image,
on a GPU node) runs `python -m serving.engine_build.trtllm build` into an engine artifact; `attach_trtllm`
(CPU image) attaches that engine to the version: MLflow artifacts + the same `engine.tensorrt-llm.*` tags the
CPU step writes. kfp.local cannot run container components, so the local DAG keeps the CPU step's recorded
skip; `pipelines/_stages.py` adds these only when compiling for the cluster. This module never imports KFP.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llmops.errors import ModelError
from llmops.params import Params
from llmops.settings import Settings


def stage_checkpoint(settings: Settings, params: Params, *, name: str, version: str, out_dir: Path) -> dict[str, Any]:
    """Copy `name/version`'s merged checkpoint to `out_dir`; returns what the build step needs."""
    from components.compile_engine.logic import version_model_dir
    from llmops.modeling.hashing import weights_digest
    from serving.engine_build import trtllm as trt

    model_dir = version_model_dir(settings, name, version)
    trt.check_model(model_dir)
    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
    cfg = params.engine.trtllm
    return {"weights_digest": weights_digest(model_dir),
            "build_config": json.dumps(trt.TrtllmBuildConfig.from_params(cfg).to_dict(), sort_keys=True),
            "min_compute_capability": float(cfg.min_compute_capability)}


def attach_engine(settings: Settings, params: Params, *, name: str, version: str, engine_dir: Path,
                  parent_run_id: str | None = None) -> dict[str, str]:
    """Attach the built engine in `engine_dir` (its manifest written last by the build) to `name/version`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from components.compile_engine.logic import version_tags
    from llmops.tracking import step_run
    from serving.engine_build import trtllm as trt

    path = Path(engine_dir) / trt.MANIFEST
    if not path.is_file():
        raise ModelError(f"no TensorRT-LLM engine manifest in {engine_dir} (the build did not finish)",
                         "see the compile-trtllm step's log; rerun the pipeline once the GPU node is fixed")
    manifest = json.loads(path.read_text())
    uris: dict[str, str] = {}
    with step_run(settings, parent_run_id, "attach_trtllm") as run_id:
        mlflow.set_tags({"model.name": name, "model.version": str(version)})
        if params.engine.log_artifacts:
            mlflow.log_artifacts(str(engine_dir), artifact_path=f"engines/{manifest['name']}")
            uris[trt.KIND] = f"runs:/{run_id}/engines/{manifest['name']}"
        tags = version_tags({trt.KIND: manifest | {"cache_hit": False}}, uris)
        mlflow.set_tags(tags)
    client = MlflowClient(settings.tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return tags
