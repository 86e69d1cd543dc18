"""One rollout's configuration, resolved from params.yaml `canary:` (plus `--steps`), frozen for its lifetime.

The resolved config is stored with the rollout's state, so `resume` continues with exactly the steps and
thresholds the rollout started with even if params.yaml changed in between.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmops.params import CanaryParams
from serving.rollout.errors import RolloutError


@dataclass(frozen=True)
class Step:
    weight: int  # % of new requests to the canary
    min_duration_s: float
    min_requests: int  # on EACH side (stable's is the previous step's at weight 100)


@dataclass(frozen=True)
class RolloutConfig:
    steps: tuple[Step, ...]
    params: CanaryParams  # everything else (analysis bounds, quality, loadgen) as declared

    def to_json(self) -> dict[str, Any]:
        return {"steps": [asdict(s) for s in self.steps], "params": self.params.model_dump(mode="json")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutConfig:
        return cls(steps=tuple(Step(**s) for s in data["steps"]), params=CanaryParams.model_validate(data["params"]))


def parse_weights(text: str) -> list[int]:
    """`10,25,50,100` -> [10, 25, 50, 100]; a clear error for anything else."""
    try:
        weights = [int(w) for w in text.replace(" ", "").split(",") if w]
    except ValueError:
        raise RolloutError(f"bad --steps {text!r}",
                           "give increasing canary weights in %, e.g. --steps 10,25,50,100") from None
    if not weights:
        raise RolloutError("--steps is empty", "give increasing canary weights in %, e.g. --steps 10,25,50,100")
    return weights


def resolve(params: CanaryParams, weights: list[int] | None = None) -> RolloutConfig:
    """Steps with every field filled in (from `weights` when given, else params), validated."""
    d = params.step_defaults
    if weights is not None:
        steps = [Step(w, d.min_duration_s, d.min_requests) for w in weights]
    else:
        steps = [Step(s.weight, d.min_duration_s if s.min_duration_s is None else s.min_duration_s,
                      d.min_requests if s.min_requests is None else s.min_requests) for s in params.steps]
    fix = "set canary.steps in params.yaml (or --steps) to increasing weights in 1..100, e.g. 10,25,50,100"
    if not steps:
        raise RolloutError("a rollout needs at least one step", fix)
    for prev, cur in zip([None, *steps], steps, strict=False):
        if not 1 <= cur.weight <= 100:
            raise RolloutError(f"step weight {cur.weight} is outside 1..100", fix)
        if prev is not None and cur.weight <= prev.weight:
            raise RolloutError(f"step weights must increase ({prev.weight} then {cur.weight})", fix)
        if cur.min_requests < 1 or cur.min_duration_s < 0:
            raise RolloutError(f"step {cur.weight}%: min_requests must be >= 1 and min_duration_s >= 0",
                               "fix canary.steps / canary.step_defaults in params.yaml")
    if steps[0].weight == 100:
        raise RolloutError("the first step sends 100% to the canary: there is no stable window to compare with",
                           fix)
    if params.max_step_duration_s < max(s.min_duration_s for s in steps):
        raise RolloutError("canary.max_step_duration_s is shorter than a step's min_duration_s",
                           "raise canary.max_step_duration_s")
    if params.interval_s <= 0 or params.failure_limit < 0:
        raise RolloutError("canary.interval_s must be > 0 and canary.failure_limit >= 0", "fix params.yaml canary:")
    if params.quality.golden_size < 1:
        raise RolloutError("canary.quality.golden_size must be >= 1", "fix params.yaml canary.quality")
    return RolloutConfig(steps=tuple(steps), params=params)
