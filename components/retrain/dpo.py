"""The retrain DAG's DPO stage: after SFT on the (reviewed, scrubbed) corrections, DPO on the preference pairs
`llmops log export --kind preference` wrote, starting from the SFT model.

**Start and reference.** The SFT adapter is merged into a copy of the base (fp32, the precision training loads
the base in) and DPO trains a fresh LoRA adapter on that merged model with the existing objective
(`train.objective: dpo`): the reference is the model with the adapter disabled, i.e. the SFT model itself
(Rafailov et al.'s recipe: reference = the SFT policy), with no second copy of the weights. Starting the DPO
adapter at zero makes the first step's margin 0 (loss log 2, full gradient), where continuing the SFT adapter
against the bare base would start with SFT's gains counted as reward and a saturated loss.

**One adapter out.** Everything downstream (evaluate, register, engines, serving) takes ONE LoRA adapter on the
champion's base. Two LoRA updates on the same modules add up, W + s1 B1 A1 + s2 B2 A2, which is exactly one LoRA
of rank r1 + r2: A = [A1; A2], B = [s1 B1, s2 B2] with scaling 1 (`stack_adapters`). The stacked adapter gives the
SFT->DPO model up to float rounding, and its lineage (base weights, data) is the SFT adapter's plus the pairs.

**Which pairs.** Every export in `inference_log.preference_dir` that its export manifest vouches for (same md5:
the file the review gate and the scrubber produced, unchanged); any other file there is refused and named on
the run. Pairs go to train / validation / test by the same seeded hash of the prompt as the SFT split
(llmops/data/split.py), so no held-out pair's prompt was trained on by either stage. DPO trains on the train
pairs; the validation + test pairs are the held-out set on which the SFT-only and SFT->DPO models are compared
(preference accuracy: share of pairs whose chosen answer the model finds more likely; reward margin vs base).

**Skipped** (adapter passed through unchanged, the reason on the pipeline run as `llmops.retrain.dpo`):
`retrain.dpo.enabled` false, no usable export, fewer than `retrain.dpo.min_pairs` training pairs, or no held-out
pair to measure it on.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.errors import ModelError
from llmops.params import Params
from llmops.settings import Settings

TAG = "llmops.retrain.dpo"  # on the pipeline run: "trained: ..." or "skipped: <reason>" (pipelines/summary.py)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass
class DpoOutcome:
    trained: bool
    reason: str  # what happened, for a person (the TAG's value)
    figures: dict[str, float] = field(default_factory=dict)  # held-out preference metrics per model
    lineage: dict[str, str] = field(default_factory=dict)  # data.preferences.* of the files read
    refused: list[str] = field(default_factory=list)  # files in the folder no export manifest vouches for


def vouched_exports(settings: Settings, params: Params) -> tuple[list[Path], list[str]]:
    """(preference exports to read, names of the files refused): components/retrain/exports.py."""
    from components.retrain.exports import vouched
    from monitoring.inference_log.datasets import preference_dir

    ok, refused = vouched(preference_dir(settings, params), "preference")
    return ok, [p.name for p in refused]


def split_pairs(records: list[dict[str, Any]], params: Params) -> dict[str, list[dict[str, Any]]]:
    """train / validation / test by the SFT split's seeded hash of each normalised prompt."""
    from llmops.data.split import SPLITS, assign_split
    from llmops.data.text import group_key

    out: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for rec in records:
        out[assign_split(group_key(rec["instruction"], rec.get("input") or ""), params.data.split)].append(rec)
    return out


