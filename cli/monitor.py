"""`llmops monitor ...`: score the latest logged traffic for drift, act on it, and expose the result.

    llmops monitor run [--since 1h] [--window 200] [--json]   # report + MLflow + gauges; drift -> retrain trigger
    llmops monitor calibrate [--windows 40]                   # severity rates on paraphrased traffic and shifts
    llmops monitor serve-metrics                              # Prometheus job llmops-monitor scrapes this
    llmops monitor triggers                                   # what the trigger decided, and why
    llmops monitor rules                                      # re-render the alert rules from params.yaml
"""

from __future__ import annotations

import time

import typer

from cli._common import JSON_OPTION, console, emit, handle_errors
from llmops.errors import LlmopsError
from llmops.timeparse import parse_since

app = typer.Typer(no_args_is_help=True)
@app.command("run")
@handle_errors
def run(
    since: str = typer.Option(None, "--since", help="Only requests from this long ago on (30m, 2h, 1d, 1w), an ISO "
                              "8601 time or a unix time; default: no bound (the latest --window requests)."),
    until: str = typer.Option(None, "--until", help="Only requests that started before this unix time (or this "
                              "long ago: 10m); with --since, one past window (e.g. re-scoring it)."),
    window: int = typer.Option(None, "--window", min=1, help="Requests in the window (default: params.yaml "
                               "drift.window_size)."),
    no_trigger: bool = typer.Option(False, "--no-trigger", help="Report only; never start a retraining run."),
    overrides: list[str] = typer.Option([], "--set", help="Override params, e.g. --set drift.alpha=0.01."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Score the latest window of the inference log against the training reference (severity none | watch |
    drift); a drift that persists over monitoring.trigger.persist_windows windows starts one retraining run per
    shift when data new since the champion's covers it, else it is held and its prompts queued for labelling
    (decisions in <state>/monitor/triggers.db)."""
    from llmops.settings import get_settings
    from monitoring.monitor import run_monitor

    settings = get_settings()
    params = settings.params(overrides)
    start, end = parse_since(since), parse_since(until)
    with console.status("monitor") as status:
        out = run_monitor(settings, params, since=start, until=end, window=window, trigger=not no_trigger,
                          progress=lambda msg: status.update(msg))

    def human(d: dict) -> None:
        verdict = {"drift": "[bold red]DRIFT[/]", "watch": "[yellow]watch[/]"}.get(d["severity"], "[green]none[/]")
        console.print(f"severity {verdict} on {d['window']['requests']} requests"
                      + (f": {', '.join(d['fired'])}" if d["fired"] else "") + (f" ({d['note']})" if d["note"] else "")
                      + (f"; drift in {d['consecutive_drift_windows']} consecutive window(s)" if d["drifted"] else ""))
        for c in d.get("clusters") or []:
            console.print(f"  new prompts, {c['share']:.0%} of the window: {c['examples'][0][:100]!r}", highlight=False)
        console.print(f"report {d['report_html']}\nmlflow run {d['mlflow_run_id']}")
        if t := d["trigger"]:
            colour = "green" if t["outcome"] == "started" else "yellow"
            console.print(f"retrain trigger #{t['id']}: [{colour}]{t['outcome']}[/] ({t['reason']})"
                          + (f"; log {t['log_path']}" if t.get("log_path") else ""))
        if q := d.get("labelling"):
            console.print(f"{q['queued']} drifted prompts queued for labelling in {q['path']}")

    emit(out, as_json, human)


@app.command("calibrate")
@handle_errors
def calibrate_cmd(
    windows: int = typer.Option(40, "--windows", min=1, help="Paraphrased in-domain (no-shift) windows."),
    shift_windows: int = typer.Option(None, "--shift-windows", min=1, help="Windows per shift (default --windows)."),
    size: int = typer.Option(None, "--size", min=2, help="Requests per window (default drift.window_size)."),
    overrides: list[str] = typer.Option([], "--set", help="Override params, e.g. --set drift.effect.prompt_mmd2=0.05."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Measure the severity verdict: how often paraphrased in-domain windows reach drift (with a 95% interval)
    and how often each shift (SQL, Spanish, cooking) does; writes calibration.json/.html under
    <state>/drift/calibration (the drift report then draws each window on these distributions)."""
    from llmops.settings import get_settings
    from monitoring.drift.calibration import calibrate
    from monitoring.drift.html import write_calibration

    settings = get_settings()
    with console.status("calibrating (embedding the reference and the slices)"):
        result = calibrate(settings, settings.params(overrides), windows=windows, size=size,
                           shift_windows=shift_windows)
    files = write_calibration(result, settings.state_dir / "drift" / "calibration")
    out = {"files": files, "window_size": result["window_size"], "separation": result["separation"],
           "kinds": {k: {kk: v[kk] for kk in ("windows", "severity", "drift_rate", "drift_wilson95")}
                     for k, v in result["kinds"].items()}}

    def human(d: dict) -> None:
        for kind, v in d["kinds"].items():
            lo, hi = v["drift_wilson95"]
            console.print(f"{kind:>10}: drift in {v['severity']['drift']}/{v['windows']} windows "
                          f"({v['drift_rate']:.1%}, 95% CI {lo:.1%}-{hi:.1%}); watch {v['severity']['watch']}")
        console.print(f"report {d['files']['html']}")

    emit(out, as_json, human)


@app.command("triggers")
@handle_errors
def triggers_cmd(limit: int = typer.Option(20, "--limit", min=1), as_json: bool = JSON_OPTION) -> None:
    """The retraining trigger's decisions (started / suppressed / failed), newest first."""
    from llmops.settings import get_settings
    from monitoring.triggers import history

    settings = get_settings()
    rows = history(settings.state_dir, limit, url=settings.triggers_db_uri)

    def human(rows: list) -> None:
        if not rows:
            console.print("no trigger decisions yet")
        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"]))
            console.print(f"#{r['id']} {when} {r['outcome']}: {r['reason']}")

    emit(rows, as_json, human)


@app.command("serve-metrics")
@handle_errors
def serve_metrics(
    host: str = typer.Option(None, "--host", help="Bind address (default: params.yaml monitoring.metrics_host)."),
    port: int = typer.Option(None, "--port", "-p", help="Port (default: params.yaml monitoring.metrics_port)."),
) -> None:
    """Serve the latest monitor run's gauges on /metrics (drift scores and verdict, feedback rate, triggers)."""
    from llmops.settings import get_settings
    from monitoring.exposition import make_server, textfile_path

    settings = get_settings()
    m = settings.params().monitoring
    host, port = host or m.metrics_host, port or m.metrics_port
    try:
        server = make_server(textfile_path(settings.state_dir), host, port)
    except OSError as exc:
        raise LlmopsError(f"cannot listen on {host}:{port}: {exc.strerror}", "pick another --port") from None
    console.print(f"serving {textfile_path(settings.state_dir)} on http://{host}:{server.server_address[1]}/metrics")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command("rules")
@handle_errors
def rules(
    check: bool = typer.Option(False, "--check", help="Exit 1 if the checked-in files differ from params.yaml."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Render the Prometheus alert rules (and the Kubernetes PrometheusRule) from params.yaml `monitoring:`."""
    from llmops.settings import get_settings
    from monitoring.prometheus.rules import PROMETHEUS_RULE_FILE, RULES_FILE, render_prometheus_rule, render_rules

    settings = get_settings()
    m = settings.params().monitoring
    wanted = {RULES_FILE: render_rules(m), PROMETHEUS_RULE_FILE: render_prometheus_rule(m)}
    stale = [str(p) for p, text in wanted.items()
             if not (settings.project_dir / p).is_file() or (settings.project_dir / p).read_text() != text]
    if check:
        emit({"stale": stale}, as_json, lambda d: console.print(
            "rules are current" if not d["stale"] else f"stale: {', '.join(d['stale'])} (run `llmops monitor rules`)"))
        raise typer.Exit(1 if stale else 0)
    for rel, text in wanted.items():
        (settings.project_dir / rel).write_text(text)
    emit({"written": [str(p) for p in wanted], "changed": stale}, as_json,
         lambda d: console.print(f"wrote {', '.join(d['written'])}"))
