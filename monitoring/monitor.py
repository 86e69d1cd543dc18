"""One monitor run (`llmops monitor run`): the latest window of the inference log (C6) scored by the drift
monitors (C5), the report written under the state dir and logged to MLflow, the gauges refreshed, and on a
`drift` verdict the retraining trigger (monitoring/triggers.py): only once the drift has persisted over
`monitoring.trigger.persist_windows` windows and only when data new since the champion's covers it
(monitoring/retrain_gate.py); otherwise the decision is recorded and the drifted prompts queued for labelling."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmops.params import Params
from llmops.settings import Settings
from monitoring import exposition, triggers
from monitoring.drift.publish import log_to_mlflow, write_html

EXPERIMENT = "llmops-monitor"


def monitor_dir(settings: Settings) -> Path:
    return settings.state_dir / "monitor"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reference_identity(reference: Any) -> str:
    """What the window drifted FROM: the reference's build (source, size, embedder, creation time)."""
    meta = reference.meta
    return _digest({k: meta.get(k) for k in ("prompt_source", "prompts", "embedder", "created")})


def window_identity(rows: Sequence[Any]) -> str:
    """The window's requests (first and last id, count): the same window scored twice has the same identity."""
    ids = [str(_field(r, "request_id", "")) for r in rows]
    return _digest({"first": ids[0] if ids else None, "last": ids[-1] if ids else None, "n": len(ids)})


def _field(row: Any, name: str, default: Any = None) -> Any:
    return row.get(name, default) if isinstance(row, dict) else getattr(row, name, default)


def latest_window(settings: Settings, params: Params, size: int, since: float | None,
                  until: float | None = None) -> list[Any]:
    """The newest `size` logged requests that started in [since, until), oldest first (C6 `query`)."""
    from monitoring.inference_log import open_log

    log = open_log(settings, params, start_writer=False)
    try:
        return list(log.query(since, until or time.time(), size))
    finally:
        log.close()


