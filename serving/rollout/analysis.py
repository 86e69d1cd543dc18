"""Canary vs stable on the same window: one verdict per metric (value, threshold), then one for the step.

Rules (Argo/Flagger semantics, plus LLM quality):
- A side with fewer than the step's `min_requests` makes every traffic metric *inconclusive*, never a pass.
- Latency and TTFT are ratios to stable's p95; a breach also needs the canary to be `min_delta_s` slower,
  so a few milliseconds of jitter on a fast model (5 ms vs 12 ms is a ratio of 2.4) cannot fail a rollout.
- Quality (golden-set ROUGE-L, embedding similarity, optional judge) is judged as soon as the probe is
  scored, independent of traffic: a broken candidate is caught even before enough live requests arrive.
- The step's verdict: any `fail` -> fail; else any `inconclusive` -> inconclusive; else pass.
- What a window holds is decided where it is measured (serving/router/metrics.py, prometheus.py): only
  authenticated traffic; a side's 5xx, 429, timeouts and broken streams are its errors; client-caused 4xx are
  neither requests, errors nor latency samples -- so no client can dilute or inflate a side's numbers cheaply.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from llmops.params import CanaryAnalysisParams, LatencyBound, QualityBound
from serving.rollout.actuators.base import SideStats, WindowStats


class MetricVerdict(enum.StrEnum):
    """One metric's verdict on a window."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    NO_DATA = "no_data"


class StepVerdict(enum.StrEnum):
    """How a canary step ends: `analyse` gives pass, fail or inconclusive; the controller adds `stopped` (the
    rollout was finished or taken over elsewhere) and `probe_error` (the golden-set probe could not run)."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    STOPPED = "stopped"
    PROBE_ERROR = "probe_error"


@dataclass(frozen=True)
class QualityScores:
    """Mean golden-set scores per side (None: that scorer did not run)."""

    stable: dict[str, float]
    canary: dict[str, float]
    examples: int


@dataclass(frozen=True)
class MetricResult:
    name: str  # e.g. error_rate, latency_p95_ratio, rouge_l_drop
    value: float | None  # what was compared with the threshold
    threshold: float | None
    verdict: MetricVerdict
    detail: str = ""  # the raw numbers behind `value`, for people

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Analysis:
    verdict: StepVerdict
    metrics: tuple[MetricResult, ...]
    stable: SideStats
    canary: SideStats
    enough_requests: bool
    min_requests: int
    quality: QualityScores | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def breaches(self) -> list[MetricResult]:
        return [m for m in self.metrics if m.verdict == MetricVerdict.FAIL]

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "enough_requests": self.enough_requests, "min_requests": self.min_requests,
            "stable": asdict(self.stable), "canary": asdict(self.canary),
            "metrics": [m.to_json() for m in self.metrics],
            "quality": asdict(self.quality) if self.quality else None, "notes": list(self.notes),
        }


def _judge(breached: bool) -> MetricVerdict:
    return MetricVerdict.FAIL if breached else MetricVerdict.PASS


def _rate(side: SideStats) -> float:
    return side.errors / side.requests if side.requests else float("nan")


def _error_metrics(window: WindowStats, bound, enough: bool) -> list[MetricResult]:
    c, s = _rate(window.canary), _rate(window.stable)
    detail = f"canary {window.canary.errors}/{window.canary.requests}, stable {window.stable.errors}/" \
             f"{window.stable.requests}"
    out = []
    if bound.max is not None:
        verdict = _judge(c > bound.max) if enough else MetricVerdict.INCONCLUSIVE
        out.append(MetricResult("error_rate", c, bound.max, verdict, detail))
    if bound.max_delta is not None:
        verdict = _judge(c - s > bound.max_delta) if enough else MetricVerdict.INCONCLUSIVE
        out.append(MetricResult("error_rate_delta", c - s, bound.max_delta, verdict, detail))
    return out


def _latency_metric(name: str, canary: float | None, stable: float | None, bound: LatencyBound,
                    enough: bool) -> list[MetricResult]:
    if bound.max_ratio is None:
        return []
    if not enough:
        return [MetricResult(name, None, bound.max_ratio, MetricVerdict.INCONCLUSIVE, "too few requests")]
    if canary is None and stable is None:
        return [MetricResult(name, None, bound.max_ratio, MetricVerdict.NO_DATA, "not measured on either side")]
    if canary is None or stable is None:
        side = "canary" if canary is None else "stable"
        return [MetricResult(name, None, bound.max_ratio, MetricVerdict.INCONCLUSIVE,
                             f"not measured on the {side} side")]
    ratio = canary / stable if stable > 0 else (1.0 if canary <= 0 else math.inf)
    delta = canary - stable
    verdict = _judge(ratio > bound.max_ratio and delta > bound.min_delta_s)
    return [MetricResult(name, ratio, bound.max_ratio, verdict,
                         f"canary {canary:.3f}s / stable {stable:.3f}s (+{delta:.3f}s, noise floor "
                         f"{bound.min_delta_s:g}s)")]


def _quality_metrics(name: str, q: QualityScores, bound: QualityBound) -> list[MetricResult]:
    if name not in q.canary or name not in q.stable:
        return []
    c, s = q.canary[name], q.stable[name]
    detail = f"canary {c:.3f}, stable {s:.3f} over {q.examples} golden prompts"
    out = []
    if bound.max_drop is not None:
        out.append(MetricResult(f"{name}_drop", s - c, bound.max_drop, _judge(s - c > bound.max_drop),
                                detail))
    if bound.min_ratio is not None:
        ratio = c / s if s > 0 else (1.0 if c >= s else 0.0)
        out.append(MetricResult(f"{name}_ratio", ratio, bound.min_ratio,
                                _judge(ratio < bound.min_ratio), detail))
    return out


def analyse(window: WindowStats, bounds: CanaryAnalysisParams, min_requests: int, *,
            quality: QualityScores | None = None, quality_pending: bool = False,
            notes: tuple[str, ...] = ()) -> Analysis:
    """Judge one window. `quality_pending`: the probe is required but not scored yet (blocks a pass)."""
    enough = window.stable.requests >= min_requests and window.canary.requests >= min_requests
    metrics = _error_metrics(window, bounds.error_rate, enough)
    metrics += _latency_metric("latency_p95_ratio", window.canary.latency_p95_s, window.stable.latency_p95_s,
                               bounds.latency_p95, enough)
    metrics += _latency_metric("ttft_p95_ratio", window.canary.ttft_p95_s, window.stable.ttft_p95_s,
                               bounds.ttft_p95, enough)
    if quality is not None:
        for name in ("rouge_l", "embed_similarity", "judge"):
            metrics += _quality_metrics(name, quality, getattr(bounds, name))
    elif quality_pending:
        metrics.append(MetricResult("quality", None, None, MetricVerdict.INCONCLUSIVE,
                                    "golden-set probe not scored yet"))
    verdicts = {m.verdict for m in metrics}
    verdict = (StepVerdict.FAIL if MetricVerdict.FAIL in verdicts else StepVerdict.INCONCLUSIVE
               if MetricVerdict.INCONCLUSIVE in verdicts else StepVerdict.PASS)
    return Analysis(verdict, tuple(metrics), window.stable, window.canary, enough, min_requests, quality, notes)
