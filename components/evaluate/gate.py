"""The promotion gate: a candidate adapter moves on only if it beats the base and does not regress.

Checks, every threshold from params.yaml `eval.gate` and every one relative so it holds for any scale:
- improvement: candidate answer perplexity <= base * (1 - min_ppl_improvement) (fine-tuning must help);
- champion perplexity: candidate <= champion * (1 + max_regression) (when there is a champion);
- champion task metric: candidate >= champion * (1 - max_regression) (higher is better: ROUGE-L etc.);
- forgetting: candidate general-text perplexity <= base * (1 + max_general_ppl_increase).
- preference (only where a held-out preference split was scored: `eval.gate.preference_split`): candidate
  preference_accuracy >= reference * (1 - max_regression), the reference being the champion, else the base.
A missing or non-finite number fails its check: the gate never passes on data it could not read.
Each check records its numbers and a one-line message, so a verdict explains itself in MLflow tags.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from llmops.params import GateParams

PPL = "perplexity"
GENERAL_PPL = "general_perplexity"
PREFERENCE = "preference_accuracy"


@dataclass
class GateVerdict:
    """`passed` is True only when every check passed; `reasons` holds one line per failed check."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line per check, pass or fail: what a reviewer reads in the run's tags or the report."""
        return "\n".join(f"[{'pass' if c['passed'] else 'FAIL'}] {c['message']}" for c in self.checks)


def _value(metrics: dict[str, float] | None, key: str) -> float | None:
    if metrics is None:
        return None
    value = metrics.get(key)
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _check(name: str, metric: str, candidate: float | None, reference: float | None, reference_model: str,
           limit_factor: float, lower_is_better: bool, describe: str) -> dict[str, Any]:
    """One comparison of candidate[metric] against limit = reference * limit_factor."""
    base = {"name": name, "metric": metric, "reference_model": reference_model,
            "candidate": candidate, "reference": reference}
    if candidate is None or reference is None:
        missing = "candidate" if candidate is None else reference_model
        return {**base, "limit": None, "passed": False,
                "message": f"{name}: {missing} {metric} is missing or not a finite number"}
    limit = reference * limit_factor
    passed = candidate <= limit if lower_is_better else candidate >= limit
    op = "<=" if lower_is_better else ">="
    verb = "meets" if passed else "misses"
    message = (f"{name}: candidate {metric} {candidate:.4g} {verb} the limit {op} {limit:.4g} "
               f"({describe}; {reference_model} {reference:.4g})")
    return {**base, "limit": limit, "passed": bool(passed), "message": message}


def decide(base: dict, candidate: dict, champion: dict | None, gate: GateParams) -> GateVerdict:
    """Apply the gate to per-model metric dicts (keys `perplexity`, `general_perplexity`, the task metric)."""
    task = gate.task_metric
    checks = [
        _check("improvement_over_base", PPL, _value(candidate, PPL), _value(base, PPL), "base",
               1.0 - gate.min_ppl_improvement, True,
               f"at least {gate.min_ppl_improvement:.0%} below base"),
    ]
    if champion is not None:
        checks.append(_check("no_regression_vs_champion_ppl", PPL, _value(candidate, PPL), _value(champion, PPL),
                             "champion", 1.0 + gate.max_regression, True,
                             f"at most {gate.max_regression:.0%} above champion"))
        checks.append(_check("no_regression_vs_champion_task", task, _value(candidate, task),
                             _value(champion, task), "champion", 1.0 - gate.max_regression, False,
                             f"at most {gate.max_regression:.0%} below champion"))
    checks.append(_check("no_forgetting", GENERAL_PPL, _value(candidate, GENERAL_PPL), _value(base, GENERAL_PPL),
                         "base", 1.0 + gate.max_general_ppl_increase, True,
                         f"at most {gate.max_general_ppl_increase:.0%} above base"))
    if candidate is not None and PREFERENCE in candidate:  # a preference split exists and was scored
        ref_name, ref = ("champion", champion) if champion is not None else ("base", base)
        checks.append(_check("preference_accuracy", PREFERENCE, _value(candidate, PREFERENCE), _value(ref, PREFERENCE),
                             ref_name, 1.0 - gate.max_regression, False,
                             f"at most {gate.max_regression:.0%} below {ref_name}"))
    reasons = [c["message"] for c in checks if not c["passed"]]
    return GateVerdict(passed=not reasons, reasons=reasons, checks=checks)
