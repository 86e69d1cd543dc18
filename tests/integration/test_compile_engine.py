"""compile_engine on a registered tiny model: CPU engine built, equivalence-checked and attached to the version
(artifacts + tags), TensorRT-LLM recorded as skipped on this machine, and a second run is a cache hit."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from components.compile_engine.logic import compile_engines
from llmops.settings import Settings

FAST = ["engine.equivalence.prompts=3", "engine.equivalence.new_tokens=12", "engine.benchmark.new_tokens=6",
        "engine.benchmark.batch_sizes=[1,3]", "engine.cpu_runtime=onnxruntime", "engine.quantized.records=4",
        "engine.quantized.new_tokens=8"]


def _register_tiny(settings: Settings, model_dir: Path) -> tuple[str, str]:
    """A real model version whose artifact is the tiny checkpoint (config, safetensors, tokenizer)."""
    import mlflow

    from llmops.tracking import configure, ensure_experiment

    configure(settings)
    with mlflow.start_run(experiment_id=ensure_experiment(settings)) as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
    client = mlflow.tracking.MlflowClient(settings.tracking_uri)
    client.create_registered_model(settings.registered_model)
    mv = client.create_model_version(settings.registered_model, source=f"{run.info.artifact_uri}/model",
                                     run_id=run.info.run_id)
    return settings.registered_model, str(mv.version)


def test_compile_engine_attaches_a_checked_engine_and_records_the_trtllm_skip(settings: Settings,
                                                                              tiny_model_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    name, version = _register_tiny(settings, tiny_model_dir)
    params = settings.params(FAST)
    first = compile_engines(settings, params, name=name, version=version)

    cpu = first["engines"]["cpu"]
    assert cpu["cache_hit"] is False and cpu["runtime"] == "onnxruntime"
    assert cpu["equivalence"]["identical_rate"] == 1.0 and cpu["equivalence"]["prompts"] == 3
    assert cpu["benchmark"]["batch1_tokens_per_s"] > 0 and cpu["benchmark"]["batch3_ttft_s"] > 0
    assert Path(cpu["engine_dir"]).parent == settings.engines_dir

    trt = first["engines"]["tensorrt-llm"]
    if importlib.util.find_spec("tensorrt_llm") is None or not shutil.which("nvidia-smi"):
        assert trt["skipped"] and trt["record"].startswith("engine=tensorrt-llm skipped: ")
        assert not list(settings.engines_dir.glob("tensorrt-llm-*"))  # never a fake engine

    tags = MlflowClient(settings.tracking_uri).get_model_version(name, version).tags
    assert tags["engine.cpu"] == cpu["name"]
    assert tags["engine.cpu.runtime_version"] == cpu["runtime_version"]
    assert tags["engine.cpu.hardware"].startswith("cpu-")
    assert tags["engine.cpu.build_config_hash"] == cpu["build_config_hash"]
    assert tags["engine.cpu.equivalence.identical"] == "3/3"
    assert float(tags["engine.cpu.bench.batch1_tokens_per_s"]) > 0
    assert tags["engine.cpu.cache_hit"] == "false"
    assert tags["engine.tensorrt-llm"].startswith("skipped: ") or tags["engine.tensorrt-llm"].startswith("tensorrt")
    # the int8 engine's gate verdict is on the version either way (the tiny random model may breach it)
    assert tags["engine.cpu-int8.quality.passed"] in ("true", "false") and "engine.cpu-int8" in tags
    artifacts = {a.path for a in MlflowClient(settings.tracking_uri).list_artifacts(first["run_id"],
                                                                                     f"engines/{cpu['name']}")}
    assert f"engines/{cpu['name']}/manifest.json" in artifacts and f"engines/{cpu['name']}/decoder.onnx" in artifacts

    from llmops.modeling.hashing import weights_digest

    assert cpu["weights_digest"] == weights_digest(tiny_model_dir)  # built from this registry's version

    second = compile_engines(settings, params, name=name, version=version)
    assert second["engines"]["cpu"]["cache_hit"] is True and second["engines"]["cpu"]["checks_reused"] is True
    assert MlflowClient(settings.tracking_uri).get_model_version(name, version).tags["engine.cpu.cache_hit"] == "true"


def test_an_engine_that_fails_equivalence_is_rejected_and_removed(settings: Settings, tiny_model_dir: Path) -> None:
    """Impossible tolerance (identical rate > 1): the version records the rejection with its figures, the engine
    is gone from the store (no server can pick it), and the step itself does not fail."""
    from mlflow.tracking import MlflowClient

    name, version = _register_tiny(settings, tiny_model_dir)
    params = settings.params([*FAST, "engine.equivalence.min_identical_rate=1.01", "engine.kinds=[cpu]"])
    result = compile_engines(settings, params, name=name, version=version)
    cpu = result["engines"]["cpu"]
    assert cpu["rejected"] and "failed equivalence: 3/3 prompts identical" in cpu["reason"]
    tags = MlflowClient(settings.tracking_uri).get_model_version(name, version).tags
    assert tags["engine.cpu"].startswith("rejected: onnxruntime engine failed equivalence")
    assert tags["engine.cpu.equivalence.identical"] == "3/3"
    assert not [p for p in settings.engines_dir.glob("onnxruntime-*") if (p / "manifest.json").exists()]
