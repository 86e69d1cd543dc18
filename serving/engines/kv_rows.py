"""The ONNX Runtime engine's batch view: one buffer per (layer, kind) with a row for every slot it may hold.

The running set occupies the first B rows ([:B] of a C-contiguous array is itself contiguous, so it binds to
the graph as a [B, Hkv, cap, D] tensor with no copy). A request joining copies its own cache into row B; one
leaving has the last row moved into its place. So a change of the running set costs one or two rows, not the
whole batch's cache (at 16 streams with ~1,000-token contexts, rebuilding the view copied ~0.8 GB per join or
leave: benchmarks/README.md, chunked prefill).

The buffers have room for max_len tokens per row but are mapped lazily in 4 KiB pages: numpy asks for
transparent huge pages on large arrays, and then the first token written in each (row, head) zeroed a 2 MiB
page: 3.1 s to put 16 rows of 240 tokens into fresh buffers, against 83 ms with small pages (host E1).
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def lazy_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of zeros whose memory is taken page by page as it is written, in small pages."""
    advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if advice is None:  # not Linux: numpy's own zeros
        return np.zeros(shape, dtype=np.float32)
    size = int(np.prod(shape)) * 4
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    area.madvise(advice)
    return np.frombuffer(area, dtype=np.float32).reshape(shape)  # the array keeps the mapping alive


class RowView:
    """Per (layer, kind) one buffer [rows, Hkv, cap, D]; row i holds slot `order[i]`'s tokens, right-padded."""

    def __init__(self, buffers: int, rows: int, kv_heads: int, cap: int, head_dim: int, vocab: int) -> None:
        self.buffers = [lazy_zeros((rows, kv_heads, cap, head_dim)) for _ in range(buffers)]
        self.cap = cap
        self.order: list[int] = []  # the slot in each occupied row
        self.logits = np.empty((rows, vocab), dtype=np.float32)  # bound as the output: no per-step lookup
        self.binding: Any = None
        self.bound = -1  # rows the binding was made for

    @property
    def slots(self) -> tuple[int, ...]:
        return tuple(self.order)

    def row(self, slot: int) -> int:
        return self.order.index(slot)

    def put(self, slot: int, cache: Sequence[np.ndarray], n: int) -> None:
        """`slot` joins in the next free row with its `n` cached tokens ([Hkv, n, D] per buffer)."""
        row = len(self.order)
        for buf, rows in zip(self.buffers, cache, strict=True):
            buf[row, :, :n] = rows
        self.order.append(slot)

    def take(self, row: int, n: int) -> list[np.ndarray]:
        """A standalone copy of `row`'s first `n` tokens."""
        return [buf[row, :, :n].copy() for buf in self.buffers]

    def drop(self, row: int, lengths: Mapping[int, int]) -> None:
        """Free `row`: the last occupied row moves into it (its `lengths[slot]` tokens; the rest of a row is
        never read: the attention kernel stops at each row's own length)."""
        last = len(self.order) - 1
        if row != last:
            n = lengths[self.order[last]]
            for buf in self.buffers:
                buf[row, :, :n] = buf[last, :, :n]
            self.order[row] = self.order[last]
        self.order.pop()
