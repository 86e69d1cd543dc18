"""The KV-cache batch bookkeeping every step engine shares: per-slot caches plus the running set's batch view.

A slot's cache lives in one of two places: alone (`_kv[slot]`, in whatever layout the engine keeps) or as a
row of the *batch view*, the running set's caches packed the way the runtime wants one batched decode step
(left-padded torch tensors for eager, a left-padded numpy tensor for OpenVINO, right-padded in-place buffers
for ONNX Runtime). The scheduler keeps the same running set for many steps, so the view is kept and reused
while the next decode names the same slots in the same order; only a change of the running set (a request
joins or leaves) or a view that is full rebuilds it. What rebuilding costs is each engine's own business
(`_next_view`); which slot holds how many tokens, where its cache is, and when a view must go is here, once.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from serving.engines.base import Engine, check_decode, check_prefill


class SlotCacheEngine(Engine):
    """An engine whose sequences keep a KV cache per slot and decode as one batch view of the running set.

    Subclasses call `_init_slots()` in their constructor and implement `_take` (copy one row out of a view)
    and `_next_view` (the view for a new running set: either `_retire_view()` first and pack the per-slot
    caches, or build it straight from the old view). A view is any object with a `slots` tuple (row i is
    `slots[i]`).
    """

    def _init_slots(self) -> None:
        self._kv: dict[int, Any] = {}   # slot -> its cache while outside the view
        self._len: dict[int, int] = {}  # slot -> tokens in its cache
        self._view: Any = None          # the running set's batch view, if any

    # -- what each engine supplies -------------------------------------------------------------------
    @abstractmethod
    def _take(self, view: Any, row: int, n: int) -> Any:
        """A standalone copy of view row `row` (its `n` real tokens), in the per-slot layout."""

    @abstractmethod
    def _next_view(self, slots: tuple[int, ...], need: int) -> Any:
        """The view of `slots` for a decode step whose longest row reaches `need` tokens; the caches it packs
        are popped from `_kv`, and rows of the old view that leave go back to `_kv` (`_retire_view` does both
        ways for an engine that rebuilds from per-slot caches)."""

    def _fits(self, view: Any, need: int) -> bool:
        """Whether `view` can take a step whose longest row reaches `need` tokens (fixed-capacity views)."""
        return True

    # -- the bookkeeping --------------------------------------------------------------------------------
    def _retire_view(self) -> None:
        """Copy every live row of the view back into its slot's own cache and drop the view."""
        view, self._view = self._view, None
        if view is None:
            return
        for row, slot in enumerate(view.slots):
            if slot in self._len:  # released slots are simply dropped
                self._kv[slot] = self._take(view, row, self._len[slot])

    def _start(self, slot: int, token_ids: list[int]) -> None:
        """Before a prefill: check it, and forget whatever `slot` held (in the view too)."""
        check_prefill(slot, token_ids, self.max_slots, self.max_len)
        self.release(slot)
        if self._view is not None and slot in self._view.slots:
            self._retire_view()

    def _keep(self, slot: int, cache: Any, n: int) -> None:
        """After a prefill: `slot` holds `n` tokens in `cache`."""
        self._kv[slot] = cache
        self._len[slot] = n

    def _running(self, slots: list[int], token_ids: list[int]) -> Any:
        """Before a decode: check it and return the view of `slots` (the kept one when it still serves)."""
        check_decode(slots, token_ids, self._len, self.max_len)
        key = tuple(slots)
        need = max(self._len[s] for s in key) + 1
        view = self._view
        if view is None or view.slots != key or not self._fits(view, need):
            view = self._view = self._next_view(key, need)
        return view

    def _advance(self, slots: tuple[int, ...] | list[int]) -> None:
        """After a decode: each slot holds one more token."""
        for s in slots:
            self._len[s] += 1

    def release(self, slot: int) -> None:
        """Forget the slot's sequence; a row it had in the view is unused until the view is rebuilt."""
        self._len.pop(slot, None)
        self._kv.pop(slot, None)
