"""Where a drift report goes besides the gauges: its HTML page and the MLflow run it belongs to. Apart from
`report.py` so the report stays plain data and the page's renderer (`html.py`) can read it without a loop."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from llmops.settings import Settings
from monitoring.drift.html import render_html
from monitoring.drift.report import DriftReport


def write_html(report: DriftReport, path: Path | str, calibration: dict[str, Any] | None = None) -> Path:
    """The HTML page; with `calibration` (calibration.json) the window's effects are drawn on its plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report, calibration), encoding="utf-8")
    return path


def log_to_mlflow(report: DriftReport, run_id: str, settings: Settings | None = None) -> None:
    """Log the metrics and attach the JSON and HTML report (artifact folder `drift/`) to an existing run."""
    from mlflow.tracking import MlflowClient

    from llmops import tracking
    from llmops.settings import get_settings

    settings = settings or get_settings()
    tracking.configure(settings)
    client = MlflowClient(settings.tracking_uri)
    step = int(report.created)
    for key, value in report.metrics().items():
        client.log_metric(run_id, key, value, timestamp=int(report.created * 1000), step=step)
    client.set_tag(run_id, "llmops.drift.detected", str(report.drifted).lower())
    client.set_tag(run_id, "llmops.drift.severity", report.severity.value)
    client.set_tag(run_id, "llmops.drift.fired", ",".join(report.fired) or "-")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "drift-report.json").write_text(report.to_json())
        write_html(report, Path(tmp) / "drift-report.html")
        client.log_artifacts(run_id, tmp, artifact_path="drift")
