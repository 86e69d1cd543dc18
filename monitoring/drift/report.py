"""A window's drift verdict and its outputs: JSON, an HTML page, MLflow metrics + artifact, Prometheus gauges."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmops.settings import Settings


@dataclass(frozen=True)
class DetectorResult:
    """One detector. `threshold` is the level its p-value is compared with (its Holm level within the
    family); `min_effect`, where set, is a size the statistic must also reach. A skipped detector (no data
    for it in this window or the reference) has `skipped` set and takes no part in the family."""

    name: str
    statistic: float | None
    p_value: float | None
    threshold: float | None
    fired: bool
    description: str = ""
    min_effect: float | None = None
    skipped: str | None = None


@dataclass
class DriftReport:
    drifted: bool
    detectors: list[DetectorResult]
    alpha: float
    window: dict[str, Any]
    reference: dict[str, Any]
    created: float
    timings: dict[str, float] = field(default_factory=dict)
    note: str = ""
    plots: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # HTML only, never serialised

    @property
    def fired(self) -> list[str]:
        return [d.name for d in self.detectors if d.fired]

    def to_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "fired": self.fired,
            "alpha": self.alpha,
            "detectors": [{k: _finite(v) for k, v in asdict(d).items()} for d in self.detectors],
            "window": self.window,
            "reference": self.reference,
            "created": self.created,
            "timings": self.timings,
            "note": self.note,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def to_html(self, path: Path | str) -> Path:
        from monitoring.drift.html import render_html

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(self), encoding="utf-8")
        return path

    def metrics(self) -> dict[str, float]:
        """Flat metric names for MLflow: drift_detected, drift_<detector>_statistic / _p_value."""
        out: dict[str, float] = {"drift_detected": float(self.drifted),
                                 "drift_window_requests": float(self.window.get("requests", 0))}
        for d in self.detectors:
            if d.statistic is not None and math.isfinite(d.statistic):
                out[f"drift_{d.name}_statistic"] = float(d.statistic)
            if d.p_value is not None:
                out[f"drift_{d.name}_p_value"] = float(d.p_value)
        return out

    def log_to_mlflow(self, run_id: str, settings: Settings | None = None) -> None:
        """Log the metrics and attach the JSON and HTML report (artifact folder `drift/`) to an existing run."""
        from mlflow.tracking import MlflowClient

        from llmops import tracking
        from llmops.settings import get_settings

        settings = settings or get_settings()
        tracking.configure(settings)
        client = MlflowClient(settings.tracking_uri)
        step = int(self.created)
        for key, value in self.metrics().items():
            client.log_metric(run_id, key, value, timestamp=int(self.created * 1000), step=step)
        client.set_tag(run_id, "llmops.drift.detected", str(self.drifted).lower())
        client.set_tag(run_id, "llmops.drift.fired", ",".join(self.fired) or "-")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "drift-report.json").write_text(self.to_json())
            self.to_html(Path(tmp) / "drift-report.html")
            client.log_artifacts(run_id, tmp, artifact_path="drift")

    def prometheus_lines(self) -> str:
        """Text exposition of the gauges: score and p-value per detector, and the verdict."""
        lines = [
            "# HELP llmops_drift_score Drift statistic of each detector on the latest window.",
            "# TYPE llmops_drift_score gauge",
        ]
        for d in self.detectors:
            if d.statistic is not None and d.skipped is None:
                lines.append(f'llmops_drift_score{{detector="{d.name}"}} {_fmt(d.statistic)}')
        lines += [
            "# HELP llmops_drift_p_value p-value of each detector on the latest window.",
            "# TYPE llmops_drift_p_value gauge",
        ]
        for d in self.detectors:
            if d.p_value is not None:
                lines.append(f'llmops_drift_p_value{{detector="{d.name}"}} {_fmt(d.p_value)}')
        lines += [
            "# HELP llmops_drift_detected 1 if any detector fired on the latest window (family-wise level alpha).",
            "# TYPE llmops_drift_detected gauge",
            f"llmops_drift_detected {int(self.drifted)}",
            "# HELP llmops_drift_window_requests Requests in the latest scored window.",
            "# TYPE llmops_drift_window_requests gauge",
            f"llmops_drift_window_requests {int(self.window.get('requests', 0))}",
        ]
        return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ("+Inf" if value > 0 else "-Inf" if value < 0 else "NaN")


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
