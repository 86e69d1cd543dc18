"""Quantised CPU engine builds of the GroupQueryAttention graph: ONNX Runtime recipes (`WEIGHTS`), chosen per host.

A decode step at small batch reads every weight once, so bytes per weight and the kernel that reads them decide
its time (benchmarks/README.md, the decode-step ladder). Two ONNX Runtime methods, alone or combined:

- `onnxruntime.quantize_dynamic` (s8 / s8-7bit / u8u8): per-channel int8 weights, activations quantised per step
  (MatMulInteger / DynamicQuantizeMatMul: the fastest kernels here, VNNI where the CPU has it) for the attention
  output, gate/up and the tied head (ORT's quantiser rewrites the head's Gemm); QKV and down (CONFIG keep_float:
  the two whose per-channel quantisation cost the most perplexity) stay fp32 -- the fp32 MatMuls left were the
  largest share of the int8 engine's step.
- `onnxruntime.matmul_nbits` (q8 / q4-mlp): weight-only blocks (`com.microsoft.MatMulNBits`, block 32, one fp32
  scale per block, accuracy level 4: int8 compute), accurate enough to quantise every projection and the head
  (untied for it by `_untie_head`; the embedding stays fp32 for its Gather), but slower than the dynamic kernels
  at batch 8 and in prefill.
- s8+q8 (auto with VNNI): s8, then QKV and down as 8-bit blocks instead of fp32 (`then`).

Being lossy, these engines are never trusted on equivalence: `serving.engine_build.gate` measures agreement,
held-out answer perplexity and ROUGE-L against eager, and only an engine within params.yaml `engine.quantized`
tolerances is offered by `--engine auto`.
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
# Weight-only block quantisation (MatMulNBits); `bits` per projection, by initializer prefix ("*": the rest,
# "lm_head": the untied head)
NBITS = {"method": "onnxruntime.matmul_nbits", "block_size": 32, "symmetric": True, "accuracy_level": 4}
WEIGHTS = {"s8": CONFIG | {"weight_type": "QInt8", "reduce_range": False},  # 8-bit signed: the u8s8 kernel
           "s8-7bit": CONFIG | {"weight_type": "QInt8", "reduce_range": True},  # ORT's reduce_range
           "u8u8": CONFIG | {"weight_type": "QUInt8", "reduce_range": False},  # 8-bit unsigned: the u8u8 kernel
           "q8": NBITS | {"bits": {"*": 8}},  # every projection and the head: 8-bit blocks
           "q4-mlp": NBITS | {"bits": {"gate_up": 4, "*": 8}},  # gate/up (half the weights) 4-bit, the rest 8
           # s8 (attention output, gate/up, head: the fast dynamic int8 kernels), then the projections s8 must keep
           # float (QKV, down: the sensitive ones) as 8-bit weight blocks instead of fp32
           "s8+q8": CONFIG | {"weight_type": "QInt8", "reduce_range": False, "then": NBITS | {"bits": {"*": 8}}}}


def settings_for(flags: set[str] | frozenset[str], machine: str, weights: str = "auto") -> dict[str, Any]:
    """The quantisation settings for a CPU with these ISA `flags`: s8+q8 where int8 dot products accumulate in
    int32 (VNNI: measured fastest, within the gate), dynamic s8 off x86, dynamic U8U8 on x86
    without VNNI (the setting measured to pass the gate there); `weights` (params.yaml engine.quantized.weights:
    a `WEIGHTS` key) overrides. The choice and its cause go into the engine's build config (so the cache key)."""
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
        key, why = "s8+q8", (f"VNNI ({'+'.join(vnni)}): int8 products accumulate in int32; s8 with the QKV and "
                             "down projections in 8-bit weight blocks instead of fp32 measured fastest at batch 1 "
                             "and 8 and within the gate")
    else:
        key, why = "u8u8", ("x86 without VNNI: u8s8 pairs sum in int16 (vpmaddubsw) and saturate; u8 weights use "
                            "the u8u8 kernel, which cannot")
    return WEIGHTS[key] | {"weights": key, "why": why}


