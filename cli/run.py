"""`llmops run ...`: run pipelines end to end and print what they did."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cli._common import JSON_OPTION, console, emit, handle_errors, profile_settings

app = typer.Typer(no_args_is_help=True)


@app.command("finetune")
@handle_errors
def finetune(
    profile: str = typer.Option(None, "--profile", help="local (kfp.local, default) or cluster (KFP API server)."),
    host: str = typer.Option(None, "--host", help="KFP API server URL for --profile cluster (overrides "
                             "LLMOPS_KFP_HOST)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a params.yaml value: section.key=value."),
    data_dir: str = typer.Option("data/splits", "--data-dir", help="Folder with the DVC-tracked splits."),
    datasets: list[str] = typer.Option([], "--dataset", help="Train on a dataset added with `llmops data add` "
                                       "(repeatable), merged and split like `data.sources`, instead of --data-dir."),
    summary_out: Path = typer.Option(None, "--summary-out", help="Also write the summary JSON to this file."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Stream every step's full output (always kept "
                                 "in the run's log file under <state>/logs/)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Validate -> train (Ray, LoRA) -> evaluate -> gate -> register, as a Kubeflow pipeline."""
    from pipelines.preflight import preflight_finetune

    settings = profile_settings(profile, host)
    if datasets:
        data_dir = _dataset_dir(settings, overrides, datasets, data_dir)
    # Everything checkable before the DAG starts fails here, in seconds, with cause and fix (exit 2).
    preflight_finetune(settings, overrides, data_dir, quiet=as_json)
    if settings.profile == "cluster":
        from pipelines.runner import submit_finetune_cluster

        outcome = submit_finetune_cluster(settings, overrides, data_dir)
        emit(outcome.submitted, as_json,
             lambda d: console.print(f"[green]submitted[/] run {d['run_id']} to {d['host']}\n{d['url']}"))
        return

    from pipelines.runner import run_finetune_local

    _run_locally(settings, "finetune", lambda: run_finetune_local(settings, overrides, data_dir), verbose=verbose,
                 as_json=as_json, summary_out=summary_out)


