"""CPU engines vs eager on the real SmolLM2: tokens/s at batch 1 and 8, TTFT, equivalence; ratios in one run.

Baselines, both measured here in the same run:
- `eager-generate`: transformers fp32 `generate` with its KV cache, greedy, the batch left-padded;
- `eager-engine`: the server's eager engine (serving/engines/eager.py) driven through the same
  prefill/decode loop as the CPU engines (what `llmops serve --engine eager` runs).
Ratios are against the faster of the two at each batch size. Each configuration runs `--repeats` times,
interleaved, and the best run counts (the machine is shared; the best run is the least disturbed).

    .venv/bin/python -m benchmarks.engines [--runtimes onnxruntime,openvino,onnxruntime-int8] [--new-tokens 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from llmops.settings import get_settings
from serving.engine_build import checks, store
from serving.engine_build import runtimes as cpu_runtimes
from serving.engines import built


def _eager_generate(model, tokenizer, prompts: list[list[int]], new_tokens: int) -> dict[str, float]:
    import torch

    tokenizer.padding_side = "left"
    enc = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kw = dict(do_sample=False, num_beams=1, pad_token_id=pad)
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(**enc, max_new_tokens=1, **kw)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        seconds = time.perf_counter() - t0
    return {"tokens_per_s": len(prompts) * new_tokens / seconds, "ttft_s": ttft}


def _row(name: str, version: str, results: dict[int, dict[str, float]]) -> dict[str, Any]:
    return {"engine": name, "version": version,
            **{f"batch{bs}_{k}": round(v, 4) for bs, r in results.items() for k, v in r.items()}}


def _op_profile(engine, new_tokens: int) -> dict[str, Any]:
    """Per-operator shares of ONNX Runtime node time over `new_tokens` decode steps at batch 1, from a second
    session of the engine's graph with ORT's profiler on (same thread settings)."""
    import collections
    import json as _json

    import onnxruntime as ort

    from serving.engines.ort import OnnxRuntimeEngine, session_options

    so = session_options(engine.threads, engine.spinning)
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="llmops-ort-profile-")) / "ort")  # not the cwd
    graph = engine.engine_dir / engine.manifest.get("graph_file", "decoder.onnx")
    profiled = OnnxRuntimeEngine(engine.engine_dir, engine.model_dir, manifest=engine.manifest, max_slots=1,
                                 threads=engine.threads, spinning=engine.spinning)
    profiled.session = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])  # profiler on
    checks.engine_greedy(profiled, [[1, *range(200, 232)]], new_tokens)
    trace = Path(profiled.session.end_profiling())
    events = _json.loads(trace.read_text())
    shutil.rmtree(trace.parent, ignore_errors=True)
    per_op: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    runs = sum(1 for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    total = sum(per_op.values())
    return {"runs": runs, "node_ms_per_run": round(total / runs / 1000, 3),
            "ops": {op: {"share": round(us / total, 4), "nodes_per_run": nodes[op] // runs}
                    for op, us in per_op.most_common()}}


def _timed(runners: dict[str, Any], base: list[list[int]], batch_sizes: list[int], repeats: int
           ) -> dict[str, dict[int, dict[str, float]]]:
    """Each runner at each batch size, `repeats` rounds interleaved; the best round per (runner, batch)."""
    best: dict[str, dict[int, dict[str, float]]] = {}
    for run in runners.values():  # warm-up
        run(base[:1])
    for _ in range(repeats):
        for bs in batch_sizes:
            prompts = [base[i % len(base)] for i in range(bs)]
            for name, run in runners.items():
                r = run(prompts)
                cur = {"tokens_per_s": r["tokens_per_s"], "ttft_s": r["ttft_s"]}
                prev = best.setdefault(name, {}).get(bs)
                if prev is None or cur["tokens_per_s"] > prev["tokens_per_s"]:
                    best[name][bs] = cur
                print(f"  {name:24s} batch {bs}: {cur['tokens_per_s']:7.1f} tok/s  TTFT {cur['ttft_s']:.3f} s  "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return best


def _ratios(best, runtimes: list[str], batch_sizes: list[int]) -> dict[str, float]:
    ratios = {}
    for rt in runtimes:
        for bs in batch_sizes:
            strongest = max(best["eager-generate"][bs]["tokens_per_s"], best["eager-engine"][bs]["tokens_per_s"])
            ratios[f"{rt}/eager batch{bs} tokens/s"] = round(best[rt][bs]["tokens_per_s"] / strongest, 2)
            fastest_ttft = min(best["eager-generate"][bs]["ttft_s"], best["eager-engine"][bs]["ttft_s"])
            ratios[f"{rt}/eager batch{bs} TTFT"] = round(best[rt][bs]["ttft_s"] / fastest_ttft, 2)
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="merged checkpoint dir (default: the base model)")
    ap.add_argument("--runtimes", default=",".join(cpu_runtimes()),
                    help="comma-separated: onnxruntime, openvino, onnxruntime-int8 (lossy: reports agreement "
                    "only; onnxruntime-int8:WEIGHTS picks a recipe of serving/engine_build/quantize.py WEIGHTS, "
                    "e.g. :q8, :s8)")
    ap.add_argument("--no-eager", action="store_true", help="time the engines only (no eager sides, no ratios)")
    ap.add_argument("--profile", action="store_true", help="also print each ONNX Runtime engine's per-operator "
                    "shares of node time over --new-tokens decode steps at batch 1 (ORT's profiler)")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from llmops import host

    host_fp = host.for_benchmark()  # the machine these timings come from (printed on stderr, recorded below)
    load_before = os.getloadavg()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    settings = get_settings()
    params = settings.params()
    model_dir = args.model or settings.base_model_dir
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    runtimes = [r for r in args.runtimes.split(",") if r]

    def build(name: str) -> dict[str, Any]:  # "onnxruntime", "openvino", "onnxruntime-int8[:q8|s8|q4-mlp...]"
        name, _, weights = name.partition(":")
        runtime, _, dtype = name.partition("-")
        return store.build_cpu_engine(settings, model_dir, runtime, progress=print, dtype=dtype or "float32",
                                      int8_weights=weights or params.engine.quantized.weights)

    builds = {rt: build(rt) for rt in runtimes}
    engines = {rt: built.load_built(builds[rt], model_dir, max_slots=max(batch_sizes)) for rt in runtimes}
    tokenizer = next(iter(engines.values())).tokenizer
    base = checks.encode_prompts(tokenizer, params.engine.prompts)
    runners: dict[str, Any] = {rt: (lambda p, e=e: checks.engine_greedy(e, p, args.new_tokens))
                               for rt, e in engines.items()}
    versions = {rt: f"{rt} {builds[rt]['runtime_version']}" for rt in runtimes}
    equivalence: dict[str, Any] = {}
    if not args.no_eager:
        from serving.engines.eager import EagerEngine

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        eager_engine = EagerEngine(model_dir, max_slots=max(batch_sizes))
        print("equivalence: eager reference...", flush=True)
        reference = checks.eager_reference(model, tokenizer, params.engine)
        equivalence = {rt: checks.check_equivalence(e, model, tokenizer, params.engine, reference)
                       for rt, e in engines.items()}
        print("equivalence:", {rt: f"{eq['identical']}/{eq['prompts']}" for rt, eq in equivalence.items()})
        runners = {"eager-generate": lambda p: _eager_generate(model, tokenizer, p, args.new_tokens),
                   "eager-engine": lambda p: checks.engine_greedy(eager_engine, p, args.new_tokens), **runners}
        versions |= dict.fromkeys(("eager-generate", "eager-engine"),
                                  f"transformers {transformers.__version__}, torch {torch.__version__}")
    profiles = {rt: _op_profile(e, args.new_tokens) for rt, e in engines.items()
                if args.profile and e.runtime == "onnxruntime"}
    for rt, prof in profiles.items():
        print(f"profile {rt}: {prof['node_ms_per_run']} ms of node time per run; " + ", ".join(
            f"{op} {o['share']:.1%} ({o['nodes_per_run']})" for op, o in list(prof["ops"].items())[:8]), flush=True)

    best = _timed(runners, base, batch_sizes, args.repeats)
    rows = [_row(name, versions[name], res) for name, res in best.items()]
    ratios = {} if args.no_eager else _ratios(best, runtimes, batch_sizes)
    report = {"model": str(model_dir), "new_tokens": args.new_tokens, "hardware": host.cpu_hardware(),
              "host": host_fp, "load_average": {"before": load_before, "after": os.getloadavg()},
              "rows": rows, "ratios": ratios, "profiles": profiles,
              "threads": {rt: {k: e.info().get(k) for k in ("threads", "spinning")} for rt, e in engines.items()},
              "build_seconds": {rt: builds[rt].get("build_seconds") for rt in runtimes},
              "equivalence": {rt: {k: eq[k] for k in ("identical", "prompts", "identical_rate", "new_tokens")}
                              for rt, eq in equivalence.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for row in rows:
            print(row)
        for k, v in ratios.items():
            print(f"{k}: {v}x")
        print("equivalence:", report["equivalence"], "threads:", report["threads"], "load:", report["load_average"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
