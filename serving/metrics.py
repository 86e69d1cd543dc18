"""Prometheus metrics of one server, on its own registry so tests and several apps in a process never clash.

Names follow Prometheus conventions (`llmops_` prefix, `_seconds`, `_total`); the canary controller and the
monitoring dashboards read them by these names, so they are an interface: change them only with them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmops_requests", "Requests answered, by route, HTTP status and model version",
                                ["route", "status", "model"], registry=r)
        self.latency = Histogram("llmops_request_latency_seconds", "End-to-end request latency (client-caused 4xx "
                                 "left out: they would pull p95 down)",
                                 ["route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llmops_time_to_first_token_seconds", "Submit to first generated token (queue included)",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("llmops_inter_token_latency_seconds", "Time between two tokens of one sequence",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llmops_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.completion_tokens = Counter("llmops_completion_tokens", "Tokens generated", ["model"], registry=r)
        self.queue_depth = Gauge("llmops_queue_depth", "Requests waiting for a slot", registry=r)
        self.running = Gauge("llmops_running_sequences", "Sequences in the running batch (slots in use)", registry=r)
        self.batch_size = Histogram("llmops_decode_batch_size", "Sequences per decode step",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.rejected = Counter("llmops_rejected", "Requests refused before generation", ["reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
