"""Token selection per sequence: greedy at temperature 0, else temperature + nucleus (top_p) sampling with a
per-request seeded generator, so the same seed reproduces the same answer whatever else is in the batch.

Everything here is numpy, single-threaded, on purpose: a torch op over a 49k-token vocabulary runs on torch's
OpenMP pool, whose workers then spin on the cores a CPU engine (ONNX Runtime, OpenVINO) needs for its next
step; on a 2-core host that cost the served path more than the step itself (benchmarks/README.md, "Served vs
bare engine"). An argmax is microseconds, a log-sum-exp tens of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Below this a temperature is greedy (as vLLM does): dividing logits by 1e-300 overflows to inf and the
# softmax turns to NaN, and any temperature this small picks the argmax anyway.
MIN_TEMPERATURE = 1e-5
_SEED_MASK = (1 << 64) - 1
_NUCLEUS_FIRST = 64  # candidates tried first for top_p (grown 8x until their mass reaches top_p)


def as_array(logits: Any) -> np.ndarray:
    """fp32 numpy view of logits (a CPU torch tensor shares its memory: no copy)."""
    if isinstance(logits, np.ndarray):
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)
    return logits.detach().float().cpu().numpy()


def logsumexp(rows: np.ndarray) -> np.ndarray:
    """log(sum(exp(row))) per row of a [B, vocab] array, stable (max subtracted); -inf rows stay -inf."""
    top = rows.max(axis=-1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    return np.log(np.exp(rows - safe).sum(axis=-1)) + safe[..., 0]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    @property
    def greedy(self) -> bool:
        return not self.temperature >= MIN_TEMPERATURE  # NaN counts as greedy too


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of most likely tokens whose mass reaches top_p (at least one), most likely
    first; a partial sort of a few candidates, a full one only for a very flat distribution."""
    k = _NUCLEUS_FIRST
    while k < probs.size:
        cand = np.argpartition(probs, -k)[-k:]
        if probs[cand].sum() >= top_p:
            break
        k *= 8
    else:
        cand = np.arange(probs.size)
    order = cand[np.argsort(-probs[cand], kind="stable")]
    mass_before = np.cumsum(probs[order]) - probs[order]
    return order[: max(1, int(np.searchsorted(mass_before, top_p, side="left")))]


class Sampler:
    """One per request: owns the request's random stream."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._rng: np.random.Generator | None = None
        if not params.greedy:
            # a signed 64-bit seed maps onto an unsigned 64-bit seed (never an overflow error)
            seed = None if params.seed is None else int(params.seed) & _SEED_MASK
            self._rng = np.random.default_rng(seed)

    def __call__(self, logits: Any) -> int:
        """Pick the next token from fp32 logits [vocab] (already masked by any constraint)."""
        p, row = self.params, as_array(logits)
        if p.greedy:
            return int(row.argmax())
        assert self._rng is not None
        z = row.astype(np.float64) / p.temperature
        z -= z.max()
        probs = np.exp(z)
        probs /= probs.sum()
        if not np.isfinite(probs).all():
            raise ValueError("logits are not finite: no distribution to sample from")
        if p.top_p < 1.0:
            keep = _nucleus(probs, p.top_p)
            return int(keep[self._pick(probs[keep])])
        return self._pick(probs)

    def _pick(self, probs: np.ndarray) -> int:
        """An index drawn with probability proportional to `probs` (inverse CDF: zero-mass entries never)."""
        assert self._rng is not None
        cum = np.cumsum(probs)
        u = self._rng.random() * cum[-1]
        return min(int(np.searchsorted(cum, u, side="right")), probs.size - 1)
