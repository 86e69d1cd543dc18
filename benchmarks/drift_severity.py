"""Drift severity calibration (issue 21): false `drift` on paraphrased in-domain windows, detection per shift,
and the effect-size separation, with the reference the monitor uses (the whole train split).

    .venv/bin/python -m benchmarks.drift_severity [--windows 40] [--shift-windows 40] [--size 200] [--c2st 10]

Prints, per kind (paraphrase = no shift; sql, spanish, cooking = shifts), the severity counts, the `drift` rate
with its 95% Wilson interval, and each prompt detector's effect distribution (min / median / max), and writes
calibration.json + calibration.html (the separation plot) under --out-dir. `--c2st N` also measures, on N
windows per kind, a classifier two-sample test's AUC (5-fold logistic regression on the same embeddings), the
effect size the issue suggested, to show why it is not the one used. Statistics, not timings: the host is
printed for completeness (seconds per window are).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _host() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16") if f" {f}" in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(isa)}, loadavg {os.getloadavg()[0]:.1f}"


def c2st_auc(ref: np.ndarray, win: np.ndarray, seed: int = 0) -> float:
    """Out-of-fold ROC AUC of a logistic regression telling window from reference embeddings (0.5 = same)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.concatenate([ref, win])
    y = np.r_[np.zeros(len(ref)), np.ones(len(win))]
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    p = cross_val_predict(LogisticRegression(max_iter=500), x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--shift-windows", type=int, default=40)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--c2st", type=int, default=0, help="windows per kind for the classifier-AUC comparison")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results" / "drift_severity")
    args = parser.parse_args(argv)
    from llmops.settings import get_settings
    from monitoring.drift.calibration import MemoEmbedder, calibrate, draw_windows, load_pool
    from monitoring.drift.features import embedder_for
    from monitoring.drift.html import write_calibration
    from monitoring.drift.reference import reference_from_splits

    print(f"host: {_host()}", flush=True)
    settings = get_settings()
    params = settings.params()
    memo = MemoEmbedder(embedder_for(settings))
    reference = reference_from_splits(settings, params, embedder=memo.inner)
    result = calibrate(settings, params, windows=args.windows, shift_windows=args.shift_windows, size=args.size,
                       reference=reference, embedder=memo)
    if args.c2st:
        rng = np.random.default_rng(0)
        ref = reference.prompt_embeddings[rng.choice(len(reference.prompt_embeddings), 1000, replace=False)]
        for i, kind in enumerate(result["kinds"]):
            windows = draw_windows(load_pool(settings.project_dir, kind), args.c2st, result["window_size"], 100 + i,
                                   params, simulate_outcomes=False)
            result["kinds"][kind]["c2st_auc"] = [
                c2st_auc(ref, memo.encode(list(dict.fromkeys(r.prompt for r in w)))) for w in windows]
    result["host"] = _host()
    files = write_calibration(result, args.out_dir)
    for kind, v in result["kinds"].items():
        lo, hi = v["drift_wilson95"]
        eff = {d: v["effects"].get(d, []) for d in ("prompt_embedding_mmd", "prompt_novel_share")}
        desc = "  ".join(f"{d} {np.min(x):.3f}/{np.median(x):.3f}/{np.max(x):.3f}" for d, x in eff.items() if x)
        auc = v.get("c2st_auc")
        print(f"{kind:>10} ({'shift' if v['shift'] else 'no shift'}): none/watch/drift "
              f"{v['severity']['none']}/{v['severity']['watch']}/{v['severity']['drift']} of {v['windows']}, "
              f"drift {v['drift_rate']:.1%} [{lo:.1%}, {hi:.1%}]; effects min/median/max: {desc}"
              + (f"; C2ST AUC {min(auc):.2f}-{max(auc):.2f}" if auc else "")
              + f"; {v['seconds_per_window']:.2f} s/window", flush=True)
    print(json.dumps(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
