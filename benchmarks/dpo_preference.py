"""DPO vs SFT-only on a held-out preference split built from our corpus, through the product's training path.

Pairs (llmops/training/preference_split.py): chosen = a record's real answer, rejected = the real answer of
another record asked the same way (a hard negative: right kind, wrong API); train pairs from the train split,
validation pairs from the validation split, the HELD-OUT pairs from the test split (prompts never trained on).

- `sft`: LoRA SFT on data/splits/train.jsonl (`train_adapter`, params.yaml, --sft-steps).
- `dpo`: the standard SFT -> DPO recipe in the same path: the SFT adapter merged into the base, then
  `train.objective=dpo` on the train pairs (--dpo-steps), reference = that SFT model with the new adapter
  disabled.
Scored on the held-out pairs (llmops.training.preference.score_pairs): `preference_accuracy` (share of pairs
whose chosen answer the model finds more likely), the mean log-prob margin, and DPO's implicit reward margin
beta * ((logp_c - ref_c) - (logp_r - ref_r)) against the base and against the SFT model. Prints one JSON
object with the host; not part of the test suite.

    .venv/bin/python -m benchmarks.dpo_preference --sft-steps 40 --dpo-steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pairs(split: Path, out: Path, seed: int) -> Path:
    from llmops.data.records import read_jsonl
    from llmops.training.preference_split import build_pairs, write_pairs

    write_pairs(build_pairs(read_jsonl(split).to_dict("records"), seed), out)
    return out


def _score(models: dict[str, tuple[Path, Path | None]], records: list[dict], seq_len: int, beta: float,
           precision: str) -> dict[str, dict[str, Any]]:
    from llmops.modeling.generation import load_model
    from llmops.precision import autocast
    from llmops.training.preference import score_pairs

    scored: dict[str, dict[str, Any]] = {}
    for name, (base, adapter) in models.items():
        model, tokenizer = load_model(base, adapter, device="cpu")
        with autocast("cpu", precision):
            scored[name] = score_pairs(model, tokenizer, records, seq_len)
        del model
    for s in scored.values():
        for ref in ("base", "sft"):
            r = scored[ref]
            margins = [beta * ((c - rc) - (j - rj)) for c, j, rc, rj in
                       zip(s["chosen_logps"], s["rejected_logps"], r["chosen_logps"], r["rejected_logps"], strict=True)]
            s[f"reward_margin_vs_{ref}"] = sum(margins) / len(margins)
            s[f"reward_accuracy_vs_{ref}"] = sum(m > 0 for m in margins) / len(margins)
    return {n: {k: v for k, v in s.items() if not k.endswith("_logps")} for n, s in scored.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft-steps", type=int, default=40)
    ap.add_argument("--dpo-steps", type=int, default=30)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--held-out", type=int, default=0, help="held-out pairs to score (0 = all of the test split)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="params override for both runs")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)

    from components.train.logic import train_adapter
    from llmops import host
    from llmops.modeling.base import base_model_path
    from llmops.settings import get_settings
    from llmops.training.preference import read_preferences

    host_fp = host.for_benchmark()
    work = Path(tempfile.mkdtemp(prefix="llmops-dpo-bench-"))
    os.environ.setdefault("LLMOPS_STATE_DIR", str(work / "state"))  # the runs' MLflow/Ray state, not the project's
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_state_dir()
    splits = settings.project_dir / "data" / "splits"
    base = base_model_path(settings, settings.params())
    train_pairs = _pairs(splits / "train.jsonl", work / "train_pairs.jsonl", 0)
    val_pairs = _pairs(splits / "validation.jsonl", work / "validation_pairs.jsonl", 1)
    held_out = read_preferences(_pairs(splits / "test.jsonl", work / "test_pairs.jsonl", 2))
    held_out = held_out[: args.held_out] if args.held_out else held_out

    t0 = time.perf_counter()
    sft_params = settings.params([*args.overrides, f"train.max_steps={args.sft_steps}"])
    sft = train_adapter(settings, sft_params, train_path=splits / "train.jsonl",
                        validation_path=splits / "validation.jsonl", base_model_dir=base, out_dir=work / "sft")
    sft_seconds = time.perf_counter() - t0
    from components.retrain.dpo import merge_into_copy  # the retrain's own merge: the DPO run's base and reference

    merged = merge_into_copy(base, sft.adapter_dir, work / "sft-merged")
    t1 = time.perf_counter()
    dpo_params = settings.params([*args.overrides, f"train.max_steps={args.dpo_steps}", "train.objective=dpo",
                                  f"train.dpo.beta={args.beta}"])
    dpo = train_adapter(settings, dpo_params, train_path=train_pairs, validation_path=val_pairs,
                        base_model_dir=merged, out_dir=work / "dpo")
    dpo_seconds = time.perf_counter() - t1
    precision = str(dpo.metrics["precision"])
    scores = _score({"base": (base, None), "sft": (base, sft.adapter_dir), "dpo": (merged, dpo.adapter_dir)},
                    held_out, dpo_params.train.seq_len, args.beta, precision)
    result = {
        "benchmark": "dpo_preference", "host": host_fp, "precision": precision, "held_out_pairs": len(held_out),
        "sft": {"steps": args.sft_steps, "seconds": round(sft_seconds, 1), "val_loss": sft.metrics["val_loss"],
                "val_loss_before": sft.metrics["val_loss_before"]},
        "dpo": {"steps": args.dpo_steps, "beta": args.beta, "seconds": round(dpo_seconds, 1),
                **{k: v for k, v in dpo.metrics.items() if k.startswith("val_")}},
        "held_out": scores,
        "ratio_preference_accuracy_dpo_vs_sft": scores["dpo"]["preference_accuracy"]
        / max(scores["sft"]["preference_accuracy"], 1e-9),
    }
    print(json.dumps(result, indent=1, default=str))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