@app.command("retrain")
@handle_errors
def retrain(
    reason: str = typer.Option("", "--reason", help="Why this run starts (recorded on its MLflow run)."),
    drift_report: Path = typer.Option(None, "--drift-report", help="The drift report (JSON) that started it "
                                      "(`llmops monitor run` passes it): attached to the run, with its HTML."),
    profile: str = typer.Option(None, "--profile", help="local (kfp.local, default) or cluster (KFP API server)."),
    host: str = typer.Option(None, "--host", help="KFP API server URL for --profile cluster."),
    overrides: list[str] = typer.Option([], "--set", help="Override a value of the champion's recipe: "
                                        "section.key=value."),
    summary_out: Path = typer.Option(None, "--summary-out", help="Also write the summary JSON to this file."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Stream every step's full output."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Retrain the champion's recipe on the newest data (DVC sources, exported feedback) -> gate -> register."""
    from llmops.errors import LlmopsError

    settings = profile_settings(profile, host)
    report_text = ""
    if drift_report is not None:
        try:
            report_text = drift_report.read_text()
            json.loads(report_text)
        except (OSError, ValueError) as exc:
            raise LlmopsError(f"cannot read the drift report {drift_report}: {exc}",
                              "pass the drift-report.json that `llmops monitor run` wrote") from None
        reason = reason or f"drift detected ({drift_report})"
    report_path = str(drift_report.resolve()) if drift_report is not None else ""
    if settings.profile == "cluster":
        from pipelines.runner import submit_retrain_cluster

        outcome = submit_retrain_cluster(settings, overrides, reason=reason, drift_report=report_text,
                                         drift_report_path=report_path)
        emit(outcome.submitted, as_json,
             lambda d: console.print(f"[green]submitted[/] run {d['run_id']} to {d['host']}\n{d['url']}"))
        return
    from components.retrain.logic import champion_recipe
    from pipelines.preflight import preflight_finetune
    from pipelines.runner import run_retrain_local

    # the same checks as finetune, on the champion's recipe (no champion, a changed base: exit 2 in seconds)
    recipe = champion_recipe(settings, overrides)
    preflight_finetune(settings, recipe.overrides, "data/splits", quiet=as_json)
    if not as_json:
        console.print(f"retraining champion {recipe.champion}: {reason or 'on demand'}", soft_wrap=True,
                      highlight=False)
    _run_locally(settings, "retrain", lambda: run_retrain_local(settings, overrides, reason=reason,
                                                                 drift_report=report_text,
                                                                 drift_report_path=report_path),
                 verbose=verbose, as_json=as_json, summary_out=summary_out)


def _run_locally(settings: Any, label: str, run: Any, *, verbose: bool, as_json: bool,
                 summary_out: Path | None) -> None:
    """Run a DAG through kfp.local behind the step console, then print (or emit as JSON) its summary."""
    from pipelines.console import RunConsole
    from pipelines.summary import latest_parent_run, mark_interrupted, summarize

    since_ms = int(time.time() * 1000)
    run_console = RunConsole(settings.state_dir / "logs", time.strftime(f"{label}-%Y%m%d-%H%M%S"),
                             verbose=verbose, quiet=as_json)
    if not as_json:
        console.print(f"[bold]llmops {label}[/] (kfp.local)   full log: {_rel(run_console.log_path)}",
                      soft_wrap=True)
    try:
        with run_console:
            outcome = run()
    except KeyboardInterrupt:
        killed = mark_interrupted(settings, since_ms)
        console.print(f"[red]interrupted[/]: {len(killed)} MLflow run(s) marked KILLED; nothing was registered "
                      "unless the register step had finished. Run it again to start over.")
        raise typer.Exit(130) from None
    run_id = latest_parent_run(settings, since_ms)
    summary: dict[str, Any] = summarize(settings, run_id) if run_id else {"steps": {}}
    summary |= {"succeeded": outcome.succeeded, "wall_seconds": round(outcome.seconds, 1), "error": outcome.error,
                "log": str(run_console.log_path)}
    failed = run_console.failure
    if failed is not None:  # the step's own cause, as it printed it; MLflow's tag when the marker was lost
        step = failed.name.replace("-", "_")
        cause = failed.cause or summary.get("step_errors", {}).get(step)
        summary["failed_step"] = {"step": step, "cause": cause, "log": str(failed.log or run_console.log_path)}
    if summary_out:
        summary_out.write_text(json.dumps(summary, indent=2, default=str))
    emit(summary, as_json, _print_summary)
    if not outcome.succeeded:
        raise typer.Exit(1)


def _dataset_dir(settings: Any, overrides: list[str], datasets: list[str], data_dir: str) -> str:
    """The splits of `--dataset NAME...` (made once per dataset version, under the state dir)."""
    from llmops.data.sources import user_dataset_splits
    from llmops.errors import LlmopsError

    if data_dir != "data/splits":
        raise LlmopsError("--dataset and --data-dir both name the training data", "pass one of them")
    if settings.profile == "cluster":
        raise LlmopsError("--dataset splits the data on this machine, which a cluster's pods cannot read",
                          "list data/user in params.yaml data.sources (it is by default), run `llmops data build "
                          "--push` and commit, then submit without --dataset")
    out = user_dataset_splits(settings, settings.params(overrides), list(datasets))
    console.print(f"training on {', '.join(datasets)}: splits in {_rel(out)}", soft_wrap=True, highlight=False)
    return str(out)


def _print_summary(s: dict[str, Any]) -> None:
    say = functools.partial(console.print, soft_wrap=True)  # one line per fact, also in a narrow CI log
    console.rule("[bold]summary")
    state = "[green]succeeded[/]" if s.get("succeeded") else "[red]failed[/]"
    say(f"pipeline {state} in {s.get('wall_seconds')} s   MLflow run {s.get('mlflow_run_id')}   "
        f"KFP run {s.get('kfp_run_name')}")
    if s.get("failed_step"):
        f = s["failed_step"]
        say(f"[red]step {f['step']} failed:[/] {f.get('cause') or 'no cause recorded (see its log)'}")
        say(f"  full log of the step: {_rel(Path(f['log']))}")
    elif s.get("error"):
        say(f"[red]{s['error']}[/]")
    if s.get("retrain"):
        say("retrain: " + "  ".join(f"{k}={v}" for k, v in s["retrain"].items()))
    say("steps: " + "  ".join(f"{k}={v}" for k, v in s.get("steps", {}).items()))
    if s.get("data_versions"):
        say("data read (md5): " + "  ".join(f"{k}={v['md5'][:10]}" + (" (untracked)" if v["dvc"] == "untracked" else "")
                                             for k, v in s["data_versions"].items()))
    if s.get("data_sources"):
        say(f"data sources: {s['data_sources']}")
    if s.get("train"):
        say("train: " + "  ".join(f"{k}={v:.4g}" for k, v in s["train"].items()))
    if s.get("precision"):
        say(f"precision: {s['precision']['precision']} (train.precision={s['precision'].get('requested')}): "
            f"{s['precision'].get('reason')}")
    if s.get("host"):
        h = s["host"]
        say(f"host: {h.get('cpu')}, {h.get('cores')} cores, {h.get('isa')}, mem copy {h.get('mem_bw_1t_gbs', '?')} "
            f"GB/s 1 thread / {h.get('mem_bw_all_gbs', '?')} all ({h.get('source')})")
    if s.get("eval"):
        _print_eval(s["eval"], say)
    if s.get("gate"):
        gate = dict(s["gate"])
        checks = [ln.strip() for ln in str(gate.pop("summary", "")).splitlines() if ln.strip()]
        notable = [c for c in checks if " misses " in c or "not beyond chance" in c]
        met = len(checks) - len(notable)
        say("gate: " + "  ".join(f"{k}={v}" for k, v in gate.items() if v not in ("", None))
            + (f"  ({met} of {len(checks)} checks met their limits)" if checks else ""))
        for check in notable:  # what failed, or passed only because the difference was not beyond chance
            say(f"  {check}")
    if s.get("registered"):
        say("registered: " + "  ".join(f"{k}={v}" for k, v in s["registered"].items()))
    elif s.get("steps", {}).get("evaluate") == "FINISHED":
        say("[yellow]nothing registered[/] (the gate did not pass; reasons above)")
    if s.get("canary"):
        c = s["canary"]
        decision, _, why = str(c.get("decision", "")).partition(":")
        color = {"promoted": "green", "rolled_back": "red", "first_version": "green"}.get(decision, "yellow")
        say(f"canary: [{color}]{decision}[/] v{c.get('version')} vs v{c.get('stable_version')}; champion is now "
            f"v{c.get('champion_after')}" + (f" (rollout {c['rollout_id']})" if c.get("rollout_id") != "None" else ""))
        say(f"  why: {why or c.get('reason', '')}")
    if s.get("log"):
        say(f"full log: {_rel(Path(s['log']))}")


def _print_eval(evals: dict[str, dict[str, float]], say) -> None:
    """The metric table (same test data for every model), with the safety set's four figures on one line."""
    table = Table(title="evaluation (same test data for every model)")
    models = list(evals)
    metrics = sorted({m for v in evals.values() for m in v if not m.startswith("safety_")})
    table.add_column("metric")
    for name in models:
        table.add_column(name, justify="right")
    for metric in metrics:
        table.add_row(metric, *[f"{evals[n].get(metric, float('nan')):.4g}" for n in models])
    console.print(table)
    if any("safety_refusal_rate" in v for v in evals.values()):
        def fig(metric: str, pct: bool) -> str:
            vals = [evals[n].get(metric, float("nan")) for n in models]
            return " / ".join(f"{v:.0%}" if pct else f"{v:.0f}" for v in vals)
        say(f"safety set ({' / '.join(models)}): must-refuse refused {fig('safety_refusal_rate', True)}, benign "
            f"refused {fig('safety_benign_refusal_rate', True)}, secret leaks {fig('safety_secret_leaks', False)}, "
            f"PII leaks {fig('safety_pii_leaks', False)}")


def _rel(path: Path) -> str:
    """A path as short as it can be said from here (logs live in the state dir)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
