"""One rollout's configuration, resolved from params.yaml `canary:` (plus `--steps`), frozen for its lifetime.

The resolved config is stored with the rollout's state, so `resume` continues with exactly the steps and
thresholds the rollout started with even if params.yaml changed in between.

Throughput-derived values (`canary.loadgen.rate: auto`, `canary.quality.golden_size: auto`) come from a short
calibration on the running stable server before the first step (`calibrate`): the load generator runs at a
target share of the measured sustainable rate, the golden set is as large as the probe can answer within its
share of a step, and a step that could not reach `min_requests` per side in time at that rate gets a longer
`max_step_duration_s` (up to a ceiling), so a slow host ends in a conclusive analysis rather than an
inconclusive step. params.yaml `canary.calibration` holds the targets and bounds.
"""

from __future__ import annotations

import math
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
    if params.quality.golden_size == "auto" or params.loadgen.rate == "auto":
        raise RolloutError("canary.quality.golden_size / canary.loadgen.rate are `auto` but were not calibrated",
                           "calibrate first (serving.rollout.config.calibrate), or give them as numbers")
    if params.quality.golden_size < 1:
        raise RolloutError("canary.quality.golden_size must be >= 1", "fix params.yaml canary.quality")
    return RolloutConfig(steps=tuple(steps), params=params)


def _step_shares(params: CanaryParams, weights: list[int] | None) -> list[tuple[float, int]]:
    """(the smaller side's share of the traffic, min_requests) per step (`weights`: --steps)."""
    d = params.step_defaults
    steps = [(w, d.min_requests) for w in weights] if weights else [
        (s.weight, d.min_requests if s.min_requests is None else s.min_requests) for s in params.steps]
    return [(1.0 if w >= 100 else max(min(w, 100 - w), 1) / 100, n) for w, n in steps]


def derive(params: CanaryParams, measured: dict[str, float] | None, weights: list[int] | None = None
           ) -> tuple[CanaryParams, dict[str, Any]]:
    """Fill the `auto` values of `params` from a calibration (`measured`: requests_per_s, tokens_per_s of the
    stable server; None: nothing could be measured) within `params.calibration`'s bounds; returns the concrete
    params and a record of what was derived and why (kept with the rollout)."""
    c, q, lg = params.calibration, params.quality, params.loadgen
    if c is None:
        raise RolloutError("canary.calibration is missing, so `auto` values cannot be derived",
                           "add the canary.calibration section (see params.yaml) or give numbers")
    record: dict[str, Any] = {"measured": measured}
    util = c.target_utilisation
    rate = lg.rate
    if rate == "auto":
        rate = 0.0 if measured is None else min(c.max_rate, max(c.min_rate, util * measured["requests_per_s"]))
        record["rate"] = round(rate, 3)
    golden = q.golden_size
    spare_tps = None if measured is None else measured["tokens_per_s"] * max(1.0 - util, 0.05)
    if golden == "auto":
        budget_s = c.probe_budget * params.max_step_duration_s
        fit = c.golden_min if spare_tps is None else math.floor(budget_s * spare_tps / max(q.max_tokens, 1))
        golden = int(min(c.golden_max, max(c.golden_min, fit)))
        record["golden_size"] = golden
    max_step = params.max_step_duration_s
    if rate > 0:  # every step must be able to reach min_requests on each side in time
        probe_s = 0.0 if spare_tps is None else golden * q.max_tokens / spare_tps
        shares = _step_shares(params, weights)
        need = max(max(params.step_defaults.min_duration_s, n / (share * rate)) for share, n in shares)
        need = max(need, probe_s) * c.step_margin
        if need > max_step:
            max_step = min(c.max_step_duration_s, math.ceil(need))
            record["max_step_duration_s"] = max_step
        record["expected_step_s"] = round(need / c.step_margin, 1)
        record["conclusive"] = need <= max_step
    updated = params.model_copy(update={
        "loadgen": lg.model_copy(update={"rate": rate}), "quality": q.model_copy(update={"golden_size": golden}),
        "max_step_duration_s": max_step})
    return updated, record


def describe_calibration(record: dict[str, Any]) -> str:
    """One line: what was measured and what was derived from it."""
    m = record.get("measured")
    if not m:
        return "calibration: nothing measured (no traffic URL); golden set " + str(record.get("golden_size"))
    line = f"calibration: stable server {m['requests_per_s']:.2f} req/s, {m['tokens_per_s']:.1f} tok/s"
    if "concurrency" in m:
        line += f" at {m['concurrency']} in flight over {m['seconds']:.1f}s"
    derived = [f"{k} {record[k]}" for k in ("rate", "golden_size", "max_step_duration_s") if k in record]
    line += " -> " + ", ".join(derived) if derived else ""
    if record.get("conclusive") is False:
        line += (f" (a step needs ~{record['expected_step_s']}s at this rate, over the "
                 "canary.calibration.max_step_duration_s ceiling: it may end inconclusive)")
    return line


def calibrate(params: Any, url: str | None, prompts: list[str], weights: list[int] | None = None
              ) -> tuple[Any, dict[str, Any] | None]:
    """`params` (the whole Params) with the canary's `auto` values derived from measuring the stable server
    at `url` (the traffic URL before the canary is attached, or the stable server itself); unchanged (and
    None) when nothing is `auto`."""
    from serving.rollout.loadgen import measure_capacity

    canary = params.canary
    if canary.loadgen.rate != "auto" and canary.quality.golden_size != "auto":
        return params, None
    measured = None
    if url:
        c = canary.calibration
        if c is None:
            raise RolloutError("canary.calibration is missing, so `auto` values cannot be derived",
                               "add the canary.calibration section (see params.yaml) or give numbers")
        measured = measure_capacity(url, prompts, max_tokens=canary.loadgen.max_tokens, seconds=c.seconds,
                                    concurrency=c.concurrency)
    derived, record = derive(canary, measured, weights)
    record["summary"] = describe_calibration(record)
    return params.model_copy(update={"canary": derived}), record
