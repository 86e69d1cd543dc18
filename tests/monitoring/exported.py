"""Every series name the llmops exporters publish, read from their own code (registries and renderers), so the
rules and dashboard checks compare queries with what really gets exported — not with a hand-written list."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "monitoring" / "grafana").glob("*.json"))
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$isvc": ".*"}


def dashboard_exprs(path: Path) -> list[str]:
    """Every query of a dashboard: panel targets and query variables."""
    d = json.loads(path.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    out = []
    for p in d["panels"]:
        assert p["targets"], f"{path.name}: panel {p['title']!r} has no query"
        out += [t["expr"] for t in p["targets"]]
    out += [v["definition"].removeprefix("label_values(").split(",")[0] for v in d["templating"]["list"]
            if v.get("type") == "query"]
    return out


def fill_grafana_vars(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _from_registry(registry) -> set[str]:
    return {f.name + sfx for f in registry.collect() for sfx in _SUFFIXES.get(f.type, ("",))}


def _from_text(text: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def server_names() -> set[str]:
    from serving.metrics import Metrics

    return _from_registry(Metrics().registry)


def router_names() -> set[str]:
    from serving.router.metrics import RouterMetrics

    return _from_registry(RouterMetrics().registry)


def monitor_names() -> set[str]:
    """The monitor's exposition as `llmops monitor run` renders it, from a drift report built by H5's types."""
    from monitoring.drift import DetectorResult, DriftReport, Severity
    from monitoring.exposition import render
    from monitoring.monitor import trigger_gauges
    from monitoring.triggers import OUTCOMES

    report = DriftReport(Severity.DRIFT, [DetectorResult("prompt_embedding_mmd", 0.1, 0.01, 0.05, True, effect=0.1,
                                                         effect_threshold=0.06, severity=Severity.DRIFT)],
                         alpha=0.05, window={"requests": 10}, reference={}, created=0.0)
    return _from_text(render(report.prometheus_lines() + trigger_gauges(2, True),
                             {"requests": 10, "rated": 2, "negative": 1}, dict.fromkeys(OUTCOMES, 1), 0.0))


def inference_log_names() -> set[str]:
    """The inference log's series, which a server or router with a log adds to its /metrics (after a commit)."""
    import tempfile

    from prometheus_client import CollectorRegistry

    from llmops.params import InferenceLogParams
    from monitoring.inference_log.log import InferenceLog
    from monitoring.inference_log.store import open_store
    from serving.records import RequestRecord

    with tempfile.TemporaryDirectory() as tmp:
        ilog = InferenceLog(open_store(f"sqlite:///{tmp}/log.db"), InferenceLogParams())
        try:
            ilog.hook(RequestRecord("r1", "/v1/completions", "m", None, "p", "a", 1, 1, 0.1, None, 200, "stop"))
            registry = CollectorRegistry()
            registry.register(ilog.metrics)
            return _from_registry(registry)
        finally:
            ilog.close()


def exported_names() -> set[str]:
    return server_names() | router_names() | monitor_names() | inference_log_names() | {"up"}


def queried_names(exprs: list[str]) -> set[str]:
    """llmops_* series named in PromQL expressions (recording rules are llmops:..., not matched)."""
    return {m for e in exprs for m in re.findall(r"\b(llmops_[a-z0-9_]+)", e)}
