"""int8 CPU engine builds: ONNX Runtime dynamic quantisation of the GroupQueryAttention graph's MatMul weights.

Per-channel int8 weights, activations quantised per step (MatMulInteger / DynamicQuantizeMatMul kernels, VNNI
where the CPU has it) for the attention output and gate/up projections; the projections measured to be
sensitive (CONFIG keep_float), attention, norms and the tied embedding/head stay fp32. Chosen by measurement over ORT's
8-bit weight-only `MatMulNBits` (block 32): dynamic quantisation was the faster of the two, the weight-only
variant no faster than fp32 here (numbers in benchmarks/README.md). Being lossy, this engine is
never trusted on equivalence: `serving.engine_build.gate` measures agreement, held-out answer perplexity and
ROUGE-L against eager, and only an engine within params.yaml `engine.quantized` tolerances is offered by
`--engine auto`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

RUNTIME = "onnxruntime"
DTYPE = "int8"
# Kept fp32: the MLP down projection and the fused QKV projection, the two whose quantisation cost the most
# answer perplexity (benchmarks/README.md, measurements cited by the code). The attention output and the gate/up
# projection (the largest) are int8.
CONFIG = {"method": "onnxruntime.quantize_dynamic", "weight_type": "QInt8", "per_channel": True,
          "op_types": ["MatMul"], "keep_float": ["down", "qkv"]}
# x86 int8 dot products without saturation: VNNI (vpdpbusd) accumulates u8*s8 pairs straight into int32.
# Without it MLAS's u8s8 kernel sums pairs with vpmaddubsw into int16, which saturates for 8-bit s8 weights
# (255*127*2 > 32767). ONNX Runtime's guidance for such CPUs: 7-bit weights (reduce_range) or U8U8. Measured
# (benchmarks/README.md, int8 per host): 7-bit weights fail the perplexity gate even without saturation; U8U8
# (u8 weights: the kernel widens to 16 bits, cannot saturate) passes it; on a VNNI host s8 is the fastest and
# passes, so VNNI hosts keep s8.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86 = ("x86_64", "amd64", "i386", "i686")
WEIGHTS = {"s8": {"weight_type": "QInt8", "reduce_range": False},  # 8-bit signed: the u8s8 kernel
           "s8-7bit": {"weight_type": "QInt8", "reduce_range": True},  # ORT's reduce_range
           "u8u8": {"weight_type": "QUInt8", "reduce_range": False}}  # 8-bit unsigned: the u8u8 kernel


def settings_for(flags: set[str] | frozenset[str], machine: str, weights: str = "auto") -> dict[str, Any]:
    """The quantisation settings for a CPU with these ISA `flags`: CONFIG with s8 weights where u8s8 cannot
    saturate (VNNI, or not x86), U8U8 on x86 without VNNI; `weights` (params.yaml engine.quantized.weights:
    s8 | s8-7bit | u8u8) overrides. The choice and its cause go into the engine's build config."""
    x86 = machine.lower() in X86
    vnni = sorted(set(flags) & set(VNNI_FLAGS))
    if weights != "auto":
        if weights not in WEIGHTS:
            from llmops.errors import LlmopsError

            raise LlmopsError(f"unknown int8 weights setting {weights!r}",
                              f"set engine.quantized.weights to auto or one of {sorted(WEIGHTS)}")
        key, why = weights, f"set by params.yaml engine.quantized.weights: {weights}"
    elif not x86:
        key, why = "s8", f"{machine}: no x86 u8s8 saturation (int8 dot products accumulate in int32)"
    elif vnni:
        key, why = "s8", f"VNNI ({'+'.join(vnni)}): u8s8 products accumulate in int32 without saturation"
    else:
        key, why = "u8u8", ("x86 without VNNI: u8s8 pairs sum in int16 (vpmaddubsw) and saturate; u8 weights use "
                            "the u8u8 kernel, which cannot")
    return CONFIG | WEIGHTS[key] | {"weights": key, "why": why}


def quantize(src_dir: Path, out_dir: Path, graph_file: str = "decoder.onnx",
             settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `out_dir/graph_file` with int8 MatMul weights from the fp32 graph in `src_dir`, quantised with
    `settings` (`settings_for` this host; CONFIG with full 8-bit weights when None)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = settings or CONFIG
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(src_dir / graph_file), load_external_data=False).graph
    keep = tuple(f"{name}." for name in settings["keep_float"])  # weight initializers are named `<proj>.<layer>`
    exclude = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1].startswith(keep)]
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice is for static/QDQ flows
    try:
        quantize_dynamic(str(src_dir / graph_file), str(out_dir / graph_file),
                         weight_type=QuantType.QUInt8 if settings["weight_type"] == "QUInt8" else QuantType.QInt8,
                         per_channel=settings["per_channel"], op_types_to_quantize=settings["op_types"],
                         reduce_range=bool(settings.get("reduce_range", False)),
                         use_external_data_format=True, nodes_to_exclude=exclude,
                         # GroupQueryAttention is a contrib op ONNX shape inference cannot type: its
                         # outputs are fp32 like everything it feeds
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.getLogger().setLevel(quiet)
    return {"quantize_seconds": round(time.perf_counter() - t0, 2), "int8_matmuls": sum(
        n.op_type == "MatMul" for n in graph.node) - len(exclude), "float_matmuls": len(exclude)}
