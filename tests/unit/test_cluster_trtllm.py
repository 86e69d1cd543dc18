"""The cluster pipeline's GPU TensorRT-LLM build: a container step on the TRT-LLM image from settings, with the
GPU type/count, node selector and tolerations from params.yaml `cluster.steps.compile_trtllm`, fed by a CPU
step that stages the version's checkpoint and followed by one that attaches the engine. The local DAG (which
kfp.local runs, and which cannot run container components) has none of it. No GPU or KFP server here: what
is checked is the compiled YAML, as KFP would submit it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmops.errors import ModelError
from llmops.settings import Settings
from pipelines._resources import step_settings
from pipelines.runner import compile_finetune, compiled_path

TRT_STEPS = ("stage-checkpoint", "compile-trtllm", "attach-trtllm")


def _docs(path: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _all_tasks(spec: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}

    def walk(dag: dict) -> None:
        for name, task in dag.get("tasks", {}).items():
            out[name] = task
            comp = spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                walk(comp["dag"])

    walk(spec["root"]["dag"])
    return out


@pytest.mark.parametrize("pipeline", ["finetune", "retrain"])
def test_cluster_yaml_builds_trtllm_on_a_gpu_in_the_trtllm_image(settings: Settings, pipeline: str) -> None:
    from kfp.components import load_component_from_file

    path = compiled_path("cluster", pipeline)
    load_component_from_file(str(path))  # the KFP SDK reads it
    spec, k8s = _docs(path)
    want = step_settings(settings.params().cluster, "compile_trtllm")
    assert want.gpus >= 1 and want.accelerator
    container = spec["deploymentSpec"]["executors"]["exec-compile-trtllm"]["container"]
    assert container["image"] == settings.trtllm_image
    assert container["command"] == ["python", "-m", "serving.engine_build.trtllm"] and container["args"][0] == "build"
    args = dict(zip(container["args"][1::2], container["args"][2::2], strict=True))
    assert set(args) == {"--model-dir", "--out", "--weights-digest", "--config", "--min-compute-capability"}
    assert "checkpoint" in args["--model-dir"] and "engine" in args["--out"]
    res = container["resources"]
    assert (res["accelerator"]["resourceType"], int(res["accelerator"]["resourceCount"])) == \
        (want.accelerator, want.gpus)
    assert (res["resourceCpuRequest"], res["resourceMemoryLimit"]) == (want.cpu, want.memory_limit)
    assert k8s["exec-compile-trtllm"]["nodeSelector"]["labels"] == want.node_selector
    assert k8s["exec-compile-trtllm"]["tolerations"] == [t.model_dump(exclude_none=True) for t in want.tolerations]
    for cpu_step in ("exec-stage-checkpoint", "exec-attach-trtllm"):  # the CPU image, no GPU
        c = spec["deploymentSpec"]["executors"][cpu_step]["container"]
        assert c["image"] == settings.image and "accelerator" not in c["resources"]
    tasks = _all_tasks(spec)
    assert set(TRT_STEPS) <= set(tasks)
    assert tasks["compile-trtllm"]["inputs"]["artifacts"]["checkpoint"]["taskOutputArtifact"]["producerTask"] \
        == "stage-checkpoint"
    assert {"compile-trtllm", "compile-engine"} <= set(tasks["attach-trtllm"]["dependentTasks"])


def test_local_yaml_has_no_trtllm_container_step_and_it_can_be_turned_off(settings: Settings,
                                                                          tmp_path: Path) -> None:
    local = compiled_path("local").read_text()
    assert all(step not in local for step in TRT_STEPS)
    off = compile_finetune(tmp_path / "f.yaml", cluster=settings.params(["cluster.trtllm_engine=false"]).cluster)
    assert all(step not in off.read_text() for step in TRT_STEPS)


def test_attach_refuses_an_engine_dir_without_a_manifest(settings: Settings, tmp_path: Path) -> None:
    from components.compile_trtllm.logic import attach_engine

    with pytest.raises(ModelError, match="no TensorRT-LLM engine manifest"):
        attach_engine(settings, settings.params(), name="m", version="1", engine_dir=tmp_path)
