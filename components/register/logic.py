"""Register step: turn an evaluated LoRA adapter into an MLflow model version with lineage.

The version holds both forms a consumer needs: the merged model (base + adapter folded in, logged with
the transformers flavor, safetensors only) for serving and engine compilation, and the adapter itself
as the run's `adapter/` artifact (kilobytes) so evaluation can load a champion as base + adapter.
Before a version is created the logged model is loaded back and must produce the same greedy tokens
as base + adapter, so a broken artifact never gets a version number. The new version gets the
`challenger` alias (and `champion` when the name has none yet and `registry.first_champion`), both
through the audited alias path. This module never imports KFP: the KFP wrapper imports it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from llmops.errors import ModelError
from llmops.modeling.hashing import PICKLE_SUFFIXES
from llmops.params import Params
from llmops.settings import Settings

MODEL_ARTIFACT = "model"
ADAPTER_FILES = ("*.safetensors", "*.json", "*.jinja", "README.md")  # what a PEFT adapter dir may carry
# A fixed chat-formatted probe: the logged model must answer it token for token like base + adapter.
# What the evaluate step hands on for the model card besides numbers (components/evaluate/component.py).
EVALUATION_KEYS = ("gate.summary", "eval.judge", "eval.safety_set")
PROBE_RECORD = {"instruction": "What does the Python function sorted() return?", "input": ""}


def _pip_requirements() -> list[str]:
    """Explicit requirements (mlflow's inference otherwise looks for torchvision and fails)."""
    from importlib.metadata import version

    def base(pkg: str) -> str:
        return version(pkg).split("+")[0]  # torch 2.13.0+cpu -> 2.13.0: the same pin serves GPU images

    return [f"torch=={base('torch')}", f"transformers=={base('transformers')}",
            f"safetensors=={base('safetensors')}", f"accelerate=={base('accelerate')}"]


def _check_dir(path: Path, required: str, what: str) -> Path:
    path = Path(path)
    if not (path / required).is_file():
        raise ModelError(f"{what} not found: {path / required} is missing",
                         f"pass the directory that holds {required}")
    return path


def _pickled_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)


