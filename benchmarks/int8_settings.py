"""int8 quantisation settings on this host: full 8-bit weights vs `reduce_range` (7-bit), quality and speed.

For each setting the int8 ONNX Runtime engine is built from the real SmolLM2 (serving/engines/int8.py, the
setting forced), judged by the quality gate exactly as compile_engine does (params.yaml engine.quantized:
held-out answer perplexity and ROUGE-L vs eager), and timed by the short benchmark (engine.benchmark) against
the fp32 engine, `--repeats` times interleaved, best run kept (the machine is shared). On a CPU with VNNI both
settings run the same saturation-free kernel, so this measures what 7-bit weights cost in quality and speed;
the saturation itself (x86 without VNNI) needs such a CPU.

    .venv/bin/python -m benchmarks.int8_settings [--model DIR] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from llmops import host
from llmops.settings import Settings, get_settings
from serving.engine_build import checks, store
from serving.engines import built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="merged checkpoint dir (default: the base model)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--settings", default="s8,s8-7bit", help="comma-separated: s8 (QInt8 weights), s8-7bit "
                    "(QInt8, reduce_range), u8u8 (QUInt8 weights: no u8s8 kernel, so no saturation); "
                    "serving/engine_build/quantize.py WEIGHTS")
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 engine's timing")
    ap.add_argument("--store", type=Path, default=None, help="engine store state dir to build in / reuse (default: a "
                    "fresh temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    host_fp = host.for_benchmark()  # the machine these timings come from (said on stderr, recorded below)

    import torch
    from transformers import AutoModelForCausalLM

    from serving.engine_build import gate as quality_gate

    settings = get_settings()
    params = settings.params()
    cfg = params.engine
    model_dir = args.model or settings.base_model_dir
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    state = Settings(state_dir=args.store or Path(tempfile.mkdtemp(prefix="llmops-int8-settings-")))
    slots = max([*cfg.benchmark.batch_sizes, 8])
    engines: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    if not args.no_fp32:
        fp32 = store.build_cpu_engine(state, model_dir, "onnxruntime")
        engines["onnxruntime fp32"] = built.load_built(fp32, model_dir, max_slots=slots)
        rows["onnxruntime fp32"] = {"build_seconds": fp32["build_seconds"]}
    records = quality_gate.heldout_records(settings.project_dir, cfg.quantized)
    for key in args.settings.split(","):
        name = f"int8 {key}"
        m = store.build_cpu_engine(state, model_dir, "onnxruntime", dtype="int8", int8_weights=key)
        engine = built.load_built(m, model_dir, max_slots=slots)
        eos = set(engine.eos_token_ids) | checks.model_eos_ids(model)
        gate = quality_gate.quality_gate(engine, model, engine.tokenizer, records, cfg.quantized, eos)
        engines[name] = engine
        rows[name] = {"build_seconds": m["build_seconds"], "quantization": m["build_config"]["quantization"],
                      **{k: gate[k] for k in ("perplexity_eager", "perplexity_engine", "perplexity_increase",
                                              "rouge_l_eager", "rouge_l_engine", "rouge_l_drop", "passed")},
                      "identical_rate": gate["agreement"]["identical_rate"]}
    for _ in range(args.repeats):  # interleaved: a load spike hits every engine alike
        for name, engine in engines.items():
            got = checks.short_benchmark(engine, engine.tokenizer, cfg)
            for k, v in got.items():
                best = rows[name].get(k)
                better = max if k.endswith("tokens_per_s") else min
                rows[name][k] = v if best is None else better(best, v)
    report = {"model": str(model_dir), "host": host_fp, "records": len(records),
              "new_tokens": cfg.quantized.new_tokens, "benchmark": cfg.benchmark.model_dump(),
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"host: {host.host_line(host_fp)}  ({report['when']})")
    for name, r in rows.items():
        q = (f"ppl {r['perplexity_engine']:.3f} vs eager {r['perplexity_eager']:.3f} "
             f"({r['perplexity_increase']:+.2%}), "
             f"ROUGE-L drop {r['rouge_l_drop']:+.3f}, gate {'pass' if r['passed'] else 'FAIL'}; "
             if "passed" in r else "")
        speed = ", ".join(f"{k}={v}" for k, v in r.items() if k.startswith("batch"))
        print(f"{name:28s} {q}{speed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
