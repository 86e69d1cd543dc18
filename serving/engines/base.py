"""The one interface every inference backend implements; the scheduler drives it, the server never sees it.

The engine executes, the scheduler decides (as in vLLM): an engine owns KV-cache slots and runs prefill and
batched decode steps over them. Sampling, stop strings, constrained decoding (logit masks), queueing,
limits and cancellation live in the scheduler (`serving/scheduler.py`, `serving/sampling.py`,
`serving/structured.py`), so a new backend is one module and nothing above it changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from llmops.errors import LlmopsError


def check_prefill(slot: int, token_ids: list[int], max_slots: int, max_len: int) -> None:
    """The prefill arguments every engine rejects the same way (the scheduler never sends these)."""
    if not 0 <= slot < max_slots:
        raise LlmopsError(f"slot {slot} out of range 0..{max_slots - 1}", "use a slot the engine has")
    if not token_ids:
        raise LlmopsError("empty prompt", "send at least one token")
    if len(token_ids) > max_len:
        raise LlmopsError(f"prompt of {len(token_ids)} tokens exceeds max_len {max_len}", "shorten the prompt")


def check_decode(slots: list[int], token_ids: list[int], lengths: dict[int, int], max_len: int) -> None:
    """One token per prefilled slot, each with room for it; `lengths` = tokens cached per live slot."""
    if len(slots) != len(token_ids) or not slots:
        raise LlmopsError("decode needs one token per slot", "pass equal-length, non-empty lists")
    for slot in slots:
        if slot not in lengths:
            raise LlmopsError(f"slot {slot} has no prefilled sequence", "prefill it before decoding")
        if lengths[slot] + 1 > max_len:
            raise LlmopsError(f"slot {slot} reached max_len {max_len}", "release it")


def check_extend(slot: int, token_ids: list[int], lengths: dict[int, int], max_len: int) -> None:
    """A prompt's next chunk goes to a started slot and must fit in it."""
    if slot not in lengths:
        raise LlmopsError(f"slot {slot} has no started sequence", "prefill its first chunk before extending it")
    if not token_ids:
        raise LlmopsError("empty chunk", "send at least one token")
    if lengths[slot] + len(token_ids) > max_len:
        raise LlmopsError(f"slot {slot} would exceed max_len {max_len}", "shorten the prompt")


def can_extend(engine: Any) -> bool:
    """Whether `engine` takes a prompt in chunks (defines `extend`); the others get whole prompts."""
    return callable(getattr(engine, "extend", None))


class Engine(ABC):
    """The engine executes, the scheduler decides: one KV-cache slot per running sequence.

    Contract the scheduler relies on:
    - slots are ints in ``range(max_slots)``; the scheduler hands a free slot to `prefill` and gives it back
      with `release` (also on cancel/timeout/error), so an engine never tracks requests.
    - `prefill(slot, ids)` starts a fresh sequence in `slot` (any old cache there is dropped) and returns the
      logits of the last prompt position; `decode(slots, ids)` appends one token per slot and returns the
      next-token logits, row i for ``slots[i]``. ``len(prompt) + generated <= max_len`` is the scheduler's job.
    - engines that define ``extend(slot, ids)`` (`can_extend`) also take a long prompt in chunks: `prefill` the
      first, `extend` the rest (logits of the chunk's last position), so the scheduler can run decode steps of
      other sequences in between (chunked prefill).
    - logits are fp32 CPU tensors (whatever the engine computes in), so sampling code is engine-agnostic.
    - calls come from one scheduler thread; engines need not be thread-safe.
    """

    name: str  # "eager", "onnxruntime", ...
    max_slots: int  # sequences that can hold a KV cache at once
    max_len: int  # prompt + generated tokens per sequence
    tokenizer: Any  # a transformers tokenizer (chat template, eos)

    def info(self) -> dict[str, Any]:
        """kind, runtime + version, device, dtype, build-config hash if any (shown by /v1/models, /ready, logs)."""
        return {"kind": self.name}

    @abstractmethod
    def prefill(self, slot: int, token_ids: list[int]) -> torch.Tensor:
        """fp32 logits [vocab] of the last prompt position; fills the slot's KV cache."""

    def prefill_many(self, slots: list[int], prompts: list[list[int]]) -> torch.Tensor:
        """Start several sequences at once -> fp32 logits [len(slots), vocab]. Engines that can run the prompts
        as one batch override this (on a GPU one forward costs what one prompt costs); the default loops."""
        return torch.stack([self.prefill(s, ids) for s, ids in zip(slots, prompts, strict=True)])

    @abstractmethod
    def decode(self, slots: list[int], token_ids: list[int]) -> torch.Tensor:
        """One new token per slot -> fp32 logits [len(slots), vocab]."""

    @abstractmethod
    def release(self, slot: int) -> None:
        """Free the slot's KV cache at once (idempotent: releasing a free slot is a no-op)."""

    def warmup(self) -> None:
        """Run one tiny prefill + decode so the first request does not pay for lazy init; /ready waits on it."""
        ids = self.tokenizer.encode("Hello", add_special_tokens=False) or [0]
        logits = self.prefill(0, ids)
        self.decode([0], [int(torch.argmax(logits))])
        self.release(0)

    def close(self) -> None:
        """Free runtime resources (sessions, threads); the default has none."""
        return None

    @property
    def eos_token_ids(self) -> set[int]:
        """Tokens that end a sequence: the tokenizer's eos plus the model's generation-config eos ids, if any."""
        ids: set[int] = set()
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        extra = getattr(self, "extra_eos_ids", None)
        if extra:
            ids.update(int(i) for i in extra)
        return ids
