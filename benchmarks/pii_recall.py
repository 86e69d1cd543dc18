"""Precision and recall per PII kind of `llmops.privacy.find_pii` on the labelled set data/privacy/pii_eval.jsonl.

    .venv/bin/python -m benchmarks.pii_recall [--json] [--seed N] [--set privacy.KEY=VALUE ...]

The set (regenerate with `python -m llmops.privacy.evalset`) plants PII of every built-in kind in synthetic
prompts and adds hard negatives (versions, dates, digests, UUIDs, stdlib signatures and docs). A finding counts
when it overlaps a labelled span of the same kind (llmops.privacy.evalset.score). Two recognizer fixes were
found on the shipped set (Mastercard 2-series, bare digit runs as phones), so `--seed N` also scores a fresh draw
from the same generators (needs the sample corpus) -- new values, the same formats: not an independent test.
Also timed: texts per second (one thread, engine already built), with the host: a cost on every export.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llmops.host import for_benchmark
from llmops.params import load_params
from llmops.privacy import find_pii
from llmops.privacy.evalset import OUT, build, load, score


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="params override, e.g. privacy.min_score=0.5")
    ap.add_argument("--data", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=None, help="score a fresh draw with this seed instead of --data")
    args = ap.parse_args(argv)
    fp = for_benchmark()
    params = load_params(Path("params.yaml"), args.set)
    records = load(args.data) if args.seed is None else build(seed=args.seed)
    find_pii("warm-up a@b.com", params)  # builds the engine once, outside the timing
    start = time.perf_counter()
    table = score(records, lambda text: find_pii(text, params))
    seconds = time.perf_counter() - start
    report = {"records": len(records), "seed": args.seed, "texts_per_s": round(len(records) / seconds, 1),
              "per_kind": table, "min_score": params.privacy.min_score, "host": fp}
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
        return 0
    print(f"{'kind':<12} {'labelled':>8} {'found':>6} {'TP':>5} {'precision':>9} {'recall':>7}")
    for kind, row in table.items():
        print(f"{kind:<12} {row['labelled']:>8} {row['found']:>6} {row['true_positives']:>5} "
              f"{row['precision']:>9.3f} {row['recall']:>7.3f}")
    print(f"{len(records)} texts in {seconds:.2f} s ({report['texts_per_s']} texts/s, one thread), "
          f"min_score {params.privacy.min_score}")
    print(f"host: {fp['cpu']}, {fp['cores']} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
