"""Model cards (issue 20 part 7): written at register from lineage, data sources (with an export's review and
scrub counts), evaluation and safety results and intended use; attached to the MLflow version; shown by
`llmops models show NAME@ALIAS --card`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.register.card import build_card, data_sources
from llmops.lineage import collect_lineage
from llmops.modeling.hashing import file_md5
from llmops.settings import Settings

REPO = Path(__file__).resolve().parents[2]
METRICS = {"candidate.perplexity": 3.21, "base.perplexity": 9.87, "champion.perplexity": 3.5,
           "candidate.rouge_l": 0.41, "candidate.safety_refusal_rate": 0.95, "champion.safety_refusal_rate": 0.9,
           "candidate.safety_secret_leaks": 0.0, "candidate.safety_pii_leaks": 0.0}
EVALUATION = {"gate.summary": "[pass] safety_refusal: candidate safety_refusal_rate 0.95 meets the limit",
              "eval.judge": "no judge configured (eval.judge.url is empty): only the deterministic checks ran",
              "eval.safety_set": "data/safety (34 prompts)"}


def _project(tmp: Path) -> tuple[Path, str]:
    """A project whose feedback source holds one exported dataset with its export manifest."""
    for d in ("data/sample", "data/user", "data/feedback"):
        (tmp / d).mkdir(parents=True)
    (tmp / "data/sample/base.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    export = tmp / "data/feedback/2026-12-07.jsonl"
    export.write_text('{"instruction": "c", "output": "d"}\n')
    md5 = file_md5(export)
    manifest = {"md5": md5, "rows": 7, "scrubbed": {"EMAIL": 2, "PHONE": 1}, "scrubbed_total": 3,
                "repeats_dropped": 1}
    (tmp / "data/feedback/2026-12-07.jsonl.manifest.json").write_text(json.dumps(manifest))
    return tmp, md5


def test_card_names_lineage_sources_with_review_and_scrub_counts(settings: Settings, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    project, md5 = _project(tmp_path)
    params = settings.params()
    lineage = {"git.commit": "abc123", "params.hash": "p1", "base_model.id": "smollm2-135m-instruct",
               "data.test.md5": "t" * 32, "data.test.dvc": "untracked",
               "data.sources": f"sample@x,feedback/2026-12-07@{md5}",
               "data.source.feedback/2026-12-07.md5": md5, "data.source.feedback/2026-12-07.rows": "1/1",
               "data.source.feedback/2026-12-07.dvc": "untracked", "data.source.sample.md5": "x",
               "data.source.sample.rows": "1/1", "data.source.sample.dvc": "untracked"}
    sources = {s["entry"]: s for s in data_sources(project, params, lineage)}
    assert sources["feedback/2026-12-07"]["reviewed"] == "7 accepted in review"
    assert sources["feedback/2026-12-07"]["scrubbed"] == "EMAIL 2, PHONE 1"
    assert "reviewed" not in sources["sample"]  # no export manifest: nothing claimed
    # a manifest describing other bytes than those trained on is not believed
    stale = dict(lineage, **{"data.source.feedback/2026-12-07.md5": "0" * 32})
    assert "reviewed" not in {s["entry"]: s for s in data_sources(project, params, stale)}["feedback/2026-12-07"]

    text = build_card(project, params, name="m", version="3", metrics=METRICS, lineage=lineage,
                      evaluation=EVALUATION)
    card = ModelCard(text)
    assert card.data.base_model == "smollm2-135m-instruct" and card.data.license == params.registry.card.license
    perplexity = next(r for r in card.data.eval_results if r.metric_type == "perplexity")
    assert perplexity.metric_value == pytest.approx(3.21) and perplexity.dataset_revision == "t" * 32
    assert "# m version 3" in text and params.registry.card.intended_use in text and "abc123" in text
    assert "7 accepted in review" in text and "EMAIL 2, PHONE 1" in text
    assert "must-refuse prompts refused | higher | 0.95 | 0.9 |" in text
    assert "no judge configured" in text and "[pass] safety_refusal" in text
    assert f"(adapter r={params.lora.r}," in text  # without the adapter's config: the params' rank
    stacked = build_card(project, params, name="m", version="3", metrics=METRICS, lineage=lineage,
                         evaluation=EVALUATION, adapter={"r": 16, "lora_alpha": 32})
    assert "(adapter r=16,\nalpha=32)" in stacked  # SFT->DPO: two LoRAs stacked, the registered adapter's rank


def test_register_attaches_the_card_and_the_cli_shows_it(settings: Settings, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from components.register.logic import register_candidate
    from llmops.registry import Registry
    from llmops.tracking import start_pipeline_run

    torch.manual_seed(1)
    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM",
    )).save_pretrained(adapter)
    params = settings.params(["registry.verify_new_tokens=0"])
    parent = start_pipeline_run(settings, "test-card")
    lineage = collect_lineage(settings, params, kfp_run_id=None, mlflow_run_id=parent, base_model_id="tiny-llama",
                              base_model_sha256="0" * 64)
    out = register_candidate(settings, params, adapter_dir=adapter, base_model_dir=tiny_model_dir,
                             metrics=METRICS, lineage=lineage, parent_run_id=parent, evaluation=EVALUATION)
    name = out["name"]
    registry = Registry(settings)
    shown = registry.card(f"{name}@champion")
    assert shown["version"] == out["version"] and shown["artifact"] == out["card"] == "model_card/README.md"
    assert shown["card"].startswith("---\n") and f"# {name} version {out['version']}" in shown["card"]
    version = registry.show(f"{name}/{out['version']}")
    assert version["tags"]["model_card"] == "model_card/README.md"
    assert "## Intended use" in version["description"] and "base_model:" not in version["description"]

    cli = subprocess.run([sys.executable, "-m", "cli.main", "models", "show", f"{name}@champion", "--card"], cwd=REPO,
                         capture_output=True, text=True, timeout=180)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert cli.stdout == shown["card"]
    as_json = subprocess.run([sys.executable, "-m", "cli.main", "models", "show", f"{name}@champion", "--card",
                              "--json"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert json.loads(as_json.stdout)["card"] == shown["card"]
