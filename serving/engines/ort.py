"""CPU engine on ONNX Runtime over the GroupQueryAttention graph (`gqa_graph.py`), KV cache written in place.

The running batch's caches live in one preallocated buffer per layer and kind with a row per slot
(`kv_rows.py`), right-padded. Each decode step binds the running set's rows as both `past_*` and `present_*`
(ONNX Runtime IO binding), so the kernel appends the new token's K/V in place and nothing else of the cache
moves. A request joining or leaving moves one row. The buffers are sized for max_len once: their pages are
only mapped where tokens are written, and growing them meant copying every running cache (1.4 s at 16
streams with ~1,000-token contexts; a step costs the same at any capacity: benchmarks/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from serving.engines.base import check_decode, check_extend
from serving.engines.built import register_built
from serving.engines.kv_rows import RowView
from serving.engines.ort_tuning import session_options
from serving.engines.slots import SlotCacheEngine

RUNTIME = "onnxruntime"


def runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


class OnnxRuntimeEngine(SlotCacheEngine):
    kind = "cpu"
    runtime = RUNTIME

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
        self.graph = self.engine_dir / self.manifest.get("graph_file", "decoder.onnx")
        chosen = self.manifest.get("threads") or {}  # timed when it was built (explicit wins)
        self.threads = threads or chosen.get("intra_op") or os.cpu_count() or 1
        self.spinning = bool(chosen.get("spinning", False)) if spinning is None else spinning
        self.tuning: dict[str, Any] = {"spinning": self.spinning,
                                       "when": "given" if spinning is not None else "engine build"}
        self.session = ort.InferenceSession(str(self.graph), session_options(self.threads, self.spinning),
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
                "threads": self.threads, "spinning": self.spinning, "thread_tuning": self.tuning}

    def use_session(self, session: Any, spinning: bool) -> None:
        """Run on `session` from now on (the batch view binds to it again)."""
        self.session, self.spinning = session, spinning
        if self._view is not None:
            self._view.bound = -1

    def warmup(self) -> None:
        """The first run's allocations, then (unless the spinning was given) the pool's spinning timed here."""
        super().warmup()
        if self.tuning["when"] != "given" and self.threads > 1:
            from serving.engines.ort_tuning import choose_spinning

            self.tuning = choose_spinning(self)

    # -- views (the bookkeeping is SlotCacheEngine's) ------------------------------------------------
    def _rows(self, slot: int) -> list[np.ndarray]:
        """The slot's cache as per (layer, kind) [Hkv, len, D] arrays, wherever it lives now."""
        n = self._len[slot]
        if self._view is not None and slot in self._view.order:
            row = self._view.row(slot)
            return [b[row, :, :n] for b in self._view.buffers]
        return self._kv[slot]

    def _take(self, view: RowView, row: int, n: int) -> list[np.ndarray]:
        return view.take(row, n)

    def _next_view(self, slots: tuple[int, ...], need: int) -> RowView:
        """Fresh buffers (room for max_len tokens per row) holding the caches of `slots`; live slots of the old
        view that are not in `slots` keep their tokens outside it."""
        old = self._view
        view = RowView(len(self._past), self.max_slots, self.kv_heads, self.max_len, self.head_dim, self.vocab)
        for slot in slots:
            view.put(slot, self._rows(slot), self._len[slot])
            self._kv.pop(slot, None)
        if old is not None:
            for row, slot in enumerate(old.order):
                if slot in self._len and slot not in slots:
                    self._kv[slot] = old.take(row, self._len[slot])
        return view

    def _leave_view(self, view: RowView, slot: int) -> None:
        """A live slot leaves the view: its tokens go back to its own cache, the last row takes its place."""
        row = view.row(slot)
        self._kv[slot] = view.take(row, self._len[slot])
        view.drop(row, self._len)

    def _regroup(self, view: RowView, slots: list[int]) -> None:
        """The view holds exactly `slots` afterwards: paused ones leave with their tokens, new ones join."""
        keep = set(slots)
        for slot in [s for s in view.order if s not in keep]:
            self._leave_view(view, slot)
        for slot in slots:
            if slot not in view.order:
                view.put(slot, self._kv.pop(slot), self._len[slot])

    def _bind(self, view: RowView) -> None:
        """Bind the occupied rows (the first B, contiguous) as the step's past/present caches and logits."""
        b = len(view.order)
        binding = self.session.io_binding()
        binding.bind_output("logits", "cpu", 0, np.float32, [b, self.vocab], view.logits.ctypes.data)
        shape = [b, self.kv_heads, view.cap, self.head_dim]
        for past, present, buf in zip(self._past, self._present, view.buffers, strict=True):
            binding.bind_input(past, "cpu", 0, np.float32, shape, buf.ctypes.data)
            binding.bind_output(present, "cpu", 0, np.float32, shape, buf.ctypes.data)
        view.binding, view.bound = binding, b

    def _running(self, slots: list[int], token_ids: list[int]) -> RowView:
        """The view of `slots` for a decode step: made once, then regrouped by rows when the running set
        changes."""
        check_decode(slots, token_ids, self._len, self.max_len)  # so no row outgrows the view's max_len
        view = self._view
        if view is None:
            view = self._view = self._next_view(tuple(slots), self.max_len)
        elif len(view.order) != len(slots) or set(view.order) != set(slots):
            self._regroup(view, slots)
        if view.bound != len(view.order):
            self._bind(view)
        return view

    def release(self, slot: int) -> None:
        """Forget the slot's sequence; its row in the view goes at once (the last row moves into it)."""
        if self._view is not None and slot in self._view.order:
            self._view.drop(self._view.row(slot), self._len)
        super().release(slot)

    # -- the Engine interface ----------------------------------------------------------------------
    def _run_prompt(self, slot: int, token_ids: list[int], past: list[np.ndarray], n: int):
        """`token_ids` after the `n` tokens of `past` (per (layer, kind) [Hkv, n, D]): the slot keeps all n + m
        tokens' K/V; fp32 logits [vocab] of the last position."""
        import torch

        total = n + len(token_ids)
        feeds = {"input_ids": np.asarray([token_ids], dtype=np.int64),
                 "seqlens_k": np.asarray([total - 1], dtype=np.int32),
                 "total_sequence_length": np.asarray(total, dtype=np.int32),
                 **{name: rows[None] for name, rows in zip(self._past, past, strict=True)}}
        out = self.session.run(["logits", *self._present], feeds)
        self._keep(slot, [p[0] for p in out[1:]], total)
        return torch.from_numpy(np.array(out[0][0], dtype=np.float32))

    def prefill(self, slot: int, token_ids: list[int]):
        """Run the prompt (fresh cache), keep its K/V for `slot`; fp32 logits [vocab] of the last position."""
        self._start(slot, token_ids)
        empty = np.zeros((self.kv_heads, 0, self.head_dim), dtype=np.float32)
        return self._run_prompt(slot, token_ids, [empty] * len(self._past), 0)

    def extend(self, slot: int, token_ids: list[int]):
        """A prompt's next chunk after the slot's cache (GroupQueryAttention takes several new tokens over a
        past; the result equals one prefill of the whole prompt)."""
        check_extend(slot, token_ids, self._len, self.max_len)
        if self._view is not None and slot in self._view.order:  # only this slot leaves the view
            self._leave_view(self._view, slot)
        return self._run_prompt(slot, token_ids, self._rows(slot), self._len[slot])

    def decode(self, slots: list[int], token_ids: list[int]):
        """One new token per slot, K/V appended in place; fp32 logits [len(slots), vocab]."""
        import torch

        view = self._running(slots, token_ids)
        rows = [view.row(s) for s in slots]  # the view's row order need not be the caller's
        ids = np.empty((len(slots), 1), dtype=np.int64)
        lens = np.empty(len(slots), dtype=np.int32)
        ids[rows, 0] = token_ids
        lens[rows] = [self._len[s] for s in slots]  # = tokens before this one = index the new K/V goes to
        view.binding.bind_cpu_input("input_ids", ids)
        view.binding.bind_cpu_input("seqlens_k", lens)
        view.binding.bind_cpu_input("total_sequence_length", np.asarray(int(lens.max()) + 1, dtype=np.int32))
        self.session.run_with_iobinding(view.binding)
        self._advance(slots)
        return torch.from_numpy(view.logits[rows])  # a copy in the caller's order: the buffer is reused

    def close(self) -> None:
        self._view = None
        self._kv.clear()


# One registration per engine this module serves: the full-precision graph and its int8 quantisation share the
# runtime. `preference` only orders engines built before measurements were recorded (benchmarks/README.md,
# AVX-512 host: int8 over fp32 over OpenVINO); `--engine auto` otherwise ranks them by speed measured here.
register_built("onnxruntime", OnnxRuntimeEngine, runtime_version, preference=2)
register_built("onnxruntime-int8", OnnxRuntimeEngine, runtime_version, preference=3)
