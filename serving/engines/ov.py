"""CPU engine on OpenVINO (`openvino` CPU plugin) over the portable decoder graph, read straight from ONNX.

OpenVINO only executes the graph (`serving/engine_build/decoder_graph.py`: the KV cache goes in as `past` and comes
back grown as `present`); this engine keeps the caches. Each slot owns its cache as a numpy array
[L, 2, Hkv, len, D]; a batched decode needs them as one left-padded tensor, so the padded tensor of the last
decode (the graph's `present`) is kept as the batch view and reused while the running set stays the same
(`serving/engines/slots.py`). Measured against ONNX Runtime in `benchmarks/engines.py`; fp32 inference
precision is forced because OpenVINO would otherwise run bf16 on CPUs with avx512_bf16/AMX (a quantised
engine, not full precision).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from serving.engines.built import register_built
from serving.engines.slots import SlotCacheEngine

RUNTIME = "openvino"


def runtime_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


class _BatchView:
    """The running set's caches as one left-padded tensor [L, 2, B, Hkv, P, D] plus its mask [B, P]."""

    def __init__(self, slots: tuple[int, ...], past: np.ndarray, mask: np.ndarray) -> None:
        self.slots, self.past, self.mask = slots, past, mask


class OpenVinoEngine(SlotCacheEngine):
    """Prefill/decode over `decoder.onnx` compiled by OpenVINO for this CPU."""

    kind = "cpu"
    runtime = RUNTIME

    def __init__(self, engine_dir: Path, model_dir: Path, *, max_slots: int = 8, max_len: int = 2048,
                 threads: int | None = None, manifest: dict[str, Any] | None = None) -> None:
        import openvino as ov
        from transformers import AutoTokenizer

        self.engine_dir, self.model_dir = Path(engine_dir), Path(model_dir)
        self.manifest = manifest or {}
        shapes = self.manifest.get("graph", {})
        self.layers, self.kv_heads, self.head_dim = shapes["layers"], shapes["kv_heads"], shapes["head_dim"]
        self.vocab = shapes["vocab"]
        self.max_slots = max_slots
        self.max_len = min(max_len, int(shapes.get("max_position_embeddings", max_len)))
        self.name = self.runtime
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._init_slots()  # a slot's own cache: [L, 2, Hkv, len, D]
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1}
        graph = self.engine_dir / self.manifest.get("graph_file", "decoder.onnx")
        self._compiled = ov.Core().compile_model(str(graph), "CPU", config)
        self._request = self._compiled.create_infer_request()

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = self._request.infer(feeds)
        return out["logits"], out["present"]

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "engine": self.manifest.get("name"), "runtime": self.runtime,
                "runtime_version": self.manifest.get("runtime_version"), "device": "cpu", "dtype": "float32",
                "build_config_hash": self.manifest.get("build_config_hash"),
                "cache_key": self.manifest.get("cache_key"), "engine_dir": str(self.engine_dir)}

    # -- views (the bookkeeping is SlotCacheEngine's) ------------------------------------------------
    def _take(self, view: _BatchView, row: int, n: int) -> np.ndarray:
        width = view.past.shape[4]
        return np.ascontiguousarray(view.past[:, :, row, :, width - n:, :])

    def _next_view(self, slots: tuple[int, ...], need: int) -> _BatchView:
        """The old view's rows back to their slots, then a fresh left-padded view of `slots`."""
        self._retire_view()
        width = max(self._len[s] for s in slots)
        past = np.zeros((self.layers, 2, len(slots), self.kv_heads, width, self.head_dim), dtype=np.float32)
        mask = np.zeros((len(slots), width), dtype=np.int64)
        for i, slot in enumerate(slots):
            n = self._len[slot]
            past[:, :, i, :, width - n:, :] = self._kv.pop(slot)
            mask[i, width - n:] = 1
        return _BatchView(slots, past, mask)

    # -- the Engine interface ----------------------------------------------------------------------
    def prefill(self, slot: int, token_ids: list[int]):
        """Run the prompt through the graph, fill `slot`'s cache; fp32 logits [vocab] at the last position."""
        import torch

        self._start(slot, token_ids)
        n = len(token_ids)
        logits, present = self._run({
            "input_ids": np.asarray([token_ids], dtype=np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None, :],
            "attention_mask": np.ones((1, n), dtype=np.int64),
            "past": np.zeros((self.layers, 2, 1, self.kv_heads, 0, self.head_dim), dtype=np.float32),
        })
        self._keep(slot, np.ascontiguousarray(present[:, :, 0]), n)
        return torch.from_numpy(np.array(logits[0], dtype=np.float32))

    def decode(self, slots: list[int], token_ids: list[int]):
        """One new token per slot; fp32 logits [len(slots), vocab]. Slots may be in any order."""
        import torch

        view = self._running(slots, token_ids)
        positions = np.asarray([[self._len[s]] for s in slots], dtype=np.int64)
        mask = np.concatenate([view.mask, np.ones((len(slots), 1), dtype=np.int64)], axis=1)
        logits, present = self._run({
            "input_ids": np.asarray(token_ids, dtype=np.int64)[:, None],
            "position_ids": positions,
            "attention_mask": mask,
            "past": view.past,
        })
        view.past, view.mask = present, mask
        self._advance(slots)
        return torch.from_numpy(np.array(logits, dtype=np.float32))


register_built("openvino", OpenVinoEngine, runtime_version, preference=1)
