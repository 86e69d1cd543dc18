"""int8 CPU engine: ONNX Runtime dynamic quantisation of the GroupQueryAttention graph's MatMul weights.

Per-channel int8 weights, activations quantised per step (MatMulInteger / DynamicQuantizeMatMul kernels, VNNI
where the CPU has it) for the attention output and gate/up projections; the projections measured to be
sensitive (CONFIG keep_float), attention, norms and the tied embedding/head stay fp32. Chosen by measurement over ORT's
8-bit weight-only `MatMulNBits` (block 32): dynamic quantisation was 2-3x the fp32 engine's tokens/s, the
weight-only variant no faster than fp32 here (numbers in benchmarks/README.md). Being lossy, this engine is
never trusted on equivalence: `serving.quality_gate` measures agreement, held-out answer perplexity and
ROUGE-L against eager, and only an engine within params.yaml `engine.quantized` tolerances is offered by
`--engine auto`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

RUNTIME = "onnxruntime"
DTYPE = "int8"
# Kept fp32: the MLP down projection and the fused QKV projection. Quantising every MatMul cost +18% answer
# perplexity on 16 held-out records of the base model; without down: +10%; without down and QKV: +3.8%
# (2026-11-23, benchmarks/README.md). The attention output and the gate/up projection (the largest) are int8.
CONFIG = {"method": "onnxruntime.quantize_dynamic", "weight_type": "QInt8", "per_channel": True,
          "op_types": ["MatMul"], "keep_float": ["down", "qkv"]}
QUALITY_FILE = "quality.json"  # the gate's result, written beside the manifest


def quantize(src_dir: Path, out_dir: Path, graph_file: str = "decoder.onnx") -> dict[str, Any]:
    """Write `out_dir/graph_file` with int8 MatMul weights from the fp32 graph in `src_dir`."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(src_dir / graph_file), load_external_data=False).graph
    keep = tuple(f"{name}." for name in CONFIG["keep_float"])  # weight initializers are named `<proj>.<layer>`
    exclude = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1].startswith(keep)]
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice is for static/QDQ flows
    try:
        quantize_dynamic(str(src_dir / graph_file), str(out_dir / graph_file), weight_type=QuantType.QInt8,
                         per_channel=CONFIG["per_channel"], op_types_to_quantize=CONFIG["op_types"],
                         use_external_data_format=True, nodes_to_exclude=exclude,
                         # GroupQueryAttention is a contrib op ONNX shape inference cannot type: its
                         # outputs are fp32 like everything it feeds
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        logging.getLogger().setLevel(quiet)
    return {"quantize_seconds": round(time.perf_counter() - t0, 2), "int8_matmuls": sum(
        n.op_type == "MatMul" for n in graph.node) - len(exclude), "float_matmuls": len(exclude)}
