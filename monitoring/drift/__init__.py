"""Drift monitors (contract C5): compare a window of logged traffic with the training reference.

    reference = ensure_reference(settings, params)          # built once from data/splits/train.jsonl
    report = evaluate_window(reference, window_from_logged(rows), params)
    report.severity (none | watch | drift), report.drifted (severity drift), report.to_json(),
    publish.write_html(report, path), publish.log_to_mlflow(report, run_id), report.prometheus_lines()
"""

from monitoring.drift.detect import evaluate_window
from monitoring.drift.records import WindowRecord, prompt_text, window_from_dataset, window_from_logged
from monitoring.drift.reference import (
    Reference,
    build_reference,
    default_reference_dir,
    ensure_reference,
    reference_from_splits,
)
from monitoring.drift.report import DetectorResult, DriftReport, Severity

__all__ = [
    "DetectorResult",
    "DriftReport",
    "Reference",
    "Severity",
    "WindowRecord",
    "build_reference",
    "default_reference_dir",
    "ensure_reference",
    "evaluate_window",
    "prompt_text",
    "reference_from_splits",
    "window_from_dataset",
    "window_from_logged",
]
