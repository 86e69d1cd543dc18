"""Step-level engine over the exported decoder graph: per-slot KV caches, prefill and batched decode.

OpenVINO only executes the graph; this class keeps the KV caches (ONNX Runtime has its own
in-place engine, ort.py). Each slot owns its cache as a numpy array [L, 2, Hkv, len, D]. A batched decode
needs one left-padded tensor for the batch, so building it costs a copy of every cache in the batch; the
scheduler keeps the same running set for many steps, so the padded tensor of the last decode (the graph's
`present` output) is kept as the "batch view" and reused as long as the next decode names the same slots in
the same order. Only a change of the running set (a request joins or leaves) scatters the view back into
per-slot caches and rebuilds.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from serving.engines.base import Engine, check_decode, check_prefill


class _BatchView:
    """The running set's caches as one left-padded tensor [L, 2, B, Hkv, P, D] plus its mask [B, P]."""

    def __init__(self, slots: tuple[int, ...], past: np.ndarray, mask: np.ndarray) -> None:
        self.slots, self.past, self.mask = slots, past, mask


class GraphEngine(Engine):
    """Prefill/decode over `decoder.onnx`; subclasses provide `_run(feeds) -> (logits, present)`."""

    kind = "cpu"
    runtime = "?"

    def __init__(self, engine_dir: Path, model_dir: Path, *, max_slots: int = 8, max_len: int = 2048,
                 threads: int | None = None, manifest: dict[str, Any] | None = None) -> None:
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
        self._kv: dict[int, np.ndarray] = {}   # slot -> [L, 2, Hkv, len, D] (absent while in the view)
        self._len: dict[int, int] = {}          # slot -> tokens in its cache
        self._view: _BatchView | None = None
        self._load(self.engine_dir / self.manifest.get("graph_file", "decoder.onnx"), threads)

    # -- runtime hooks ---------------------------------------------------------------------------
    @abstractmethod
    def _load(self, graph: Path, threads: int | None) -> None: ...

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "engine": self.manifest.get("name"), "runtime": self.runtime,
                "runtime_version": self.manifest.get("runtime_version"), "device": "cpu", "dtype": "float32",
                "build_config_hash": self.manifest.get("build_config_hash"),
                "cache_key": self.manifest.get("cache_key"), "engine_dir": str(self.engine_dir)}

    # -- slot bookkeeping --------------------------------------------------------------------------
    def _empty(self, batch: int) -> np.ndarray:
        return np.zeros((self.layers, 2, batch, self.kv_heads, 0, self.head_dim), dtype=np.float32)

    def _flush_view(self) -> None:
        """Scatter the batch view back into per-slot caches (each slot keeps only its real positions)."""
        view, self._view = self._view, None
        if view is None:
            return
        width = view.past.shape[4]
        for i, slot in enumerate(view.slots):
            if slot in self._len:  # released slots are simply dropped
                n = self._len[slot]
                self._kv[slot] = np.ascontiguousarray(view.past[:, :, i, :, width - n:, :])

    def _build_view(self, slots: tuple[int, ...]) -> _BatchView:
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

        check_prefill(slot, token_ids, self.max_slots, self.max_len)
        if self._view is not None and slot in self._view.slots:
            self._flush_view()
        self._len.pop(slot, None)
        self._kv.pop(slot, None)
        n = len(token_ids)
        logits, present = self._run({
            "input_ids": np.asarray([token_ids], dtype=np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None, :],
            "attention_mask": np.ones((1, n), dtype=np.int64),
            "past": self._empty(1),
        })
        self._kv[slot] = np.ascontiguousarray(present[:, :, 0])
        self._len[slot] = n
        return torch.from_numpy(np.array(logits[0], dtype=np.float32))

    def decode(self, slots: list[int], token_ids: list[int]):
        """One new token per slot; fp32 logits [len(slots), vocab]. Slots may be in any order."""
        import torch

        check_decode(slots, token_ids, self._len, self.max_len)
        key = tuple(slots)
        if self._view is None or self._view.slots != key:
            self._flush_view()
            self._view = self._build_view(key)
        view = self._view
        positions = np.asarray([[self._len[s]] for s in key], dtype=np.int64)
        mask = np.concatenate([view.mask, np.ones((len(key), 1), dtype=np.int64)], axis=1)
        logits, present = self._run({
            "input_ids": np.asarray(token_ids, dtype=np.int64)[:, None],
            "position_ids": positions,
            "attention_mask": mask,
            "past": view.past,
        })
        view.past, view.mask = present, mask
        for s in key:
            self._len[s] += 1
        return torch.from_numpy(np.array(logits, dtype=np.float32))

    def release(self, slot: int) -> None:
        """Forget the slot's sequence; its memory goes at once (or at the next rebuild of the batch view)."""
        self._len.pop(slot, None)
        self._kv.pop(slot, None)
