"""The monitor's Prometheus gauges: a text file written by every `llmops monitor run`, served by
`llmops monitor serve-metrics` (Prometheus job `llmops-monitor`) or read by node_exporter's textfile collector.

A file, not an in-process registry: `monitor run` is a short job (cron, a schedule), and the gauges must
outlive it until the next run; the endpoint only reads the latest file at each scrape.
"""

from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def textfile_path(state_dir: Path) -> Path:
    return state_dir / "monitor" / "metrics.prom"


def _gauge(name: str, help_: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
    lines += [f"{name}{labels} {float(value)!r}" for labels, value in samples]
    return lines


def render(drift_lines: str, window: dict[str, Any], triggers: dict[str, int], now: float) -> str:
    """The monitor's exposition: the drift report's own gauges (C5) plus the window and trigger gauges."""
    rated = int(window.get("rated", 0))
    negative = int(window.get("negative", 0))
    lines = [drift_lines.rstrip("\n")] if drift_lines.strip() else []
    lines += _gauge("llmops_monitor_last_run_timestamp_seconds", "Unix time of the latest `llmops monitor run`.",
                    [("", now)])
    lines += _gauge("llmops_monitor_window_requests", "Logged requests in the latest window.",
                    [("", window.get("requests", 0))])
    lines += _gauge("llmops_monitor_rated_requests", "Requests with a feedback rating in the latest window.",
                    [("", rated)])
    lines += _gauge("llmops_monitor_negative_feedback_ratio", "Share of rated requests in the latest window "
                    "rated negative (0 when none is rated).", [("", negative / rated if rated else 0.0)])
    lines += _gauge("llmops_monitor_retrain_triggers", "Retraining trigger decisions so far, by outcome.",
                    [(f'{{outcome="{k}"}}', v) for k, v in sorted(triggers.items())])
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> Path:
    """Atomic replace, so a scrape never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def make_server(path: Path, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server whose GET /metrics returns the latest text file (404 elsewhere)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            try:
                body = path.read_bytes()
            except FileNotFoundError:  # no monitor run yet: an empty exposition (the stale alert covers it)
                body = b""
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return ThreadingHTTPServer((host, port), Handler)