def run_monitor(
    settings: Settings,
    params: Params,
    *,
    since: float | None = None,
    until: float | None = None,
    window: int | None = None,
    trigger: bool = True,
    rows: Sequence[Any] | None = None,
    reference: Any = None,
    embedder: Any = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score the latest window and act on the verdict. `rows` (inference-log rows) replaces reading the log;
    `reference`/`embedder` replace the saved reference and the pinned embedder (tests, the demo)."""
    from monitoring.drift import ensure_reference, evaluate_window, window_from_logged

    say = progress or (lambda _m: None)
    size = window or params.drift.window_size
    now = time.time()
    if rows is None:
        say(f"reading the latest {size} requests from the inference log")
        rows = latest_window(settings, params, size, since, until)
    rows = list(rows)
    if reference is None:
        say("loading the drift reference (built from the training split on first use)")
        reference = ensure_reference(settings, params)
    records = window_from_logged(rows)
    say(f"scoring {len(records)} requests against the reference")
    report = evaluate_window(reference, records, params, settings=settings, embedder=embedder, progress=say)

    json_path, html_path = _write_report(settings, report, now)
    ref_id, win_id = reference_identity(reference), window_identity(rows)
    window_stats = _window_stats(rows, records)
    run_id = _log_mlflow(settings, report, ref_id, win_id, window_stats)

    consecutive = triggers.record_window(settings.state_dir, reference_id=ref_id, window_id=win_id,
                                         severity=report.severity.value, now=now, url=settings.triggers_db_uri)
    decision, queued = None, None
    if report.drifted and trigger:
        decision, queued = _trigger(settings, params, report, embedder, ref_id=ref_id, win_id=win_id,
                                    consecutive=consecutive, json_path=json_path, run_id=run_id, now=now,
                                    window_prompts=[r.prompt for r in records])
        say(f"trigger: {decision.outcome} ({decision.reason})")

    held = decision is not None and decision.outcome == triggers.TriggerOutcome.HELD
    prom = exposition.write_textfile(
        exposition.textfile_path(settings.state_dir),
        exposition.render(report.prometheus_lines() + trigger_gauges(consecutive, held), window_stats,
                          triggers.counts(settings.state_dir, settings.triggers_db_uri), now))
    summary = {
        "severity": report.severity.value, "drifted": report.drifted, "consecutive_drift_windows": consecutive,
        "clusters": [{k: c[k] for k in ("share", "prompts", "examples")} for c in report.clusters],
        "fired": report.fired, "note": report.note, "window": window_stats,
        "reference_id": ref_id, "window_id": win_id,
        "report_json": str(json_path), "report_html": str(html_path), "metrics_file": str(prom),
        "mlflow_run_id": run_id, "trigger": decision.to_dict() if decision else None, "labelling": queued,
    }
    (monitor_dir(settings) / "latest.json").write_text(json.dumps(summary, indent=2))
    return summary



def _write_report(settings: Settings, report: Any, now: float) -> tuple[Path, Path]:
    """The window's JSON and HTML report in their own time-stamped folder (millisecond stamps never collide)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"
    out_dir = monitor_dir(settings) / "reports" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "drift-report.json"
    json_path.write_text(report.to_json())
    return json_path, write_html(report, out_dir / "drift-report.html", calibration=load_calibration(settings))


def _window_stats(rows: Sequence[Any], records: Sequence[Any]) -> dict[str, Any]:
    from monitoring.drift.records import is_negative

    times = [t for t in (_field(r, "time") for r in rows) if t]
    rated = [r for r in records if r.feedback is not None]
    return {"requests": len(records), "rated": len(rated), "negative": sum(is_negative(r.feedback) for r in rated),
            "since": min(times) if times else None, "until": max(times) if times else None}


def trigger_gauges(consecutive: int, held: bool) -> str:
    """The persistence count and whether the latest drift was held for want of new data (an alert reads it)."""
    return "\n".join([
        "# HELP llmops_drift_consecutive_windows Consecutive windows (this reference) with severity drift.",
        "# TYPE llmops_drift_consecutive_windows gauge", f"llmops_drift_consecutive_windows {consecutive}",
        "# HELP llmops_monitor_retrain_held 1 if the latest drift verdict started no retraining because no data "
        "new since the champion's covers the drifted traffic (its prompts are queued for labelling).",
        "# TYPE llmops_monitor_retrain_held gauge", f"llmops_monitor_retrain_held {int(held)}",
    ]) + "\n"


def load_calibration(settings: Settings) -> dict[str, Any] | None:
    """The latest calibration (`python -m monitoring.drift.calibration --out-dir <state>/drift/calibration`), so
    the report can draw the window's effects on its distributions; None when never run."""
    path = settings.state_dir / "drift" / "calibration" / "calibration.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _trigger(settings: Settings, params: Params, report: Any, embedder: Any, *, ref_id: str, win_id: str,
             consecutive: int, json_path: Path, run_id: str, now: float,
             window_prompts: list[str]) -> tuple[Any, dict[str, Any] | None]:
    """A drift verdict -> the trigger's decision; the new-data check runs only once the drift has persisted."""
    from monitoring import retrain_gate

    t = params.monitoring.trigger
    learnable = None
    if consecutive >= t.persist_windows:
        if embedder is None:
            from monitoring.drift.features import embedder_for

            embedder = embedder_for(settings)
        gate = retrain_gate.check(settings, params, report.new_prompts, embedder)
        learnable = (gate.ok, gate.reason)
    decision = triggers.decide_and_start(
        settings.state_dir, reference_id=ref_id, window_id=win_id, command=list(t.command),
        cooldown_s=t.cooldown_s, report_path=json_path, mlflow_run_id=run_id, fired=report.fired,
        cwd=settings.project_dir, now=now, consecutive=consecutive, persist_windows=t.persist_windows,
        learnable=learnable, url=settings.triggers_db_uri)
    queued = None
    if decision.outcome == triggers.TriggerOutcome.HELD:  # the new prompts; the window's when drift is in outputs
        queued = retrain_gate.queue_for_labelling(
            settings.state_dir, report.new_prompts or window_prompts, n=t.label_sample, seed=win_id, window_id=win_id,
            report_path=str(json_path), reason=decision.reason)
    return decision, queued


def _log_mlflow(settings: Settings, report: Any, ref_id: str, win_id: str, window: dict[str, Any]) -> str:
    """One MLflow run per monitor run (experiment llmops-monitor): the report's metrics and JSON + HTML."""
    from mlflow.tracking import MlflowClient

    from llmops import tracking

    tracking.configure(settings)
    client = MlflowClient(settings.tracking_uri)
    exp_id = tracking.ensure_experiment(settings, EXPERIMENT)
    run = client.create_run(exp_id, run_name=f"monitor-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={"llmops.kind": "monitor", "llmops.drift.reference_id": ref_id,
                                  "llmops.drift.window_id": win_id})
    try:
        for key in ("requests", "rated", "negative"):
            client.log_metric(run.info.run_id, f"window_{key}", float(window[key]))
        log_to_mlflow(report, run.info.run_id, settings)
        client.set_terminated(run.info.run_id, "FINISHED")
    except Exception:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return run.info.run_id
