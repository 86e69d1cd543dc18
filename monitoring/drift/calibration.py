"""Measure the monitor's error rates: false alarms on no-drift windows, detections on the shifted slice.

No-drift windows are drawn from held-out records of the reference distribution that are NOT in the
reference (by default the validation and test splits; the reference is built from the train split), each
a random subset without replacement. Windows overlap when the pool is small, so they are exchangeable but
not independent: the Wilson interval is then a little optimistic; the count of disjoint windows the pool
allows is reported beside it. Error statuses and feedback ratings are simulated at exactly the configured
baselines (the no-drift hypothesis of those tests), since dataset records carry neither.

    python -m monitoring.drift.calibration --windows 200 --size 100 --out calibration.json
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
from monitoring.drift.shifted_slice import DEFAULT_OUT as SHIFTED_PATH


class MemoEmbedder:
    """The real embedder with a per-text memo: calibration scores the same held-out prompts in many windows,
    so each prompt is embedded once (same vectors as embedding it inside every window)."""

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


def fire_rate(reference: Reference, windows: list[list[WindowRecord]], params: Params, embedder: Any) -> dict:
    fired = 0
    by_detector: Counter[str] = Counter()
    seconds = []
    for window in windows:
        t = time.perf_counter()
        report = evaluate_window(reference, window, params, embedder=embedder)
        seconds.append(time.perf_counter() - t)
        fired += report.drifted
        by_detector.update(report.fired)
    low, high = stats.wilson_interval(fired, len(windows))
    return {"windows": len(windows), "fired": fired, "rate": fired / len(windows), "wilson95": [low, high],
            "by_detector": dict(sorted(by_detector.items())), "seconds_per_window": float(np.mean(seconds))}


def calibrate(settings: Settings, params: Params, *, windows: int = 200, size: int = 100, seed: int = 7,
              holdout: Sequence[Path] | None = None, shifted: Path | None = None,
              reference: Reference | None = None, embedder: Any = None) -> dict[str, Any]:
    """False-alarm rate on held-out no-drift windows and detection rate on shifted-slice windows."""
    splits = settings.project_dir / "data" / "splits"
    holdout = list(holdout or [splits / "validation.jsonl", splits / "test.jsonl"])
    shifted = shifted or settings.project_dir / SHIFTED_PATH
    memo = embedder if isinstance(embedder, MemoEmbedder) else MemoEmbedder(embedder or embedder_for(settings))
    reference = reference or reference_from_splits(settings, params, embedder=memo.inner)
    pool = [r for path in holdout for r in window_from_dataset(read_jsonl(path).to_dict(orient="records"))]
    shifted_pool = window_from_dataset(read_jsonl(shifted).to_dict(orient="records"))
    memo.warm([r.prompt for r in pool] + [r.prompt for r in shifted_pool], params.drift.embed_batch_size)
    null = fire_rate(reference, draw_windows(pool, windows, size, seed, params), params, memo)
    alt = fire_rate(reference, draw_windows(shifted_pool, windows, size, seed + 1, params), params, memo)
    return {
        "window_size": size,
        "alpha": params.drift.alpha,
        "reference": {"prompts": int(reference.meta.get("prompts", 0)), "source": reference.meta.get("prompt_source")},
        "no_drift": {**null, "pool": len(pool), "disjoint_windows": len(pool) // size,
                     "pool_sources": [str(p) for p in holdout]},
        "shifted": {**alt, "pool": len(shifted_pool), "disjoint_windows": len(shifted_pool) // size,
                    "pool_source": str(shifted)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    settings = get_settings()
    result = calibrate(settings, settings.params(), windows=args.windows, size=args.size, seed=args.seed)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
