"""The whole finetune DAG (kfp.local) on a tiny Qwen2, not Llama: its own chat template (ChatML without
SmolLM's system turn), q/k/v biases, `lora.target_modules: auto` resolving to its attention projections,
then evaluate, register (merged model verified token for token), the CPU engine step and the first-version
canary step. A shortened recipe of test_finetune_pipeline.py (one worker, fewer steps and examples)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops.settings import Settings
from tests.integration.test_finetune_pipeline import _run, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory, base_tokenizer_dir: Path) -> Path:
    from llmops.modeling.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("qwen2") / "model", base_tokenizer_dir, family="qwen2")


def test_pipeline_on_a_qwen2_checkpoint(settings: Settings, tiny_qwen2_dir: Path) -> None:
    from llmops.registry.client import Registry

    # The safety set at its params.yaml answer length, not tiny_overrides' 8 tokens: read from 8 tokens, this tiny
    # Qwen2's benign refusals rose 50% -> 75% after training, passing the gate only as not beyond chance.
    tiny = [o for o in tiny_overrides(tiny_qwen2_dir) if not o.startswith("eval.safety.")]
    overrides = [*tiny, "train.num_workers=1", "train.max_steps=6", "train.batch_size=4",
                 "train.max_train_examples=160", "eval.max_examples=12", "eval.gen_examples=2",
                 "eval.max_new_tokens=6", "engine.kinds=[cpu]", "engine.equivalence.prompts=2",
                 "engine.equivalence.new_tokens=8", "engine.benchmark.batch_sizes=[1]"]
    ok, summary = _run(settings, overrides)
    assert ok, summary
    assert summary["steps"] == dict.fromkeys(("validate_data", "train", "evaluate", "register", "compile_engine",
                                              "canary_deploy"), "FINISHED")
    assert summary["train"]["val_loss"] < summary["train"]["val_loss_before"]
    assert summary["eval"]["candidate"]["perplexity"] < summary["eval"]["base"]["perplexity"]

    registry = Registry(settings)
    version = registry.show(f"{settings.registered_model}@champion")
    tags = version["tags"]
    assert tags["verify.greedy_match"] == "true"  # the logged merged Qwen2 answers like base + adapter
    import mlflow

    train_run = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                 if r.data.tags.get("llmops.step") == "train"]
    assert train_run and train_run[0].data.params["lora.target_modules"] == "auto"
    adapter = mlflow.artifacts.download_artifacts(f"runs:/{version['run_id']}/adapter/adapter_config.json")
    assert sorted(json.loads(Path(adapter).read_text())["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    # the CPU engine either serves Qwen2 (equivalent to eager) or says to serve it with eager; never wrong tokens
    cpu = tags["engine.cpu"]
    assert ("eager" in cpu and cpu.startswith(("skipped", "rejected"))) or \
        tags["engine.cpu.equivalence.identical"] == "2/2", cpu
