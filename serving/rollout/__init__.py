"""Canary rollouts: a metric-gated step controller over one actuator interface (local router or KServe)."""
