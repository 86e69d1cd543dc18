"""What the router measures: Prometheus metrics labelled by side and model version (its own registry), and the
raw per-request observations behind `/admin/window`, which a rollout controller compares stable vs canary on.

What counts: a side's failures are its 5xx, its 429s and timeouts (408/504: the side could not serve), its
broken streams, and streams the client abandoned after `router.abandoned_after_s` with no token yet (a timeout the
client gave up on; no client can cause one on a side that answers in time); other client-caused 4xx (bad input,
413, quicker 499 disconnects) say nothing about the side and are kept out of both the error rate and the latency
window, and unauthenticated requests never reach a side at all (the
router answers them 401 itself), so no client can game the analysis with cheap fast failures.

The window works on raw observations, not histogram buckets: a p95 from buckets 0.25/0.5/1 s cannot tell a
canary that is 30% slower from the stable side, and the controller's thresholds are ratios of exactly that.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.http.errors import SIDE_FAULTS
from serving.metrics import LATENCY_BUCKETS
from serving.router.split import CANARY, STABLE

SIMILARITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("llmops_router_requests", "Proxied requests by side, model version, route and status",
                                ["side", "model_version", "route", "status"], registry=r)
        self.errors = Counter("llmops_router_upstream_errors", "Upstream failures: 5xx, unreachable, timeout, "
                              "rate_limited (429), broken stream, abandoned (no token before router.abandoned_after_s)",
                              ["side", "model_version", "kind"], registry=r)
        self.rejected = Counter("llmops_router_rejected", "Requests the router answered itself before choosing a "
                                "side (unauthorized, conflict, body_too_large)", ["reason"], registry=r)
        self.latency = Histogram("llmops_router_request_latency_seconds", "End-to-end latency through the router",
                                 ["side", "model_version"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llmops_router_time_to_first_token_seconds", "Router receipt to the first content "
                              "event of a stream", ["side", "model_version"], buckets=LATENCY_BUCKETS, registry=r)
        self.canary_weight = Gauge("llmops_router_canary_weight_percent", "Share of traffic sent to the canary",
                                   registry=r)
        self.shadow_weight = Gauge("llmops_router_shadow_percent", "Share of stable requests mirrored to the canary",
                                   registry=r)
        self.shadow = Counter("llmops_router_shadow_requests", "Mirrored requests by outcome (scored, error, "
                              "skipped)", ["model_version", "outcome"], registry=r)
        self.shadow_similarity = Histogram("llmops_router_shadow_rouge_l", "ROUGE-L F1 of the canary's shadow "
                                           "answer against the stable answer", ["model_version"],
                                           buckets=SIMILARITY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def error_kind(status: int, broke: bool, abandoned: bool = False) -> str | None:
    """The failure kind a side is charged with (None: it served, or the client caused the status)."""
    if broke:
        return "broken_stream"
    if abandoned:
        return "abandoned"
    if status >= 500:
        return {502: "unreachable", 504: "timeout"}.get(status, "5xx")
    return SIDE_FAULTS.get(status)


@dataclass(frozen=True)
class Observation:
    end: float  # unix time the request ended
    side: str
    error: bool
    latency_s: float
    ttft_s: float | None


def _quantile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class Window:
    """The last `maxlen` observations (bounded memory); `stats(since, until)` summarises each side over the
    requests that ENDED in [since, until)."""

    def __init__(self, maxlen: int) -> None:
        self._obs: collections.deque[Observation] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, obs: Observation) -> None:
        with self._lock:
            self._obs.append(obs)

    def stats(self, since: float, until: float) -> dict[str, dict[str, Any]]:
        with self._lock:
            chosen = [o for o in self._obs if since <= o.end < until]
        out = {}
        for side in (STABLE, CANARY):
            mine = [o for o in chosen if o.side == side]
            ok = [o for o in mine if not o.error]  # latency of failures says nothing about serving speed
            lat = sorted(o.latency_s for o in ok)
            ttft = sorted(o.ttft_s for o in ok if o.ttft_s is not None)
            out[side] = {"requests": len(mine), "errors": len(mine) - len(ok),
                         "latency_p50_s": _quantile(lat, 0.5), "latency_p95_s": _quantile(lat, 0.95),
                         "ttft_p50_s": _quantile(ttft, 0.5), "ttft_p95_s": _quantile(ttft, 0.95)}
        return out
