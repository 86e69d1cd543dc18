"""KFP wrappers of the cluster's GPU TensorRT-LLM build (see logic.py): stage -> build (TRT-LLM image) -> attach."""

from typing import NamedTuple

from kfp import dsl

from components._image import BASE_IMAGE, TRTLLM_IMAGE


@dsl.component(base_image=BASE_IMAGE)
def stage_checkpoint(parent_run_id: str, overrides: list, model_version: str, checkpoint: dsl.Output[dsl.Model]
                     ) -> NamedTuple("Staged", [("weights_digest", str), ("build_config", str),
                                                ("min_compute_capability", float)]):
    """The registered version's merged checkpoint as an artifact, and what to build from it."""
    from collections import namedtuple
    from pathlib import Path

    from components.compile_trtllm.logic import stage_checkpoint as stage
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("stage_checkpoint", parent_run_id) as step:
        settings = get_settings()
        out = stage(settings, settings.params(overrides), name=settings.registered_model, version=model_version,
                    out_dir=Path(checkpoint.path))
        step.figures(version=model_version, weights=out["weights_digest"][:12])
    return namedtuple("Staged", ["weights_digest", "build_config", "min_compute_capability"])(
        out["weights_digest"], out["build_config"], out["min_compute_capability"])


@dsl.container_component
def compile_trtllm(checkpoint: dsl.Input[dsl.Model], weights_digest: str, build_config: str,
                   min_compute_capability: float, engine: dsl.Output[dsl.Artifact]):
    """`python -m serving.engine_build.trtllm build` in the TRT-LLM image on a GPU node (its preflight fails
    the step, naming what is missing, rather than writing a fake engine)."""
    return dsl.ContainerSpec(
        image=TRTLLM_IMAGE, command=["python", "-m", "serving.engine_build.trtllm"],
        args=["build", "--model-dir", checkpoint.path, "--out", engine.path, "--weights-digest", weights_digest,
              "--config", build_config, "--min-compute-capability", min_compute_capability])


@dsl.component(base_image=BASE_IMAGE)
def attach_trtllm(parent_run_id: str, overrides: list, model_version: str, engine: dsl.Input[dsl.Artifact]) -> str:
    """Attach the built engine to the version (MLflow artifacts + engine.tensorrt-llm.* tags); returns its name."""
    from pathlib import Path

    from components.compile_trtllm.logic import attach_engine
    from llmops.settings import get_settings
    from llmops.steplog import step_report

    with step_report("attach_trtllm", parent_run_id) as step:
        settings = get_settings()
        tags = attach_engine(settings, settings.params(overrides), name=settings.registered_model,
                             version=model_version, engine_dir=Path(engine.path), parent_run_id=parent_run_id)
        step.figures(engine=tags["engine.tensorrt-llm"])
    return tags["engine.tensorrt-llm"]
