"""The int8 engine's held-out answer perplexity on a CPU without VNNI, emulated: reproduces the u8s8 saturation.

ONNX Runtime picks its int8 kernel by CPUID. Under QEMU user mode with `-cpu Haswell` (AVX2, no AVX-512, no
VNNI) it runs the AVX2 u8s8 kernel, whose vpmaddubsw sums pairs of u8*s8 products into int16 and saturates
for full 8-bit weights; `reduce_range` (7-bit weights) keeps the sums in range. Run it natively and emulated
on the engines `benchmarks/int8_settings.py` built, and compare with eager's perplexity from that run:

    .venv/bin/python -m benchmarks.int8_saturation ENGINE_DIR... --json
    qemu-x86_64 -cpu Haswell .venv/bin/python -m benchmarks.int8_saturation --kernel-check --emulated Haswell
    qemu-x86_64 -cpu Haswell .venv/bin/python -m benchmarks.int8_saturation ENGINE_DIR... --json --emulated Haswell

(/proc/cpuinfo is not emulated by QEMU user mode: `--emulated` names the CPU model for the report.)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from llmops import host
from llmops.settings import get_settings
from serving.engines import built


def kernel_check(k: int = 64, n: int = 16) -> dict[str, float]:
    """ONNX Runtime's u8s8 MatMulInteger on worst-case inputs (activations 255) vs the exact int32 product, with
    full 8-bit weights (100..127), 7-bit ones (50..63, what reduce_range gives) and unsigned 8-bit ones (U8U8):
    the max relative error."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    a = np.full((4, k), 255, dtype=np.uint8)
    out = {}
    cases = {"8-bit weights": (100, 128, np.int8), "7-bit weights": (50, 64, np.int8),
             "8-bit u8 weights (U8U8)": (200, 256, np.uint8)}
    for name, (lo, hi, dtype) in cases.items():
        b = rng.integers(lo, hi, size=(k, n), dtype=dtype)
        btype = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
        graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "g",
                                  [helper.make_tensor_value_info("A", TensorProto.UINT8, [4, k])],
                                  [helper.make_tensor_value_info("Y", TensorProto.INT32, [4, n])],
                                  [helper.make_tensor("B", btype, [k, n], b.tobytes(), raw=True)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"A": a})[0]
        exact = a.astype(np.int32) @ b.astype(np.int32)
        out[name] = float(np.abs(got - exact).max() / np.abs(exact).max())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine_dirs", nargs="*", type=Path)
    ap.add_argument("--kernel-check", action="store_true", help="only the worst-case MatMulInteger check (seconds)")
    ap.add_argument("--model", type=Path, default=None, help="merged checkpoint dir (default: the base model)")
    ap.add_argument("--emulated", default=None, help="the QEMU -cpu model this runs under, for the report")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    if args.kernel_check:
        print(json.dumps({"emulated": args.emulated, "max_relative_error": kernel_check()}))
        return 0
    from llmops.modeling.prompts import encode_example
    from serving.engine_build import gate as quality_gate

    host_fp = host.for_benchmark()  # the machine these figures come from (said on stderr, recorded below)

    settings = get_settings()
    cfg = settings.params().engine.quantized
    model_dir = args.model or settings.base_model_dir
    records = quality_gate.heldout_records(settings.project_dir, cfg)
    rows = {}
    for engine_dir in args.engine_dirs:
        manifest = built.read_manifest(engine_dir) | {"engine_dir": str(engine_dir)}
        engine = built.load_built(manifest, model_dir, max_slots=8)
        examples = []
        for r in records:
            ids, labels = encode_example(engine.tokenizer, r)
            examples.append((ids, sum(1 for x in labels if x == -100)))
        t0 = time.perf_counter()
        nll, n = quality_gate.engine_answer_nll(engine, examples)
        quant = manifest["build_config"].get("quantization") or {}
        rows[manifest["name"]] = {"weights": quant.get("weights"), "reduce_range": quant.get("reduce_range"),
                                  "perplexity_engine": math.exp(nll / n),
                                  "answer_tokens": n, "seconds": round(time.perf_counter() - t0, 1)}
    where: dict = host_fp
    if args.emulated:
        where = {"emulated_cpu": f"qemu-x86_64 -cpu {args.emulated}", "real_host": host_fp}
    report = {"host": where, "records": len(records), "rows": rows,
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    lines = [f"{name}: reduce_range={r['reduce_range']} perplexity {r['perplexity_engine']:.3f}"
             for name, r in rows.items()]
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
