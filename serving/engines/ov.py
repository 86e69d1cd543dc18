"""CPU engine on OpenVINO (`openvino` CPU plugin) over the same decoder graph, read straight from ONNX.

Measured against ONNX Runtime in `benchmarks/engines.py`; fp32 inference precision is forced because
OpenVINO would otherwise run bf16 on CPUs with avx512_bf16/AMX (a quantised engine, not full precision).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from serving.engines.graph_engine import GraphEngine

RUNTIME = "openvino"


def runtime_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


class OpenVinoEngine(GraphEngine):
    runtime = RUNTIME

    def _load(self, graph: Path, threads: int | None) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1}
        self._compiled = core.compile_model(str(graph), "CPU", config)
        self._request = self._compiled.create_infer_request()

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = self._request.infer(feeds)
        return out["logits"], out["present"]