def quantize(src_dir: Path, out_dir: Path, graph_file: str = "decoder.onnx",
             settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `out_dir/graph_file` with int8 MatMul weights from the fp32 graph in `src_dir`, quantised with
    `settings` (`settings_for` this host; CONFIG with full 8-bit weights when None)."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = settings or WEIGHTS["s8"]
    if settings.get("method") == NBITS["method"]:
        return quantize_nbits(src_dir, out_dir, graph_file, settings)
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
    done = {"quantize_seconds": round(time.perf_counter() - t0, 2), "int8_matmuls": sum(
        n.op_type == "MatMul" for n in graph.node) - len(exclude), "float_matmuls": len(exclude)}
    if "then" in settings:  # the projections kept float, in weight-only blocks (s8+q8)
        more = quantize_nbits(out_dir, out_dir, graph_file, settings["then"])
        done |= {"quantize_seconds": round(time.perf_counter() - t0, 2), "nbits_matmuls": more.get("int8_matmuls", 0),
                 "float_matmuls": more["float_matmuls"]}
    return done


def _untie_head(model) -> None:
    """Turn the head (`Gemm(transB=1)` over `embed` when tied, over `lm_head` when not) into a MatMul over its own
    [hidden, vocab] weight `lm_head`, so the quantiser can quantise it; a tied embedding stays fp32 for its Gather."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    for i, node in enumerate(graph.node):
        if node.op_type == "Gemm" and node.input[1] in ("embed", "lm_head"):
            table = next(t for t in graph.initializer if t.name == node.input[1])
            if table.name == "lm_head":
                graph.initializer.remove(table)
            graph.initializer.append(numpy_helper.from_array(
                np.ascontiguousarray(numpy_helper.to_array(table).T), "lm_head"))
            graph.node.remove(node)
            graph.node.insert(i, helper.make_node("MatMul", [node.input[0], "lm_head"], list(node.output),
                                                  name=node.name))
            return


def _matches(weight: str, prefix: str) -> bool:
    """Weight initializers are named `<projection>.<layer>` (`lm_head` for the head); "*" matches any."""
    return prefix == "*" or weight == prefix or weight.startswith(f"{prefix}.")


def quantize_nbits(src_dir: Path, out_dir: Path, graph_file: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Weight-only block quantisation: each MatMul with a constant weight becomes MatMulNBits, `settings["bits"]`
    choosing the width per projection (the first matching prefix; "*" matches every other)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    t0 = time.perf_counter()
    model = onnx.load(str(src_dir / graph_file))
    _untie_head(model)
    weights = {t.name for t in model.graph.initializer}
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level, quiet.level = quiet.level, logging.WARNING  # it logs every node it skips or quantises
    counts: dict[str, int] = {}
    try:
        for prefix, bits in settings["bits"].items():
            matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
            names = [n.name for n in matmuls if n.input[1] in weights and _matches(n.input[1], prefix)]
            if not names:
                continue
            config = DefaultWeightOnlyQuantConfig(
                block_size=settings["block_size"], is_symmetric=settings["symmetric"], bits=bits,
                accuracy_level=settings["accuracy_level"], op_types_to_quantize=("MatMul",))
            # it quantises every MatMul of op_types_to_quantize (nodes_to_include only adds to them): exclude
            quantizer = MatMulNBitsQuantizer(model, algo_config=config,
                                             nodes_to_exclude=[n.name for n in matmuls if n.name not in names])
            quantizer.process()
            model = quantizer.model.model
            counts[f"int{bits}_matmuls"] = counts.get(f"int{bits}_matmuls", 0) + len(names)
    finally:
        quiet.level = level
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{graph_file}.data").unlink(missing_ok=True)  # in place (s8+q8): onnx appends to an existing file
    onnx.save_model(model, str(out_dir / graph_file), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=graph_file + ".data", size_threshold=1024)
    return {"quantize_seconds": round(time.perf_counter() - t0, 2), **counts,
            "float_matmuls": sum(n.op_type == "MatMul" for n in model.graph.node)}
