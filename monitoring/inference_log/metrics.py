"""The inference log's own Prometheus series, read from the log at scrape time (a custom collector, so the same
log can be registered on the model server's or the router's registry without owning one).

A full disk, a locked or hung database, or a dead writer thread used to be visible only as a log line while the
server answered 200: these series make them alertable (monitoring/prometheus/rules.py: LlmopsInferenceLog*).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class LogView(Protocol):
    """What the collector reads of an `InferenceLog` (declared here so the log imports the collector, not back)."""

    writer: Any  # the writer thread (None once closed): committed, failed, alive, busy_for(), depth(), last_commit
    not_logged: Mapping[str, int]
    params: Any  # InferenceLogParams: max_queue


FAILURES = "llmops_inference_log_write_failures"  # exposed as ..._total
WRITER_UP = "llmops_inference_log_writer_up"
WRITER_BUSY = "llmops_inference_log_writer_busy_seconds"


class LogCollector(Collector):
    def __init__(self, ilog: LogView) -> None:
        self.ilog = ilog

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        ilog, writer = self.ilog, self.ilog.writer
        failures = CounterMetricFamily(
            FAILURES, "Answered requests without a committed inference-log record, by reason (timeout: not "
            "committed within write_timeout_s, may land late; stalled; queue_full; error: the database refused "
            "it; writer_down; rejected: unstorable)", labels=["reason"])
        for reason, n in sorted(ilog.not_logged.items()):
            failures.add_metric([reason], n)
        yield failures
        records = CounterMetricFamily("llmops_inference_log_records", "Records the writer handled, by outcome "
                                      "(failed: lost after retries or refused row by row)", labels=["outcome"])
        records.add_metric(["committed"], writer.committed if writer else 0)
        records.add_metric(["failed"], writer.failed if writer else 0)
        yield records
        yield GaugeMetricFamily(WRITER_UP, "1 while the inference-log writer thread runs and accepts records",
                                value=1 if writer is not None and writer.alive else 0)
        yield GaugeMetricFamily(WRITER_BUSY, "Seconds the writer's commit in progress has been running (0 when "
                                "idle): a locked or hung database shows here", value=writer.busy_for() if writer else 0)
        yield GaugeMetricFamily("llmops_inference_log_queue_depth", "Records waiting for the writer",
                                value=writer.depth() if writer else 0)
        yield GaugeMetricFamily("llmops_inference_log_queue_capacity", "Most records that may wait (max_queue)",
                                value=ilog.params.max_queue)
        if writer is not None and writer.last_commit is not None:
            yield GaugeMetricFamily("llmops_inference_log_last_commit_timestamp_seconds",
                                    "Unix time of the writer's latest successful commit", value=writer.last_commit)
