"""Time to score one window of 10,000 logged requests for drift, ours vs Evidently, on this machine's cores.

    .venv/bin/python -m benchmarks.drift_window [--requests 10000] [--sides ours,ours-full,evidently] [--json]

The window's 10,000 rows are drawn with replacement, 1% error statuses, from `--traffic`: `mixed` (default:
the validation and test splits plus both shifted slices, 3,457 distinct prompts, so the embedding stage does
its full default work of 2,000 distinct prompts) or `reference-like` (validation + test only: 757 distinct).
The reference is the monitor's own (`ensure_reference`: built once from the train split and saved under the
state dir); building it is a one-off, timed apart. Sides:

- `ours`: `evaluate_window` as `llmops monitor run` calls it (params.yaml `drift`: the MMD embeds a seeded
  subsample of `mmd_max_window` distinct window prompts; lengths, rates and their tests use all 10,000 rows).
- `ours-full`: the same with `drift.mmd_max_window=0`: every distinct window prompt embedded and in the MMD.
- `evidently`: Evidently 0.7 `DataDriftPreset` over the same 10,000 rows and the same reference: prompt and
  response text columns (its text drift: a domain classifier on TF-IDF) plus prompt/response length columns
  (computed from the same texts, inside the timed region). Evidently is not a project dependency: it runs in
  a child process with `--evidently-path` on PYTHONPATH (see benchmarks/README.md for how it was installed).

Timed: wall time from the window's rows in memory to the verdict, model already loaded (a monitor process
keeps it), and the process CPU time over the same region (all threads): on a shared machine the wall time
measures the neighbours too, the CPU time does not. Prints loadavg before and after each side, and the
ratios Evidently / ours (wall and CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EVIDENTLY = Path("/tmp/h5_evidently")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


TRAFFIC = {  # every pool is outside the reference (the train split)
    "reference-like": ("data/splits/validation.jsonl", "data/splits/test.jsonl"),
    "mixed": ("data/splits/validation.jsonl", "data/splits/test.jsonl", "data/drift/shifted.jsonl",
              "data/sample/shifted.jsonl"),
}


def _window(requests: int, seed: int, traffic: str) -> list:
    from llmops.data.records import read_jsonl
    from monitoring.drift import WindowRecord, window_from_dataset

    pool = []
    for path in TRAFFIC[traffic]:
        pool += window_from_dataset(read_jsonl(REPO / path).to_dict(orient="records"))
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.integers(0, len(pool), size=requests):
        rec = pool[int(i)]
        status = 500 if rng.random() < 0.01 else 200
        out.append(WindowRecord(rec.prompt, rec.response if status == 200 else "", status=status))
    return out


def _ours(reference, window, params, embedder, full: bool) -> dict:
    from monitoring.drift import evaluate_window

    if full:
        params = params.model_copy(update={"drift": params.drift.model_copy(update={"mmd_max_window": 0})})
    before = _load()
    t, cpu = time.perf_counter(), time.process_time()
    report = evaluate_window(reference, window, params, embedder=embedder)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"seconds": seconds, "cpu_s": cpu, "drifted": report.drifted, "fired": report.fired,
            "timings": {k: round(v, 2) for k, v in report.timings.items()}, "load_before": before,
            "load_after": _load()}


_CHILD = r"""
import json, sys, time
import pandas as pd
t0 = time.perf_counter()
from evidently import Dataset, DataDefinition, Report
from evidently.presets import DataDriftPreset
import_s = time.perf_counter() - t0
data = json.load(open(sys.argv[1]))
t, cpu = time.perf_counter(), time.process_time()
def frame(rows):
    df = pd.DataFrame(rows, columns=["prompt", "response"])
    df["prompt_length"] = df["prompt"].str.split().str.len()
    df["response_length"] = df["response"].str.split().str.len()
    return df
definition = DataDefinition(text_columns=["prompt", "response"], numerical_columns=["prompt_length", "response_length"])
ref = Dataset.from_pandas(frame(data["reference"]), data_definition=definition)
cur = Dataset.from_pandas(frame(data["window"]), data_definition=definition)
result = Report([DataDriftPreset()]).run(cur, ref)
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
drifted = None
for metric in result.dict()["metrics"]:
    if "DriftedColumnsCount" in str(metric.get("metric_id", "")):
        drifted = metric["value"]
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "import_s": import_s, "drifted_columns": drifted}))
"""


def _evidently(reference_rows, window, path: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.json"
        data.write_text(json.dumps({"reference": reference_rows,
                                    "window": [[r.prompt, r.response] for r in window]}))
        env = {**os.environ, "PYTHONPATH": f"{path}:{os.environ.get('PYTHONPATH', '')}"}
        before = _load()
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(data)], capture_output=True, text=True, env=env,
                              timeout=1800)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "load_before": before, "load_after": _load()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--sides", default="ours,ours-full,evidently")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (this machine has 2 cores)")
    parser.add_argument("--evidently-path", type=Path, default=DEFAULT_EVIDENTLY,
                        help="directory holding evidently and its extra dependencies (pip install --target)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--traffic", choices=sorted(TRAFFIC), default="mixed",
                        help="reference-like: 757 held-out prompts (quiet verdict); mixed: + both shifted slices, "
                             "3,457 distinct prompts, enough to fill the default 2,000-prompt MMD sample")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from llmops import host

    host_fp = host.for_benchmark()  # the machine these timings come from (printed on stderr, recorded below)

    import torch

    from llmops.data.records import read_jsonl
    from llmops.modeling.prompts import user_message
    from llmops.settings import get_settings
    from monitoring.drift.features import embedder_for
    from monitoring.drift.reference import default_reference_dir, ensure_reference

    torch.set_num_threads(args.threads)
    settings = get_settings()
    params = settings.params()
    embedder = embedder_for(settings)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    t = time.perf_counter()
    built = not (default_reference_dir(settings) / "reference.json").is_file()
    reference = ensure_reference(settings, params)  # the monitor's own: built once from the train split, saved
    results: dict = {"host": host_fp, "requests": args.requests, "threads": args.threads, "cores": os.cpu_count(),
                     ("reference_build_s" if built else "reference_load_s"): round(time.perf_counter() - t, 1),
                     "reference_prompts": reference.meta["prompts"]}
    window = _window(args.requests, args.seed, args.traffic)
    results["traffic"] = args.traffic
    results["distinct_prompts"] = len({r.prompt for r in window})
    for side in sides:
        if side in ("ours", "ours-full"):
            results[side] = _ours(reference, window, params, embedder, full=side == "ours-full")
        elif side == "evidently":
            train = read_jsonl(REPO / "data" / "splits" / "train.jsonl").to_dict(orient="records")
            results[side] = _evidently([[user_message(r), r["output"]] for r in train], window, args.evidently_path)
        else:
            parser.error(f"unknown side {side!r}")
        if not args.json:
            print(f"{side}: {json.dumps(results[side])}", flush=True)
    if "ours" in results and "seconds" in results.get("evidently", {}):
        results["ratio_evidently_over_ours"] = results["evidently"]["seconds"] / results["ours"]["seconds"]
        results["cpu_ratio_evidently_over_ours"] = results["evidently"]["cpu_s"] / results["ours"]["cpu_s"]
    if "ours" in results and "ours-full" in results:
        results["ratio_full_over_ours"] = results["ours-full"]["seconds"] / results["ours"]["seconds"]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
