"""The retrain DAG: compiled from the same stage wiring as finetune (same component specs, same executors, same
artifact edges), plus its own recipe and refresh steps; the recipe is the champion's, checked against its lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmops.errors import LlmopsError, ModelError
from llmops.settings import Settings
from pipelines.runner import compile_pipeline, compiled_path

SHARED = ["validate-data", "train", "evaluate", "register", "compile-engine", "canary-deploy"]


def _spec(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of every (nested) DAG by name."""
    out = {}
    for comp in [spec["root"], *spec["components"].values()]:
        out |= (comp.get("dag") or {}).get("tasks", {})
    return out


def test_finetune_and_retrain_share_every_component_spec_and_edge() -> None:
    fine, re = _spec(compiled_path("local", "finetune")), _spec(compiled_path("local", "retrain"))
    assert re["pipelineInfo"]["name"] == "llmops-retrain"
    for name in ["start-run", "finish-run", *SHARED]:
        assert re["components"][f"comp-{name}"] == fine["components"][f"comp-{name}"], name
        assert re["deploymentSpec"]["executors"][f"exec-{name}"] == fine["deploymentSpec"]["executors"][f"exec-{name}"]
    ft, rt = _tasks(fine), _tasks(re)
    for name in SHARED:  # the same artifacts flow between the shared steps, under the same gate...
        assert rt[name]["componentRef"] == ft[name]["componentRef"]
        arts = lambda t: json.dumps(t.get("inputs", {}).get("artifacts")).replace("train-dpo", "train")  # noqa: E731
        assert arts(rt[name]) == arts(ft[name]), name
    # ...except that retrain's evaluate and register take the DPO stage's adapter, which starts from train's
    assert rt["train-dpo"]["inputs"]["artifacts"]["sft_adapter"]["taskOutputArtifact"] == {
        "outputArtifactKey": "adapter", "producerTask": "train"}
    assert rt["evaluate"]["inputs"]["artifacts"]["adapter"]["taskOutputArtifact"]["producerTask"] == "train-dpo"
    assert "train-dpo" not in ft
    assert rt["condition-2"]["triggerPolicy"] == ft["condition-2"]["triggerPolicy"]  # the gate
    # what only retrain has: the recipe feeds every step's overrides, refresh_data feeds the data dir
    assert {"champion-recipe", "refresh-data"} <= set(rt) and not {"champion-recipe", "refresh-data"} & set(ft)
    assert rt["validate-data"]["inputs"]["parameters"]["data_dir"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "refresh-data"}
    for name in ["start-run", *SHARED[:3]]:
        assert rt[name]["inputs"]["parameters"]["overrides"]["taskOutputParameter"] == {
            "outputParameterKey": "overrides", "producerTask": "champion-recipe"}, name


def test_retrain_compiles_for_the_cluster_with_the_step_settings(settings: Settings, tmp_path: Path) -> None:
    out = compile_pipeline("retrain", tmp_path / "r.yaml", cluster=settings.params().cluster)
    assert out.read_text() == compiled_path("cluster", "retrain").read_text()
    docs = list(yaml.safe_load_all(out.read_text()))
    train = docs[0]["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert train["accelerator"]["resourceCount"] == "1" or train["accelerator"].get("count") == "1"
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {"exec-champion-recipe", "exec-refresh-data", "exec-train", "exec-train-dpo"} <= set(platform)
    executors = docs[0]["deploymentSpec"]["executors"]  # the DPO stage trains like train: the same pod settings
    assert executors["exec-train-dpo"]["container"]["resources"] == train


def _champion(settings: Settings, overrides: list[str], tags: dict[str, str]):
    """A registered champion whose pipeline run recorded `overrides` (as start_run does); returns the client."""
    from llmops.registry.client import Registry
    from llmops.tracking import ensure_experiment

    registry = Registry(settings)
    client = registry.client
    run = client.create_run(ensure_experiment(settings), tags={"llmops.overrides_json": json.dumps(overrides)})
    name = settings.registered_model
    client.create_registered_model(name)
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                     tags={"pipeline.mlflow_run_id": run.info.run_id, **tags})
    registry.promote(name, mv.version, reason="test")
    return client


def test_recipe_is_the_champions_checked_against_its_lineage(settings: Settings, tiny_model_dir: Path) -> None:
    """One registry for every case (creating an MLflow store costs seconds)."""
    from components.retrain.logic import champion_recipe
    from llmops.modeling.base import base_model_sha256

    with pytest.raises(LlmopsError, match="has no champion to retrain"):
        champion_recipe(settings, [])
    base = [f"model.base={tiny_model_dir}", "train.max_steps=8", "lora.r=4"]
    client = _champion(settings, base, {"base_model.id": str(tiny_model_dir),
                                        "base_model.sha256": base_model_sha256(tiny_model_dir)})
    name = settings.registered_model
    recipe = champion_recipe(settings, ["train.max_steps=3"])
    assert recipe.overrides == [*base, "train.max_steps=3"]  # the champion's, then this run's (later wins)
    assert recipe.champion == f"{name}/1"
    params = settings.params(recipe.overrides)
    assert (params.lora.r, params.train.max_steps) == (4, 3)

    client.set_model_version_tag(name, "1", "base_model.sha256", "0" * 64)  # its base's weights changed since
    with pytest.raises(ModelError, match="is not the checkpoint champion"):
        champion_recipe(settings, [])

    client.set_model_version_tag(name, "1", "base_model.id", "/elsewhere/base")  # trained on another base
    with pytest.raises(ModelError, match="was trained on '/elsewhere/base'"):
        champion_recipe(settings, [])
    chosen = champion_recipe(settings, [f"model.base={tiny_model_dir}"])  # a base chosen on purpose is allowed
    assert chosen.overrides[-1] == f"model.base={tiny_model_dir}"
