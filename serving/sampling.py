"""Token selection per sequence: greedy at temperature 0, else temperature + nucleus (top_p) sampling with a
per-request seeded generator, so the same seed reproduces the same answer whatever else is in the batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Below this a temperature is greedy (as vLLM does): dividing logits by 1e-300 overflows to inf and the
# softmax turns to NaN, and any temperature this small picks the argmax anyway.
MIN_TEMPERATURE = 1e-5
_SEED_MASK = (1 << 64) - 1


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


class Sampler:
    """One per request: owns the request's random stream."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._gen: torch.Generator | None = None
        if not params.greedy:
            self._gen = torch.Generator()
            if params.seed is not None:
                # a signed 64-bit seed maps onto torch's unsigned 64-bit seed space (never an overflow error)
                self._gen.manual_seed(int(params.seed) & _SEED_MASK)
            else:
                self._gen.seed()

    def __call__(self, logits: torch.Tensor) -> int:
        """Pick the next token from fp32 logits [vocab] (already masked by any constraint)."""
        p = self.params
        if p.greedy:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_probs, dim=-1)
            keep = cum - sorted_probs < p.top_p  # the smallest prefix whose mass reaches top_p (>= 1 token)
            sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
            pick = torch.multinomial(sorted_probs, 1, generator=self._gen)
            return int(order[pick])
        return int(torch.multinomial(probs, 1, generator=self._gen))