def greedy_tokens(model, tokenizer, max_new_tokens: int) -> list[int]:
    """Greedy continuation of the probe prompt (new token ids only)."""
    import torch

    from llmops.modeling.prompts import format_prompt

    enc = tokenizer(format_prompt(tokenizer, PROBE_RECORD), return_tensors="pt", add_special_tokens=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=pad)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def register_candidate(
    settings: Settings,
    params: Params,
    *,
    adapter_dir: Path,
    base_model_dir: Path,
    metrics: dict[str, float],
    lineage: dict[str, str],
    parent_run_id: str | None,
    evaluation: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Merge, log, verify and register the candidate, with its model card (`evaluation`: the evaluate step's
    gate summary, safety set and judge notes); returns {name, version, aliases, run_id, model_uri} plus
    `logged_model_uri`, `greedy_match`, `verify_tokens`, `card` (artifact path) and `seconds`."""
    import mlflow

    from components.register.card import build_card
    from llmops.registry import Registry, card
    from llmops.tracking import step_run

    t0 = time.perf_counter()
    adapter_dir, base_model_dir = _checked_inputs(adapter_dir, base_model_dir)
    name = settings.registered_model
    registry = Registry(settings)
    n_verify = params.registry.verify_new_tokens

    with step_run(settings, parent_run_id, "register") as run_id:
        mlflow.set_tags(lineage)
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        model_uri = _log_verified_model(adapter_dir, base_model_dir, n_verify)
        version_tags = {
            **lineage,
            **{f"metric.{k}": f"{float(v):.6g}" for k, v in metrics.items()},
            "register.run_id": run_id,
            "verify.greedy_match": "true" if n_verify > 0 else "skipped",
        }
        mv = mlflow.register_model(model_uri, name, tags=version_tags)
    version = str(mv.version)
    text = build_card(settings.project_dir, params, name=name, version=version, metrics=metrics, lineage=lineage,
                      evaluation=evaluation, adapter=json.loads((adapter_dir / "adapter_config.json").read_text()))
    card_artifact = card.attach(registry.client, name, version, run_id, text)
    aliases = _set_aliases(registry, params, name, version, run_id, lineage)
    return {
        "name": name,
        "version": version,
        "aliases": aliases,
        "run_id": run_id,
        "model_uri": f"models:/{name}/{version}",
        "logged_model_uri": model_uri,
        "greedy_match": n_verify > 0,
        "verify_tokens": n_verify,
        "card": card_artifact,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _checked_inputs(adapter_dir: Path, base_model_dir: Path) -> tuple[Path, Path]:
    """Fail before any model loads: the adapter must be safetensors only (pickles are never loaded)."""
    adapter_dir = _check_dir(adapter_dir, "adapter_config.json", "LoRA adapter")
    if not any(adapter_dir.glob("*.safetensors")):
        raise ModelError(f"no safetensors adapter weights in {adapter_dir}",
                         "save the adapter with save_pretrained(..., safe_serialization=True)")
    if pickled := _pickled_files(adapter_dir):
        raise ModelError(f"adapter dir {adapter_dir} holds pickled files {pickled}",
                         "keep only safetensors + json: pickles are never loaded or registered")
    return adapter_dir, _check_dir(base_model_dir, "config.json", "base model")


def _log_verified_model(adapter_dir: Path, base_model_dir: Path, n_verify: int) -> str:
    """Log the adapter and the merged model to the active run, then load the logged copy back and check it
    generates the same greedy tokens as base + adapter: what gets registered is what was evaluated."""
    import mlflow
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    expected = greedy_tokens(peft_model, tokenizer, n_verify) if n_verify > 0 else []
    merged = peft_model.merge_and_unload().eval()
    for pattern in ADAPTER_FILES:
        for f in sorted(adapter_dir.glob(pattern)):
            mlflow.log_artifact(str(f), artifact_path="adapter")
    info = mlflow.transformers.log_model(
        {"model": merged, "tokenizer": tokenizer}, name=MODEL_ARTIFACT, task="text-generation",
        pip_requirements=_pip_requirements(), save_pretrained=True,
    )
    del merged, peft_model, base

    with tempfile.TemporaryDirectory(prefix="llmops-register-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp))
        if pickled := _pickled_files(local):
            raise ModelError(f"the logged model contains pickled files {pickled}",
                             "log with save_pretrained=True and a transformers version that writes safetensors")
        got: list[int] = []
        if n_verify > 0:
            loaded = mlflow.transformers.load_model(str(local), return_type="components")
            got = greedy_tokens(loaded["model"].eval(), loaded["tokenizer"], n_verify)
            del loaded
        shutil.rmtree(local, ignore_errors=True)
    if got != expected:
        raise ModelError(f"the logged model generates {got} but base + adapter generates {expected}",
                         "the merge or the saved weights are wrong; nothing was registered")
    mlflow.set_tags({"verify.greedy_match": "true" if n_verify > 0 else "skipped", "verify.tokens": str(n_verify)})
    return info.model_uri


def _set_aliases(registry, params: Params, name: str, version: str, run_id: str, lineage: dict[str, str]) -> list:
    """challenger always; champion only for a model's first version (registry.first_champion), audited."""
    source = lineage.get("pipeline.kfp_run_id") or lineage.get("pipeline.mlflow_run_id") or run_id
    registry.set_alias(name, "challenger", version, action="register",
                       reason=f"registered by pipeline run {source}")
    if params.registry.first_champion:
        registry.set_alias(name, "champion", version, action="register", only_if_unset=True,
                           reason=f"first version of {name} (registry.first_champion)")
    aliases = registry.show(f"{name}/{version}")["aliases"]
    registry.client.set_tag(run_id, "registered.name", name)
    registry.client.set_tag(run_id, "registered.version", version)
    registry.client.set_tag(run_id, "registered.aliases", ",".join(sorted(aliases)))
    return aliases
