"""A window's drift verdict and its outputs: JSON, an HTML page, MLflow metrics + artifact, Prometheus gauges."""

from __future__ import annotations

import enum
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class Severity(enum.StrEnum):
    """How much a window's drift matters. `watch`: statistically different but below the practical-significance
    threshold (or a watch-only signal such as lengths), worth a look; `drift`: significant AND large: the only
    level that may start retraining."""

    NONE = "none"
    WATCH = "watch"
    DRIFT = "drift"

    @property
    def rank(self) -> int:
        return {"none": 0, "watch": 1, "drift": 2}[self.value]


@dataclass(frozen=True)
class DetectorResult:
    """One detector. `threshold` is the level its p-value is compared with (its Holm level within the
    family); `effect` the effect size with a meaning (`effect_name`), `effect_threshold` the size it must
    reach for `drift` (rates: by `effect_lower`, its lower confidence bound); `min_effect`, where set, the size
    it must reach to count at all (`watch`). `cap` is the
    highest severity the detector may give (`watch` for length and error signals). A skipped detector (no data
    for it in this window or the reference) has `skipped` set and takes no part in the family."""

    name: str
    statistic: float | None
    p_value: float | None
    threshold: float | None
    fired: bool
    description: str = ""
    min_effect: float | None = None
    skipped: str | None = None
    effect: float | None = None
    effect_name: str = ""
    effect_threshold: float | None = None
    severity: Severity = Severity.NONE
    cap: Severity = Severity.DRIFT
    effect_lower: float | None = None  # rates: the lower confidence bound of the effect (what `drift` compares)


@dataclass
class DriftReport:
    severity: Severity
    detectors: list[DetectorResult]
    alpha: float
    window: dict[str, Any]
    reference: dict[str, Any]
    created: float
    timings: dict[str, float] = field(default_factory=dict)
    note: str = ""
    clusters: list[dict[str, Any]] = field(default_factory=list)  # new prompt clusters (what changed)
    plots: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # HTML only, never serialised
    new_prompts: list[str] = field(default_factory=list, repr=False)  # no near reference prompt (the trigger's)

    @property
    def drifted(self) -> bool:
        """True only for a `drift` verdict (the level that may start retraining)."""
        return self.severity is Severity.DRIFT

    @property
    def moved(self) -> list[dict[str, Any]]:
        """Detectors above `none`, largest effect relative to its drift threshold first: what moved, how much."""
        out = []
        for d in self.detectors:
            if d.severity is Severity.NONE or d.effect is None:
                continue
            ratio = d.effect / d.effect_threshold if d.effect_threshold else None
            out.append({"detector": d.name, "severity": d.severity.value, "effect": d.effect,
                        "effect_name": d.effect_name, "effect_threshold": d.effect_threshold, "x_threshold": ratio})
        return sorted(out, key=lambda m: -(m["x_threshold"] or 0.0))

    @property
    def fired(self) -> list[str]:
        return [d.name for d in self.detectors if d.fired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity.value,
            "drifted": self.drifted,
            "fired": self.fired,
            "alpha": self.alpha,
            "detectors": [{k: _plain(v) for k, v in asdict(d).items()} for d in self.detectors],
            "moved": self.moved,
            "clusters": self.clusters,
            "window": self.window,
            "reference": self.reference,
            "created": self.created,
            "timings": self.timings,
            "note": self.note,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def metrics(self) -> dict[str, float]:
        """Flat metric names for MLflow: drift_detected, drift_<detector>_statistic / _p_value."""
        out: dict[str, float] = {"drift_detected": float(self.drifted), "drift_severity": float(self.severity.rank),
                                 "drift_window_requests": float(self.window.get("requests", 0))}
        for d in self.detectors:
            if d.statistic is not None and math.isfinite(d.statistic):
                out[f"drift_{d.name}_statistic"] = float(d.statistic)
            if d.p_value is not None:
                out[f"drift_{d.name}_p_value"] = float(d.p_value)
            if d.effect is not None and math.isfinite(d.effect):
                out[f"drift_{d.name}_effect"] = float(d.effect)
        return out

    def prometheus_lines(self) -> str:
        """Text exposition of the gauges: score, p-value, effect and severity per detector, and the verdict."""
        lines = _family("llmops_drift_score", "Drift statistic of each detector on the latest window.",
                        [(d.name, d.statistic) for d in self.detectors if d.statistic is not None and not d.skipped])
        lines += _family("llmops_drift_p_value", "p-value of each detector on the latest window.",
                         [(d.name, d.p_value) for d in self.detectors if d.p_value is not None])
        lines += _family("llmops_drift_effect", "Effect size of each detector on the latest window (its meaning: "
                         "the report's effect_name; MMD^2, share, PSI, nats/token, rate difference).",
                         [(d.name, d.effect) for d in self.detectors if d.effect is not None and not d.skipped])
        lines += _family("llmops_drift_effect_threshold", "Effect a detector must reach for severity drift.",
                         [(d.name, d.effect_threshold) for d in self.detectors if d.effect_threshold is not None])
        lines += _family("llmops_drift_detector_severity", "Severity of each detector: 0 none, 1 watch, 2 drift.",
                         [(d.name, d.severity.rank) for d in self.detectors if not d.skipped])
        lines += [
            "# HELP llmops_drift_severity Verdict on the latest window: 0 none, 1 watch, 2 drift (only drift may "
            "start retraining).",
            "# TYPE llmops_drift_severity gauge",
            f"llmops_drift_severity {self.severity.rank}",
            "# HELP llmops_drift_detected 1 if the latest window's verdict is drift (significant and large).",
            "# TYPE llmops_drift_detected gauge",
            f"llmops_drift_detected {int(self.drifted)}",
            "# HELP llmops_drift_window_requests Requests in the latest scored window.",
            "# TYPE llmops_drift_window_requests gauge",
            f"llmops_drift_window_requests {int(self.window.get('requests', 0))}",
        ]
        return "\n".join(lines) + "\n"


def _family(name: str, help_: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
    return lines + [f'{name}{{detector="{det}"}} {_fmt(value)}' for det, value in samples]


def _fmt(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ("+Inf" if value > 0 else "-Inf" if value < 0 else "NaN")


def _plain(value: Any) -> Any:
    """JSON has no NaN/Infinity (null instead); severities as their names."""
    if isinstance(value, Severity):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
