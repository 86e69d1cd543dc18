"""CPU engine on ONNX Runtime over the GroupQueryAttention graph (`gqa_graph.py`), KV cache written in place.

The running batch's caches live in one preallocated buffer per layer and kind, [B, Hkv, capacity, D],
right-padded (row i holds slot i's tokens at 0..len-1). Each decode step binds those buffers as both
`past_*` and `present_*` (ONNX Runtime IO binding), so the kernel appends the new token's K/V in place and
nothing else of the cache moves. Only a change of the running set (a request joins or leaves) or a full
buffer rebuilds the view: slots that stay are copied row by row, slots that leave keep their rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from serving.engines.base import Engine, check_decode, check_prefill

RUNTIME = "onnxruntime"
CAPACITY_STEP = 128  # view capacity grows in these steps (amortises rebuilds, bounds waste)


def runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def session_options(threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class _View:
    """The running set's caches: per (layer, kind) one buffer [B, Hkv, cap, D], row i = slots[i]."""

    def __init__(self, slots: tuple[int, ...], buffers: list[np.ndarray]) -> None:
        self.slots, self.buffers = slots, buffers
        self.cap = buffers[0].shape[2]
        self.binding: Any = None


class OnnxRuntimeEngine(Engine):
    kind = "cpu"
    runtime = RUNTIME

    def __init__(self, engine_dir: Path, model_dir: Path, *, max_slots: int = 8, max_len: int = 2048,
                 threads: int | None = None, manifest: dict[str, Any] | None = None) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.engine_dir, self.model_dir = Path(engine_dir), Path(model_dir)
        self.manifest = manifest or {}
        shapes = self.manifest.get("graph", {})
        self.layers, self.kv_heads, self.head_dim = shapes["layers"], shapes["kv_heads"], shapes["head_dim"]
        self.max_slots = max_slots
        self.max_len = min(max_len, int(shapes.get("max_position_embeddings", max_len)))
        self.name = self.manifest.get("engine_name") or self.runtime
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        graph = self.engine_dir / self.manifest.get("graph_file", "decoder.onnx")
        self._session = ort.InferenceSession(str(graph), session_options(threads), providers=["CPUExecutionProvider"])
        self._past = [f"past_{kind}.{i}" for i in range(self.layers) for kind in ("key", "value")]
        self._present = [f"present_{kind}.{i}" for i in range(self.layers) for kind in ("key", "value")]
        self._kv: dict[int, list[np.ndarray]] = {}  # slot -> per (layer, kind) [Hkv, len, D], outside the view
        self._len: dict[int, int] = {}
        self._view: _View | None = None

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "engine": self.manifest.get("name"), "runtime": self.runtime,
                "runtime_version": self.manifest.get("runtime_version"), "device": "cpu",
                "dtype": self.manifest.get("build_config", {}).get("dtype", "float32"),
                "build_config_hash": self.manifest.get("build_config_hash"),
                "cache_key": self.manifest.get("cache_key"), "engine_dir": str(self.engine_dir)}

    # -- views -------------------------------------------------------------------------------------
    def _rows(self, slot: int) -> list[np.ndarray]:
        """The slot's cache as per (layer, kind) [Hkv, len, D] arrays, wherever it lives now."""
        n = self._len[slot]
        if self._view is not None and slot in self._view.slots:
            i = self._view.slots.index(slot)
            return [b[i, :, :n] for b in self._view.buffers]
        return self._kv[slot]

    def _set_view(self, slots: tuple[int, ...], cap: int) -> None:
        """Copy the caches of `slots` into fresh buffers of capacity `cap`; slots leaving keep their rows."""
        old = self._view
        buffers = [np.zeros((len(slots), self.kv_heads, cap, self.head_dim), dtype=np.float32)
                   for _ in self._past]
        for i, slot in enumerate(slots):
            n = self._len[slot]
            for buf, rows in zip(buffers, self._rows(slot), strict=True):
                buf[i, :, :n] = rows
            self._kv.pop(slot, None)
        if old is not None:
            for slot in old.slots:
                if slot in self._len and slot not in slots:
                    self._kv[slot] = [r.copy() for r in self._rows(slot)]
        view = _View(slots, buffers)
        binding = self._session.io_binding()
        binding.bind_output("logits", "cpu")
        shape = list(buffers[0].shape)
        for past, present, buf in zip(self._past, self._present, buffers, strict=True):
            binding.bind_input(past, "cpu", 0, np.float32, shape, buf.ctypes.data)
            binding.bind_output(present, "cpu", 0, np.float32, shape, buf.ctypes.data)
        view.binding = binding
        self._view = view

    def _drop_view(self) -> None:
        if self._view is not None:
            for slot in self._view.slots:
                if slot in self._len:
                    self._kv[slot] = [r.copy() for r in self._rows(slot)]
            self._view = None

    # -- the Engine interface ----------------------------------------------------------------------
    def prefill(self, slot: int, token_ids: list[int]):
        """Run the prompt (fresh cache), keep its K/V for `slot`; fp32 logits [vocab] of the last position."""
        import torch

        check_prefill(slot, token_ids, self.max_slots, self.max_len)
        n = len(token_ids)
        if self._view is not None and slot in self._view.slots:
            self._drop_view()
        self._len.pop(slot, None)
        self._kv.pop(slot, None)
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        feeds = {"input_ids": np.asarray([token_ids], dtype=np.int64),
                 "seqlens_k": np.asarray([n - 1], dtype=np.int32),
                 "total_sequence_length": np.asarray(n, dtype=np.int32),
                 **dict.fromkeys(self._past, empty)}
        out = self._session.run(["logits", *self._present], feeds)
        self._kv[slot] = [p[0] for p in out[1:]]
        self._len[slot] = n
        return torch.from_numpy(np.array(out[0][0], dtype=np.float32))

    def decode(self, slots: list[int], token_ids: list[int]):
        """One new token per slot, K/V appended in place; fp32 logits [len(slots), vocab]."""
        import torch

        check_decode(slots, token_ids, self._len, self.max_len)
        key = tuple(slots)
        lens = np.asarray([self._len[s] for s in key], dtype=np.int32)
        need = int(lens.max()) + 1
        if self._view is None or self._view.slots != key or need > self._view.cap:
            cap = min(self.max_len, -(-(need + CAPACITY_STEP // 2) // CAPACITY_STEP) * CAPACITY_STEP)
            self._set_view(key, max(cap, need))
        binding = self._view.binding
        binding.bind_cpu_input("input_ids", np.asarray(token_ids, dtype=np.int64)[:, None])
        binding.bind_cpu_input("seqlens_k", lens)  # = tokens before this one = index the new K/V goes to
        binding.bind_cpu_input("total_sequence_length", np.asarray(need, dtype=np.int32))
        self._session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        for s in key:
            self._len[s] += 1
        return torch.from_numpy(np.array(logits, dtype=np.float32))

    def release(self, slot: int) -> None:
        """Forget the slot's sequence (its row in the view is simply unused until the next rebuild)."""
        self._len.pop(slot, None)
        self._kv.pop(slot, None)

    def close(self) -> None:
        self._view = None
        self._kv.clear()
