"""Calibrate and measure the severity verdict: false `drift` on paraphrased in-domain traffic, detection on shifts.

No-shift traffic is the paraphrase slice (data/drift/paraphrased.jsonl: the training facts asked the way people
write, monitoring/drift/paraphrase.py), not held-out windows of the training generator, which real traffic never
resembles. Shifts: the shipped SQL slice, Spanish questions and cooking questions (monitoring/drift/shifts.py).
Each window is a random subset without replacement of its pool; windows overlap when the pool is small, so they
are exchangeable but not independent (the Wilson interval is then a little optimistic; the count of disjoint
windows each pool allows is reported beside it). Error statuses and feedback ratings are simulated at exactly
the configured baselines (the no-drift hypothesis of those tests), since dataset records carry neither.

The output: per kind, how many windows reached each severity (the `drift` rate with its 95% Wilson interval),
and each detector's effect-size distribution, drawn side by side with the thresholds (calibration.html).

    python -m monitoring.drift.calibration --windows 40 --size 200 --out-dir .llmops/drift/calibration
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmops.data.records import read_jsonl
from llmops.params import Params
from llmops.settings import Settings, get_settings
from monitoring.drift import stats
from monitoring.drift.detect import evaluate_window
from monitoring.drift.features import embed, embedder_for
from monitoring.drift.records import WindowRecord, window_from_dataset
from monitoring.drift.reference import Reference, reference_from_splits

# kind -> shipped slice; "paraphrase" is the no-shift traffic, the rest are shifts that must reach `drift`
SLICES = {"paraphrase": Path("data/drift/paraphrased.jsonl"), "sql": Path("data/drift/shifted.jsonl"),
          "spanish": Path("data/drift/spanish.jsonl"), "cooking": Path("data/drift/cooking.jsonl")}
NO_SHIFT = "paraphrase"
EFFECT_DETECTORS = ("prompt_embedding_mmd", "prompt_novel_share", "prompt_length_psi", "response_length_psi")


class MemoEmbedder:
    """The real embedder with a per-text memo: calibration scores the same prompts in many windows, so each
    prompt is embedded once (same vectors as embedding it inside every window)."""

    def __init__(self, embedder: Any) -> None:
        self.inner = embedder
        self.tokenizer = embedder.tokenizer
        self.dim = embedder.dim
        self.model_dir = embedder.model_dir
        self._memo: dict[str, np.ndarray] = {}

    def warm(self, texts: Sequence[str], batch_size: int = 64) -> None:
        todo = sorted({t for t in texts if t not in self._memo})
        for text, vec in zip(todo, embed(self.inner, todo, batch_size), strict=True):
            self._memo[text] = vec

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self.warm(texts, batch_size)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])


def draw_windows(pool: Sequence[WindowRecord], windows: int, size: int, seed: int,
                 params: Params, simulate_outcomes: bool = True) -> list[list[WindowRecord]]:
    """`windows` random windows of `size` records (without replacement inside a window)."""
    if size > len(pool):
        raise ValueError(f"window size {size} exceeds the pool of {len(pool)} records")
    rng = np.random.default_rng(seed)
    p = params.drift
    out = []
    for _ in range(windows):
        window = []
        for i in rng.choice(len(pool), size=size, replace=False):
            rec = pool[int(i)]
            if simulate_outcomes:
                status = 500 if rng.random() < p.error_rate_baseline else 200
                rating = None
                if rng.random() < 0.3:  # a third of requests get a rating; negative at the baseline rate
                    rating = -1.0 if rng.random() < p.negative_feedback_baseline else 1.0
                rec = WindowRecord(rec.prompt, rec.response if status == 200 else "", status=status, feedback=rating)
            window.append(rec)
        out.append(window)
    return out


def severity_rates(reference: Reference, windows: list[list[WindowRecord]], params: Params,
                   embedder: Any) -> dict[str, Any]:
    """Severity counts over `windows`, the `drift` rate with its Wilson interval, and effect distributions."""
    levels: Counter[str] = Counter()
    by_detector: dict[str, Counter[str]] = {}
    effects: dict[str, list[float]] = {}
    seconds = []
    for window in windows:
        t = time.perf_counter()
        report = evaluate_window(reference, window, params, embedder=embedder)
        seconds.append(time.perf_counter() - t)
        levels[report.severity.value] += 1
        for d in report.detectors:
            if d.skipped:
                continue
            by_detector.setdefault(d.name, Counter())[d.severity.value] += 1
            if d.effect is not None:
                effects.setdefault(d.name, []).append(float(d.effect))
    n, drifted = len(windows), levels["drift"]
    low, high = stats.wilson_interval(drifted, n)
    return {"windows": n, "severity": {k: levels[k] for k in ("none", "watch", "drift")},
            "drift_rate": drifted / n, "drift_wilson95": [low, high],
            "by_detector": {k: dict(v) for k, v in sorted(by_detector.items())},
            "effects": effects, "seconds_per_window": float(np.mean(seconds))}


def load_pool(project_dir: Path, kind: str) -> list[WindowRecord]:
    return window_from_dataset(read_jsonl(project_dir / SLICES[kind]).to_dict(orient="records"))


def calibrate(settings: Settings, params: Params, *, windows: int = 40, size: int | None = None, seed: int = 7,
              kinds: Sequence[str] = tuple(SLICES), shift_windows: int | None = None,
              reference: Reference | None = None, embedder: Any = None,
              pools: dict[str, list[WindowRecord]] | None = None) -> dict[str, Any]:
    """Severity rates per kind: `windows` paraphrase windows (no shift), `shift_windows` of each shift."""
    size = size or params.drift.window_size
    memo = embedder if isinstance(embedder, MemoEmbedder) else MemoEmbedder(embedder or embedder_for(settings))
    reference = reference or reference_from_splits(settings, params, embedder=memo.inner)
    pools = pools or {k: load_pool(settings.project_dir, k) for k in kinds}
    out: dict[str, Any] = {"window_size": size, "alpha": params.drift.alpha,
                           "effect_thresholds": params.drift.effect.model_dump(),
                           "reference": {"prompts": int(reference.meta.get("prompts", 0)),
                                         "source": reference.meta.get("prompt_source")}, "kinds": {}}
    for i, kind in enumerate(kinds):
        n = windows if kind == NO_SHIFT else (shift_windows or windows)
        drawn = draw_windows(pools[kind], n, size, seed + i, params)
        memo.warm(sorted({r.prompt for w in drawn for r in w}), params.drift.embed_batch_size)
        rates = severity_rates(reference, drawn, params, memo)
        out["kinds"][kind] = {**rates, "shift": kind != NO_SHIFT, "pool": len(pools[kind]),
                              "disjoint_windows": len(pools[kind]) // size, "source": str(SLICES.get(kind, kind))}
    out["separation"] = separation(out)
    return out


def separation(result: dict[str, Any]) -> dict[str, Any]:
    """Per drift-capable prompt detector: the largest no-shift effect, the smallest shifted one, the threshold."""
    kinds = result["kinds"]
    out = {}
    for det in ("prompt_embedding_mmd", "prompt_novel_share"):
        null = kinds.get(NO_SHIFT, {}).get("effects", {}).get(det, [])
        shifts = {k: min(v["effects"].get(det, [np.nan])) for k, v in kinds.items() if v["shift"]}
        out[det] = {"no_shift_max": max(null) if null else None,
                    "no_shift_p95": float(np.quantile(null, 0.95)) if null else None,
                    "shift_min": shifts}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--windows", type=int, default=40, help="paraphrase (no-shift) windows")
    parser.add_argument("--shift-windows", type=int, default=None, help="windows per shift (default: --windows)")
    parser.add_argument("--size", type=int, default=None, help="requests per window (default: drift.window_size)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out-dir", type=Path, default=None, help="write calibration.json and calibration.html")
    args = parser.parse_args(argv)
    settings = get_settings()
    result = calibrate(settings, settings.params(), windows=args.windows, size=args.size, seed=args.seed,
                       shift_windows=args.shift_windows)
    if args.out_dir:
        from monitoring.drift.html import write_calibration

        write_calibration(result, args.out_dir)
    print(json.dumps({k: v for k, v in result.items() if k != "kinds"}
                     | {"kinds": {k: {kk: vv for kk, vv in v.items() if kk != "effects"}
                                  for k, v in result["kinds"].items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
