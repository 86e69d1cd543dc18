"""CPU engine on ONNX Runtime (`onnxruntime` InferenceSession, CPU execution provider) over the decoder graph.

Graph optimisations run once at build time and the optimised model is saved beside the graph, so a
server start loads it without re-optimising.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from serving.engines.graph_engine import GraphEngine

RUNTIME = "onnxruntime"


def runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def session_options(threads: int | None, optimized_out: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized_out is not None:
        so.optimized_model_filepath = str(optimized_out)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    optimized_out.name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return so


class OnnxRuntimeEngine(GraphEngine):
    runtime = RUNTIME

    def _load(self, graph: Path, threads: int | None) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(str(graph), session_options(threads),
                                             providers=["CPUExecutionProvider"])

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        logits, present = self._session.run(["logits", "present"], feeds)
        return logits, present
