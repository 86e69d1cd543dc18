"""Register step on a tiny model + a real PEFT LoRA adapter, against the real MLflow sqlite registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.errors import ModelError
from llmops.lineage import collect_lineage
from llmops.registry import Registry
from llmops.settings import Settings

PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@pytest.fixture(scope="module")
def tiny_adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with non-zero B matrices, so it really changes the tiny model's outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_register_candidate_versions_aliases_lineage_and_roundtrip(
    settings: Settings, tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path
) -> None:
    import mlflow
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.register.logic import greedy_tokens, register_candidate
    from llmops.tracking import start_pipeline_run

    params = settings.params()
    parent = start_pipeline_run(settings, "test-register")
    lineage = collect_lineage(settings, params, kfp_run_id="kfp-run-1", mlflow_run_id=parent,
                              base_model_id="tiny-llama", base_model_sha256="0" * 64)
    metrics = {"eval.test_ppl": 123.456, "eval.rouge_l": 0.25}

    first = register_candidate(settings, params, adapter_dir=tiny_adapter_dir, base_model_dir=tiny_model_dir,
                               metrics=metrics, lineage=lineage, parent_run_id=parent)
    name = settings.registered_model
    assert first["name"] == name and first["version"] == "1"
    assert first["aliases"] == ["challenger", "champion"]  # first version of the name: champion too
    assert first["model_uri"] == f"models:/{name}/1" and first["greedy_match"] is True

    second = register_candidate(settings, params, adapter_dir=tiny_adapter_dir, base_model_dir=tiny_model_dir,
                                metrics=metrics, lineage=lineage, parent_run_id=parent)
    assert second["version"] == "2" and second["aliases"] == ["challenger"]

    reg = Registry(settings)
    assert reg.alias_version(name, "champion") == "1" and reg.alias_version(name, "challenger") == "2"
    events = reg.history(name)
    assert [(e["alias"], e["action"], e["from_version"], e["to_version"]) for e in events] == [
        ("challenger", "register", None, "1"), ("champion", "register", None, "1"),
        ("challenger", "register", "1", "2")]
    assert "kfp-run-1" in events[0]["reason"]

    shown = reg.show(f"{name}@challenger")
    tags = shown["tags"]
    for key, value in lineage.items():
        assert tags[key] == value
    assert tags["git.commit"] and tags["params.hash"] == params.digest()
    assert tags["pipeline.mlflow_run_id"] == parent and tags["base_model.sha256"] == "0" * 64
    assert float(tags["metric.eval.test_ppl"]) == pytest.approx(123.456)
    assert shown["run_id"] == second["run_id"]
    run = mlflow.get_run(second["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["llmops.step"] == "register"

    # The registered version loads back and answers like base + adapter (and unlike the bare base).
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    bare = greedy_tokens(base, tokenizer, 8)
    expected = greedy_tokens(PeftModel.from_pretrained(base, tiny_adapter_dir).eval(), tokenizer, 8)
    assert expected != bare, "the test adapter must change the output, or the round-trip check proves nothing"
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/2", dst_path=str(tmp_path / "m")))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)
    assert not [p for p in files if p.suffix in PICKLES]
    loaded = mlflow.transformers.load_model(str(local), return_type="components")
    assert greedy_tokens(loaded["model"].eval(), loaded["tokenizer"], 8) == expected

    # The adapter comes back as a PEFT adapter evaluation can load on the base.
    adapter = reg.download_adapter(f"{name}@champion", tmp_path / "champion")
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    base2 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert greedy_tokens(PeftModel.from_pretrained(base2, adapter).eval(), tokenizer, 8) == expected


def test_register_candidate_rejects_bad_inputs(
    settings: Settings, tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path
) -> None:
    from components.register.logic import register_candidate

    params = settings.params()
    kwargs = {"metrics": {}, "lineage": {}, "parent_run_id": None}
    with pytest.raises(ModelError, match="adapter"):
        register_candidate(settings, params, adapter_dir=tmp_path, base_model_dir=tiny_model_dir, **kwargs)
    with pytest.raises(ModelError, match="base model"):
        register_candidate(settings, params, adapter_dir=tiny_adapter_dir, base_model_dir=tmp_path, **kwargs)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in tiny_adapter_dir.iterdir():
        (pickled / f.name).write_bytes(f.read_bytes())
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="pickled"):
        register_candidate(settings, params, adapter_dir=pickled, base_model_dir=tiny_model_dir, **kwargs)
