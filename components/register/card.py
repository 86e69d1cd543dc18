"""The model card of a version, written at register in the Hugging Face model-card format.

YAML front matter (`huggingface_hub.ModelCardData`: base model, licence, library, tags and a `model-index`
of the held-out results) and markdown sections built only from what the run recorded: lineage tags (git
commit, params hash, pipeline runs, base-model digest, host and precision), the data the splits were merged
from (with the review and scrub counts of an exported feedback dataset, read from its export manifest when
its bytes are those trained on), the evaluation metrics per model, the gate's verdict, the safety set's
results and whether a judge was used, and the intended use from params.yaml `registry.card`.
Nothing here is measured: a figure the run did not record is left out, never filled in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmops.params import Params

MODELS = ("candidate", "champion", "base")
EVAL_ROWS = (("perplexity", "answer perplexity (held-out)", "lower"),
             ("general_perplexity", "general-text perplexity", "lower"),
             ("rouge_l", "ROUGE-L F1", "higher"), ("exact_match", "exact match", "higher"),
             ("embed_similarity", "embedding cosine", "higher"),
             ("judge_answer_correct", "judge: answer correct", "higher"),
             ("preference_accuracy", "preference accuracy", "higher"))
SAFETY_ROWS = (("safety_refusal_rate", "must-refuse prompts refused", "higher"),
               ("safety_benign_refusal_rate", "benign look-alikes refused", "lower"),
               ("safety_secret_leaks", "answers quoting a planted secret", "lower"),
               ("safety_pii_leaks", "answers with PII the user did not give", "lower"),
               ("judge_response_safe", "judge: response safe", "higher"))


def _fmt(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.4g}"


def _metric_table(metrics: dict[str, float], rows: tuple[tuple[str, str, str], ...]) -> str:
    """Markdown table of `<model>.<metric>` values: a row per metric recorded, a column per model evaluated."""
    models = [m for m in MODELS if any(f"{m}.{k}" in metrics for k, _, _ in rows)]
    lines = []
    for key, label, better in rows:
        if any(f"{m}.{key}" in metrics for m in models):
            cells = " | ".join(_fmt(metrics[f"{m}.{key}"]) if f"{m}.{key}" in metrics else "-" for m in models)
            lines.append(f"| {label} | {better} | {cells} |")
    if not lines:
        return "_not recorded by the evaluate step_\n"
    head = "| metric | better | " + " | ".join(models) + " |\n|---|---|" + "---:|" * len(models) + "\n"
    return head + "\n".join(lines) + "\n"


def _bullets(text: str) -> str:
    return "\n".join(f"- {line}" for line in text.splitlines() if line.strip()) + "\n"


def export_manifest(project_dir: Path, params: Params, entry: str, md5: str) -> dict[str, Any] | None:
    """The export manifest (`<dataset>.manifest.json`: review and scrub counts) of a source dataset, only when
    it describes the very bytes trained on (its md5 equals the lineage's)."""
    from llmops.data.sources import source_files

    try:
        files = {e: path for e, _, path in source_files(project_dir, list(params.data.sources))}
    except Exception:  # a source folder gone since training: the card says what lineage says, no more
        return None
    path = files.get(entry)
    manifest = path.with_name(path.name + ".manifest.json") if path else None
    if manifest is None or not manifest.is_file():
        return None
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    return doc if doc.get("md5") == md5 else None


def data_sources(project_dir: Path, params: Params, lineage: dict[str, str]) -> list[dict[str, Any]]:
    """One dict per source dataset named in lineage (`data.source.<entry>.*`), with its export counts."""
    entries = sorted({k[len("data.source."):].rsplit(".", 1)[0] for k in lineage if k.startswith("data.source.")})
    out = []
    for entry in entries:
        key = f"data.source.{entry}"
        row = {"entry": entry, "md5": lineage.get(f"{key}.md5", ""), "rows": lineage.get(f"{key}.rows", ""),
               "dvc": lineage.get(f"{key}.dvc", "")}
        if manifest := export_manifest(project_dir, params, entry, row["md5"]):
            row["reviewed"] = f"{manifest.get('rows', '?')} accepted in review"
            row["scrubbed"] = ", ".join(f"{k} {v}" for k, v in (manifest.get("scrubbed") or {}).items()) or "none"
            row["repeats_dropped"] = manifest.get("repeats_dropped", 0)
        out.append(row)
    return out


def _sources_md(sources: list[dict[str, Any]], lineage: dict[str, str]) -> str:
    lines = [f"Sources: {lineage.get('data.sources', 'not recorded')}\n"]
    if sources:
        lines.append("| dataset | rows kept/read | md5 | DVC | review | PII scrubbed | repeats dropped |")
        lines.append("|---|---|---|---|---|---|---|")
        for s in sources:
            lines.append(f"| {s['entry']} | {s['rows']} | `{s['md5'][:12]}` | {s['dvc']} | "
                         f"{s.get('reviewed', '-')} | {s.get('scrubbed', '-')} | {s.get('repeats_dropped', '-')} |")
    splits = sorted({k.split(".")[1] for k in lineage if k.startswith("data.") and k.endswith(".md5")
                     and not k.startswith("data.source.")})
    if splits:
        lines.append("\n| split | md5 | DVC |\n|---|---|---|")
        lines += [f"| {s} | `{lineage.get(f'data.{s}.md5', '')}` | {lineage.get(f'data.{s}.dvc', '')} |"
                  for s in splits]
    return "\n".join(lines) + "\n"


def _card_data(name: str, params: Params, metrics: dict[str, float], lineage: dict[str, str]):
    from huggingface_hub import EvalResult, ModelCardData

    results = [EvalResult(task_type="text-generation", dataset_type="llmops-test-split",
                          dataset_name="held-out test split", dataset_revision=lineage.get("data.test.md5"),
                          metric_type=key,
                          metric_value=float(metrics[f"candidate.{key}"]))
               for key in ("perplexity", "rouge_l", "safety_refusal_rate") if f"candidate.{key}" in metrics]
    return ModelCardData(language="en", license=params.registry.card.license, library_name="peft",
                         base_model=lineage.get("base_model.id") or params.model.base, pipeline_tag="text-generation",
                         tags=["llmops", "lora", "text-generation"], model_name=name, eval_results=results or None)


def build_card(project_dir: Path, params: Params, *, name: str, version: str, metrics: dict[str, float],
               lineage: dict[str, str], evaluation: dict[str, str] | None = None,
               adapter: dict | None = None) -> str:
    """The card's text (front matter + markdown) for `name` version `version`. `adapter` (the registered
    adapter_config.json) gives its real rank and alpha: the retrain's SFT->DPO adapter is two LoRAs stacked."""
    from huggingface_hub import ModelCard

    ev, card = evaluation or {}, params.registry.card
    rank, alpha = (adapter or {}).get("r", params.lora.r), (adapter or {}).get("lora_alpha", params.lora.alpha)
    lineage_rows = [(k, lineage[k]) for k in sorted(lineage)
                    if k.startswith(("git.", "params.", "pipeline.", "base_model.", "train.", "host."))]
    body = f"""
# {name} version {version}

A LoRA fine-tune of `{lineage.get('base_model.id', params.model.base)}` (adapter r={rank},
alpha={alpha}), registered by the llmops pipeline. Served as the merged model
(`models:/{name}/{version}`); the adapter is the register run's `adapter/` artifact.

## Intended use

{card.intended_use}

**Out of scope:** {card.out_of_scope}

## Lineage

| field | value |
|---|---|
{chr(10).join(f"| {k} | `{v}` |" for k, v in lineage_rows)}

## Training data

{_sources_md(data_sources(project_dir, params, lineage), lineage)}
## Evaluation

Held-out test split, the same inputs for every model: the candidate (this version), the champion at the time
and the base.

{_metric_table(metrics, EVAL_ROWS)}
Gate checks:

{_bullets(ev.get('gate.summary', 'not recorded'))}

## Safety

The project's safety set (prompt injection, harmful requests, system-prompt and secret extraction, benign
look-alikes that must be answered), greedy answers, deterministic checks. {ev.get('eval.safety_set', '')}

{_metric_table(metrics, SAFETY_ROWS)}
Judges: {ev.get('eval.judge', 'not recorded')}

## Limitations

A small model fine-tuned on a small corpus: it can be wrong with confidence. Safety figures are for the shipped
safety set only; they are a regression guard, not a guarantee.
"""
    return str(ModelCard(f"---\n{_card_data(name, params, metrics, lineage).to_yaml()}\n---\n{body}"))
