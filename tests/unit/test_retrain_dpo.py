"""The retrain's DPO stage (components/retrain/dpo.py) without Ray: the stacked adapter is exactly SFT then DPO;
only files an export vouches for reach the DPO stage or the feedback merge (an unreviewed or unscrubbed
correction never reaches a training run); no pairs -> the SFT adapter passes through, with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.retrain import dpo
from components.retrain.logic import check_feedback_exports
from llmops.errors import DataError
from llmops.modeling.hashing import file_md5
from llmops.settings import Settings


def _adapter(base_dir: Path, out: Path, seed: int, r: int, alpha: int) -> Path:
    """A LoRA adapter with random (non-zero) A and B, as training leaves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj", "v_proj", "o_proj"],
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    peft.save_pretrained(out)
    return out


def test_stacked_adapter_is_sft_then_dpo_exactly(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    from llmops.modeling.generation import load_model

    sft = _adapter(tiny_model_dir, tmp_path / "sft", seed=1, r=4, alpha=8)
    merged = dpo.merge_into_copy(tiny_model_dir, sft, tmp_path / "merged")  # where DPO starts (its reference)
    second = _adapter(merged, tmp_path / "dpo", seed=2, r=4, alpha=16)  # other scaling: folded into B
    stacked = dpo.stack_adapters(sft, second, tmp_path / "stacked")
    assert json.loads((stacked / "adapter_config.json").read_text())["r"] == 8
    ids = torch.tensor([[1, 5, 9, 200, 17, 4, 33, 2]])
    want, _ = load_model(merged, second, device="cpu")
    got, _ = load_model(tiny_model_dir, stacked, device="cpu")  # ONE adapter on the champion's base
    sft_only, _ = load_model(tiny_model_dir, sft, device="cpu")
    with torch.no_grad():
        a, b, c = (m(ids).logits for m in (want, got, sft_only))
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, c, atol=1e-3)  # the DPO part is really in it


def _export(folder: Path, name: str, rows: list[dict], kind: str) -> Path:
    """A dataset and the manifest `llmops log export` writes beside it (kind, md5, rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / f"{name}.jsonl.manifest.json").write_text(json.dumps(
        {"dataset": name, "kind": kind, "md5": file_md5(path), "rows": len(rows)}))
    return path


PAIR = {"instruction": "Fix: SELECT * FORM t;", "input": "", "chosen": "SELECT * FROM t;", "rejected": "FORM t",
        "request_ids": ["r1"], "source": "correction", "model_version": "1"}


def test_only_exports_reach_dpo_or_the_feedback_merge(settings: Settings, tmp_path: Path) -> None:
    prefs, feedback = tmp_path / "preferences", tmp_path / "feedback"
    params = settings.params([f"inference_log.preference_dir={prefs}",
                              f"data.sources=[{{name: feedback, path: {feedback}}}]"])
    _export(prefs, "preferences-1", [PAIR], "preference")
    (prefs / "by-hand.jsonl").write_text(json.dumps({**PAIR, "chosen": "unreviewed"}) + "\n")  # no manifest
    edited = _export(prefs, "preferences-2", [PAIR], "preference")
    edited.write_text(edited.read_text().replace("FROM", "FROM unscrubbed@example.com"))  # changed after export
    _export(prefs, "feedback-as-pairs", [PAIR], "sft")  # an SFT export is no preference export
    files, refused, records, lineage = dpo.read_pairs(settings, params)
    assert [f.name for f in files] == ["preferences-1.jsonl"] and len(records) == 1
    assert sorted(refused) == ["by-hand.jsonl", "feedback-as-pairs.jsonl", "preferences-2.jsonl"]
    assert lineage == {"data.preferences.preferences-1.md5": file_md5(prefs / "preferences-1.jsonl")}

    record = {"instruction": "q", "input": "", "output": "a", "source": "feedback", "id": "x"}
    _export(feedback, "feedback-1", [record], "sft")
    check_feedback_exports(settings, params)  # exports only: the merge may run
    (feedback / "by-hand.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"by-hand\.jsonl") as err:
        check_feedback_exports(settings, params)
    assert "llmops log export" in err.value.fix


def test_no_pairs_skips_dpo_with_the_reason_and_passes_sft_through(settings: Settings, tiny_model_dir: Path,
                                                                  tmp_path: Path) -> None:
    sft = _adapter(tiny_model_dir, tmp_path / "sft", seed=1, r=4, alpha=8)
    params = settings.params([f"inference_log.preference_dir={tmp_path / 'none'}"])
    out = dpo.run_dpo_stage(settings, params, base_model_dir=tiny_model_dir, sft_adapter=sft,
                            out_dir=tmp_path / "out")
    assert not out.trained and out.reason.startswith("skipped: no preference pairs")
    assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == (
        sft / "adapter_model.safetensors").read_bytes()
    few = settings.params([f"inference_log.preference_dir={tmp_path / 'p'}", "retrain.dpo.min_pairs=50"])
    _export(tmp_path / "p", "preferences-1", [{**PAIR, "instruction": f"q{i}"} for i in range(20)], "preference")
    out = dpo.run_dpo_stage(settings, few, base_model_dir=tiny_model_dir, sft_adapter=sft, out_dir=tmp_path / "o2")
    assert not out.trained and "fewer than retrain.dpo.min_pairs (50)" in out.reason
    parts = dpo.split_pairs([{**PAIR, "instruction": f"q{i}"} for i in range(200)], few)
    assert len(parts["train"]) > len(parts["validation"]) > 0 and len(parts["test"]) > 0  # the SFT split's hash


def test_demo_reads_the_dpo_stage_from_the_run_summary() -> None:
    from cli.drift_demo import dpo_figures, dpo_lines

    tags = {"dpo": "trained: 120 pairs ...", "dpo.sft.preference_accuracy": "0.7", "dpo.held_out_pairs": "30",
            "dpo.sft.preference_reward_margin": "0.5", "dpo.sft_dpo.preference_accuracy": "0.9",
            "dpo.sft_dpo.preference_reward_margin": "2.25", "dpo.train_pairs": "120"}
    d = dpo_figures({"retrain": tags})
    assert d["sft_only"] == {"preference_accuracy": 0.7, "reward_margin": 0.5} and d["dpo_beats_sft"]
    text = "\n".join(dpo_lines(d))
    assert "SFT->DPO  prefers the chosen answer on 90.0% of 30 held-out pairs, reward margin vs base +2.2500" in text
    skipped = dpo_figures({"retrain": {"dpo": "skipped: no preference pairs: ..."}})
    assert skipped == {"status": "skipped: no preference pairs: ..."}
    assert dpo_lines(skipped) == ["[bold]DPO stage[/]: skipped: no preference pairs: ..."]
