"""Token selection per sequence: greedy at temperature 0, else temperature + nucleus (top_p) sampling with a
per-request seeded generator, so the same seed reproduces the same answer whatever else is in the batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


class Sampler:
    """One per request: owns the request's random stream."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._gen: torch.Generator | None = None
        if params.temperature > 0:
            self._gen = torch.Generator()
            if params.seed is not None:
                self._gen.manual_seed(int(params.seed))
            else:
                self._gen.seed()

    def __call__(self, logits: torch.Tensor) -> int:
        """Pick the next token from fp32 logits [vocab] (already masked by any constraint)."""
        p = self.params
        if p.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cum = torch.cumsum(sorted_probs, dim=-1)
            keep = cum - sorted_probs < p.top_p  # the smallest prefix whose mass reaches top_p (>= 1 token)
            sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
            pick = torch.multinomial(sorted_probs, 1, generator=self._gen)
            return int(order[pick])
        return int(torch.multinomial(probs, 1, generator=self._gen))
