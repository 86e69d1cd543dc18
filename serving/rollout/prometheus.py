"""Per-side window stats from Prometheus (HTTP API `/api/v1/query`, PromQL): what the KServe actuator reads.

On a cluster the model servers' own `/metrics` (serving/metrics.py) are scraped through Knative's queue-proxy;
the ServiceMonitor in infra/k8s/base/monitoring.yaml labels every series with `isvc` and `revision`
(Knative's `serving.knative.dev/revision`), so the stable and the canary revision of one InferenceService
are told apart by one label, over the same [since, until) window:

- requests / errors: `increase()` of `llmops_requests_total` on the generation routes, the router's
  definition too (serving/router/metrics.py): errors are 5xx plus 429 and 408 (the side shed load or timed
  out: a fast "success" otherwise); client-caused 4xx (401 unauthenticated, 400 bad input, 413, 499) count
  neither as requests nor as errors, so cheap client failures cannot dilute or inflate a side's error rate.
  Prometheus extrapolates `increase()` to the window's edges, so counts are
  estimates (rounded), good to about one scrape interval's worth of traffic.
- p95 latency and TTFT: `histogram_quantile(0.95, ...)` over the `increase()` of the histogram buckets; the
  server leaves client-caused 4xx out of its latency histogram (serving.http.errors.client_caused), so fast
  401/400s cannot pull a side's p95 down either.

A window shorter than two scrape intervals holds fewer than two samples per series and reads as no data
(0 requests): the controller treats that as inconclusive, never as a pass.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from serving.metrics import LATENCY_BUCKETS
from serving.rollout.actuators.base import SideStats
from serving.rollout.errors import RolloutError

# The model server's metric names (serving/metrics.py; the `_total` / `_bucket` suffixes are the exposition's).
REQUESTS = "llmops_requests_total"
LATENCY_BUCKET = "llmops_request_latency_seconds_bucket"
TTFT_BUCKET = "llmops_time_to_first_token_seconds_bucket"
# Routes that generate (serving/server.py ROUTES): /v1/models, probes and /metrics are not traffic.
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
QUANTILE = 0.95
# Statuses that are the side's own failures; every other 4xx is the client's and stays out of the analysis.
SIDE_ERRORS = "5..|429|408"
ANALYSED = "[123]..|" + SIDE_ERRORS


def _quote(value: str) -> str:
    """A PromQL string literal (Go escaping rules for backslash and double quote)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def matchers(labels: dict[str, str]) -> str:
    """`{a="x",b="y"}` body (without braces), in a stable order."""
    return ",".join(f"{k}={_quote(v)}" for k, v in sorted(labels.items()))


def duration(seconds: float) -> str:
    """A PromQL range in whole milliseconds (PromQL accepts `1500ms`), at least 1 ms."""
    return f"{max(1, round(seconds * 1000))}ms"


def side_queries(labels: dict[str, str], window_s: float) -> dict[str, str]:
    """The four PromQL expressions for one side (`labels` select its series, e.g. isvc + revision)."""
    sel = matchers(labels)
    routes = "|".join(GENERATION_ROUTES)
    gen = f"{sel},route=~{_quote(routes)}" if sel else f"route=~{_quote(routes)}"
    rng = duration(window_s)
    return {
        "requests": f"sum(increase({REQUESTS}{{{gen},status=~{_quote(ANALYSED)}}}[{rng}]))",
        "errors": f"sum(increase({REQUESTS}{{{gen},status=~{_quote(SIDE_ERRORS)}}}[{rng}]))",
        "latency_p95_s": f"histogram_quantile({QUANTILE}, sum by (le) (increase({LATENCY_BUCKET}{{{gen}}}[{rng}])))",
        "ttft_p95_s": f"histogram_quantile({QUANTILE}, sum by (le) (increase({TTFT_BUCKET}{{{sel}}}[{rng}])))",
    }


def parse_vector(payload: dict) -> list[tuple[dict[str, str], float]]:
    """An instant-query response -> [(labels, value)]; a scalar result is one unlabelled sample.

    Prometheus writes sample values as strings ("1.5", "NaN", "+Inf"); float() reads all of them.
    """
    if payload.get("status") != "success":
        raise RolloutError(f"Prometheus query failed: {payload.get('errorType', 'error')}: "
                           f"{payload.get('error', payload)}", "check the PromQL and the Prometheus URL")
    data = payload.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "vector":
        return [(dict(s.get("metric") or {}), float(s["value"][1])) for s in result or []]
    if kind == "scalar":
        return [({}, float(result[1]))]
    raise RolloutError(f"Prometheus returned a {kind!r} result to an instant query",
                       "query an instant vector (no range selector at the top level)")


@dataclass
class PrometheusClient:
    """Instant queries against one Prometheus (`url` like http://prometheus.monitoring:9090)."""

    url: str
    timeout_s: float = 10.0
    bearer_token: str | None = None

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        form = {"query": promql}
        if at is not None:
            form["time"] = f"{at:.3f}"
        req = urllib.request.Request(f"{self.url.rstrip('/')}/api/v1/query",
                                     data=urllib.parse.urlencode(form).encode(), method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        if self.bearer_token:
            req.add_header("Authorization", f"Bearer {self.bearer_token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400 bad_data / 422 execution: the body says why
            try:
                payload = json.loads(exc.read())
            except ValueError:
                raise RolloutError(f"Prometheus at {self.url} answered HTTP {exc.code}",
                                   "check the Prometheus URL (LLMOPS_PROMETHEUS_URL)") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RolloutError(f"cannot query Prometheus at {self.url}: {exc}",
                               "check the Prometheus URL and that it is reachable from this pod") from None
        return parse_vector(payload)

    def value(self, promql: str, at: float | None = None) -> float | None:
        """The single value of an aggregated query; None when it has no samples or is NaN (no data)."""
        samples = self.query(promql, at)
        if not samples:
            return None
        if len(samples) > 1:
            raise RolloutError(f"expected one series from {promql!r}, got {len(samples)}",
                               "aggregate the query (sum / histogram_quantile over `le` only)")
        v = samples[0][1]
        return None if math.isnan(v) else v

    def side_stats(self, labels: dict[str, str], since: float, until: float) -> SideStats:
        """One side's requests, errors and p95s over [since, until), evaluated at `until`."""
        q = side_queries(labels, until - since)
        requests, errors = self.value(q["requests"], until), self.value(q["errors"], until)
        latency, ttft = self.value(q["latency_p95_s"], until), self.value(q["ttft_p95_s"], until)
        return SideStats(requests=round(requests or 0), errors=round(errors or 0),
                         latency_p95_s=_cap(latency), ttft_p95_s=_cap(ttft))


def _cap(seconds: float | None) -> float | None:
    """+Inf (the quantile fell in the +Inf bucket: slower than the largest bound) -> that bound, so a very slow
    side still compares as slow and the value stays JSON-safe."""
    if seconds is not None and math.isinf(seconds):
        return float(LATENCY_BUCKETS[-1])
    return seconds
