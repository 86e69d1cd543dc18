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

from serving.engines.base import check_extend
from serving.engines.built import register_built
from serving.engines.slots import SlotCacheEngine

RUNTIME = "onnxruntime"
CAPACITY_STEP = 128  # view capacity grows in these steps (amortises rebuilds, bounds waste)


def runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def session_options(threads: int | None, spinning: bool = False):
    """Spinning off unless chosen: idle pool threads that spin take the cores from the server's own threads and
    from everything else on a shared host (measured per host at build: serving/engine_build/threads.py)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if spinning:  # spin between a step's kernels, not after it: the server's own threads need the cores then
        so.add_session_config_entry("session.force_spinning_stop", "1")
    return so


class _View:
    """The running set's caches: per (layer, kind) one buffer [B, Hkv, cap, D], row i = slots[i]."""

    def __init__(self, slots: tuple[int, ...], buffers: list[np.ndarray], vocab: int) -> None:
        self.slots, self.buffers = slots, buffers
        self.cap = buffers[0].shape[2]
        self.binding: Any = None
        self.logits = np.empty((len(slots), vocab), dtype=np.float32)  # bound as the output: no per-step lookup


class OnnxRuntimeEngine(SlotCacheEngine):
    kind = "cpu"
    runtime = RUNTIME
    supports_extend = True

    def __init__(self, engine_dir: Path, model_dir: Path, *, max_slots: int = 8, max_len: int = 2048,
                 threads: int | None = None, manifest: dict[str, Any] | None = None,
                 spinning: bool | None = None) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.engine_dir, self.model_dir = Path(engine_dir), Path(model_dir)
        self.manifest = manifest or {}
        shapes = self.manifest.get("graph", {})
        self.layers, self.kv_heads, self.head_dim = shapes["layers"], shapes["kv_heads"], shapes["head_dim"]
        self.vocab = int(shapes["vocab"])
        self.max_slots = max_slots
        self.max_len = min(max_len, int(shapes.get("max_position_embeddings", max_len)))
        self.name = self.manifest.get("engine_name") or self.runtime
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        graph = self.engine_dir / self.manifest.get("graph_file", "decoder.onnx")
        chosen = self.manifest.get("threads") or {}  # measured on this host when it was built (explicit wins)
        self.threads = threads or chosen.get("intra_op") or os.cpu_count() or 1
        self.spinning = bool(chosen.get("spinning", False)) if spinning is None else spinning
        self._session = ort.InferenceSession(str(graph), session_options(self.threads, self.spinning),
                                             providers=["CPUExecutionProvider"])
        self._past = [f"past_{kind}.{i}" for i in range(self.layers) for kind in ("key", "value")]
        self._present = [f"present_{kind}.{i}" for i in range(self.layers) for kind in ("key", "value")]
        self._init_slots()  # a slot's own cache: per (layer, kind) [Hkv, len, D]

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "engine": self.manifest.get("name"), "runtime": self.runtime,
                "runtime_version": self.manifest.get("runtime_version"), "device": "cpu",
                "dtype": self.manifest.get("build_config", {}).get("dtype", "float32"),
                "build_config_hash": self.manifest.get("build_config_hash"),
                "cache_key": self.manifest.get("cache_key"), "engine_dir": str(self.engine_dir),
                "threads": self.threads, "spinning": self.spinning}

    # -- views (the bookkeeping is SlotCacheEngine's) ------------------------------------------------
    def _rows(self, slot: int) -> list[np.ndarray]:
        """The slot's cache as per (layer, kind) [Hkv, len, D] arrays, wherever it lives now."""
        n = self._len[slot]
        if self._view is not None and slot in self._view.slots:
            i = self._view.slots.index(slot)
            return [b[i, :, :n] for b in self._view.buffers]
        return self._kv[slot]

    def _take(self, view: _View, row: int, n: int) -> list[np.ndarray]:
        return [b[row, :, :n].copy() for b in view.buffers]

    def _fits(self, view: _View, need: int) -> bool:
        return need <= view.cap

    def _next_view(self, slots: tuple[int, ...], need: int) -> _View:
        """Copy the caches of `slots` straight into fresh buffers (capacity rounded up to CAPACITY_STEP); slots
        leaving keep their rows."""
        cap = max(need, min(self.max_len, -(-(need + CAPACITY_STEP // 2) // CAPACITY_STEP) * CAPACITY_STEP))
        old = self._view
        buffers = [np.zeros((len(slots), self.kv_heads, cap, self.head_dim), dtype=np.float32)
                   for _ in self._past]
        for i, slot in enumerate(slots):
            n = self._len[slot]
            for buf, rows in zip(buffers, self._rows(slot), strict=True):
                buf[i, :, :n] = rows
            self._kv.pop(slot, None)
        if old is not None:
            for row, slot in enumerate(old.slots):
                if slot in self._len and slot not in slots:
                    self._kv[slot] = self._take(old, row, self._len[slot])
        view = _View(slots, buffers, self.vocab)
        binding = self._session.io_binding()
        binding.bind_output("logits", "cpu", 0, np.float32, list(view.logits.shape), view.logits.ctypes.data)
        shape = list(buffers[0].shape)
        for past, present, buf in zip(self._past, self._present, buffers, strict=True):
            binding.bind_input(past, "cpu", 0, np.float32, shape, buf.ctypes.data)
            binding.bind_output(present, "cpu", 0, np.float32, shape, buf.ctypes.data)
        view.binding = binding
        return view

    # -- the Engine interface ----------------------------------------------------------------------
    def prefill(self, slot: int, token_ids: list[int]):
        """Run the prompt (fresh cache), keep its K/V for `slot`; fp32 logits [vocab] of the last position."""
        import torch

        self._start(slot, token_ids)
        n = len(token_ids)
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32)
        feeds = {"input_ids": np.asarray([token_ids], dtype=np.int64),
                 "seqlens_k": np.asarray([n - 1], dtype=np.int32),
                 "total_sequence_length": np.asarray(n, dtype=np.int32),
                 **dict.fromkeys(self._past, empty)}
        out = self._session.run(["logits", *self._present], feeds)
        self._keep(slot, [p[0] for p in out[1:]], n)
        return torch.from_numpy(np.array(out[0][0], dtype=np.float32))

    def extend(self, slot: int, token_ids: list[int]):
        """A prompt's next chunk after the slot's cache (GroupQueryAttention takes several new tokens over a
        past; the result equals one prefill of the whole prompt)."""
        import torch

        check_extend(slot, token_ids, self._len, self.max_len)
        if self._view is not None and slot in self._view.slots:
            self._retire_view()
        n, m = self._len[slot], len(token_ids)
        feeds = {"input_ids": np.asarray([token_ids], dtype=np.int64),
                 "seqlens_k": np.asarray([n + m - 1], dtype=np.int32),
                 "total_sequence_length": np.asarray(n + m, dtype=np.int32),
                 **{name: rows[None] for name, rows in zip(self._past, self._rows(slot), strict=True)}}
        out = self._session.run(["logits", *self._present], feeds)
        self._keep(slot, [p[0] for p in out[1:]], n + m)
        return torch.from_numpy(np.array(out[0][0], dtype=np.float32))

    def decode(self, slots: list[int], token_ids: list[int]):
        """One new token per slot, K/V appended in place; fp32 logits [len(slots), vocab]."""
        import torch

        view = self._running(slots, token_ids)
        binding = view.binding
        lens = np.asarray([self._len[s] for s in slots], dtype=np.int32)
        need = int(lens.max()) + 1
        binding.bind_cpu_input("input_ids", np.asarray(token_ids, dtype=np.int64)[:, None])
        binding.bind_cpu_input("seqlens_k", lens)  # = tokens before this one = index the new K/V goes to
        binding.bind_cpu_input("total_sequence_length", np.asarray(need, dtype=np.int32))
        self._session.run_with_iobinding(binding)
        self._advance(slots)
        return torch.from_numpy(view.logits.copy())  # the buffer is the next step's output

    def close(self) -> None:
        self._view = None
        self._kv.clear()


# One registration per engine this module serves: the full-precision graph and its int8 quantisation share the
# runtime. `preference` only orders engines built before measurements were recorded (benchmarks/README.md,
# AVX-512 host: int8 over fp32 over OpenVINO); `--engine auto` otherwise ranks them by speed measured here.
register_built("onnxruntime", OnnxRuntimeEngine, runtime_version, preference=2)
register_built("onnxruntime-int8", OnnxRuntimeEngine, runtime_version, preference=3)