def merge_into_copy(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """base + adapter merged, saved (fp32 safetensors + tokenizer) as a checkpoint DPO can start from."""
    from llmops.modeling.generation import load_model

    model, tokenizer = load_model(base_dir, adapter_dir, device="cpu")
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _scaling(cfg: dict[str, Any]) -> float:
    if cfg.get("use_rslora") or cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ModelError("the adapter uses rsLoRA/DoRA or per-module ranks, which cannot be stacked exactly",
                         "train with plain LoRA (params.yaml lora.*)")
    return float(cfg["lora_alpha"]) / float(cfg["r"])


def stack_adapters(first: Path, second: Path, out_dir: Path) -> Path:
    """One LoRA adapter equal to applying `first` then `second` (trained on base+first): ranks concatenated,
    each side's scaling folded into its B, scaling 1."""
    import torch
    from safetensors.torch import load_file, save_file

    cfgs = [json.loads((d / "adapter_config.json").read_text()) for d in (first, second)]
    scales = [_scaling(c) for c in cfgs]
    weights = [load_file(str(d / "adapter_model.safetensors")) for d in (first, second)]
    if set(weights[0]) != set(weights[1]):
        raise ModelError("the SFT and DPO adapters adapt different modules", "train both with the same lora.*")
    stacked = {}
    for key, a in weights[0].items():
        b = weights[1][key]
        if ".lora_A." in key:
            stacked[key] = torch.cat([a, b], dim=0).contiguous()
        elif ".lora_B." in key:
            stacked[key] = torch.cat([a * scales[0], b * scales[1]], dim=1).contiguous()
        else:
            raise ModelError(f"adapter weight {key} is neither lora_A nor lora_B", "train with lora bias none")
    rank = int(cfgs[0]["r"]) + int(cfgs[1]["r"])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(stacked, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {**cfgs[0], "r": rank, "lora_alpha": rank}
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out_dir


def pass_through(adapter_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*ADAPTER_FILES, "README.md"):
        if (adapter_dir / name).is_file():
            shutil.copy2(adapter_dir / name, out_dir / name)


def _write(records: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def dpo_params(params: Params) -> Params:
    """The recipe's params with the DPO stage's objective, steps and learning rate."""
    d = params.retrain.dpo
    warmup = min(params.train.warmup_steps, max(d.max_steps // 4, 0))
    train = params.train.model_copy(update={"objective": "dpo", "max_steps": d.max_steps, "lr": d.lr,
                                            "warmup_steps": warmup,
                                            "checkpoint_every": min(params.train.checkpoint_every, d.max_steps)})
    return params.model_copy(update={"train": train})


def _why_not(params: Params, files: list[Path], parts: dict[str, list[dict[str, Any]]]) -> str | None:
    if not params.retrain.dpo.enabled:
        return "retrain.dpo.enabled is false"
    if not files:
        return ("no preference pairs: no reviewed preference export in "
                f"{params.inference_log.preference_dir} (`llmops log export --kind preference --dvc`)")
    if len(parts["train"]) < params.retrain.dpo.min_pairs:
        return (f"{len(parts['train'])} training pairs, fewer than retrain.dpo.min_pairs "
                f"({params.retrain.dpo.min_pairs})")
    if not parts["validation"] + parts["test"]:
        return "no held-out pair (every pair's prompt hashes to the train split) to measure DPO on"
    return None


def read_pairs(settings: Settings, params: Params) -> tuple[list[Path], list[str], list[dict[str, Any]],
                                                            dict[str, str]]:
    """(files read, files refused, their pairs, data.preferences.* lineage)."""
    from llmops.modeling.hashing import file_md5
    from llmops.training.preference import read_preferences

    files, refused = vouched_exports(settings, params)
    records, lineage = [], {}
    for path in files:
        records += read_preferences(path)
        lineage[f"data.preferences.{path.stem}.md5"] = file_md5(path)
    return files, refused, records, lineage


def compare(settings: Settings, params: Params, base_model_dir: Path, adapters: dict[str, Path],
            held_out: Path) -> dict[str, float]:
    """Held-out preference figures of base and each adapter (components/evaluate/preference.py, the gate's
    scorer): `<model>.preference_accuracy`, `.preference_reward_margin` (vs base), `.preference_logp_margin`."""
    from components.evaluate.preference import score_models
    from llmops.precision import local_device, probe_shape, resolve

    gate = params.eval.gate.model_copy(update={"preference_split": str(held_out)})
    scoring = params.model_copy(update={"eval": params.eval.model_copy(update={"gate": gate, "max_examples": 0})})
    precision = resolve(params.train.precision, local_device(), settings.state_dir,
                        probe_shape(params.train.batch_size, params.train.seq_len, base_model_dir))
    models: dict[str, dict[str, float]] = {"base": {}, **{name: {} for name in adapters}}
    score_models(settings, scoring, [("base", None), *adapters.items()], base_model_dir, models,
                 precision.precision)
    return {f"{name}.{k}": float(v) for name, m in models.items() for k, v in m.items()}


def run_dpo_stage(settings: Settings, params: Params, *, base_model_dir: Path, sft_adapter: Path, out_dir: Path,
                  parent_run_id: str | None = None) -> DpoOutcome:
    """DPO from the SFT model on the vouched preference pairs, stacked into one adapter in `out_dir`; or the SFT
    adapter passed through with the reason (module doc)."""
    from components.train.logic import train_adapter

    files, refused, records, lineage = read_pairs(settings, params) if params.retrain.dpo.enabled else (
        [], [], [], {})
    parts = split_pairs(records, params)
    why = _why_not(params, files, parts)
    if why:
        pass_through(sft_adapter, out_dir)
        return DpoOutcome(False, f"skipped: {why}", lineage=lineage, refused=refused)
    held_out = parts["validation"] + parts["test"]
    with tempfile.TemporaryDirectory(prefix="llmops-dpo-") as tmp_name:
        tmp = Path(tmp_name)
        start = merge_into_copy(base_model_dir, sft_adapter, tmp / "sft-merged")
        result = train_adapter(settings, dpo_params(params), train_path=_write(parts["train"], tmp / "train.jsonl"),
                               validation_path=_write(parts["validation"] or parts["test"], tmp / "val.jsonl"),
                               base_model_dir=start, out_dir=tmp / "dpo-adapter", parent_run_id=parent_run_id,
                               step="train_dpo")
        shutil.rmtree(start)  # the merged copy (a full fp32 model) is not needed past training
        stack_adapters(sft_adapter, tmp / "dpo-adapter", out_dir)
        figures = compare(settings, params, base_model_dir, {"sft": sft_adapter, "sft_dpo": out_dir},
                          _write(held_out, tmp / "held_out.jsonl"))
    figures |= {"train_pairs": float(len(parts["train"])), "held_out_pairs": float(len(held_out)),
                "steps": float(result.metrics["steps"]), "train_seconds": float(result.metrics["train_seconds"])}
    reason = (f"trained: {len(parts['train'])} pairs from {len(files)} export(s), {result.metrics['steps']} steps "
              f"from the SFT model; held-out preference accuracy {figures.get('sft.preference_accuracy', 0):.1%} "
              f"(SFT) -> {figures.get('sft_dpo.preference_accuracy', 0):.1%} (SFT->DPO) on {len(held_out)} pairs")
    return DpoOutcome(True, reason, figures=figures, lineage=lineage, refused=refused)


def record(settings: Settings, parent_run_id: str, outcome: DpoOutcome) -> None:
    """On the pipeline run: TAG = the outcome, `llmops.retrain.dpo.<figure>` per figure, refused files."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    client.set_tag(parent_run_id, TAG, outcome.reason[:5000])
    for key, value in outcome.figures.items():
        client.set_tag(parent_run_id, f"{TAG}.{key}", f"{value:.6g}")
    if outcome.refused:
        client.set_tag(parent_run_id, f"{TAG}.refused_files", ",".join(outcome.refused)[:5000])
