"""`llmops run ...`: run pipelines end to end and print what they did."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from llmops.cli._common import JSON_OPTION, console, emit, handle_errors

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
    import os

    from llmops.settings import get_settings

    if profile:
        os.environ["LLMOPS_PROFILE"] = profile
        get_settings.cache_clear()
    if host:
        os.environ["LLMOPS_KFP_HOST"] = host
        get_settings.cache_clear()
    from pipelines.preflight import preflight_finetune

    settings = get_settings()
    if datasets:
        data_dir = _dataset_dir(settings, overrides, datasets, data_dir)
    # Everything checkable before the DAG starts fails here, in seconds, with cause and fix (exit 2).
    preflight_finetune(settings, overrides, data_dir)
    if settings.profile == "cluster":
        from pipelines.runner import submit_finetune_cluster

        outcome = submit_finetune_cluster(settings, overrides, data_dir)
        emit(outcome.submitted, as_json,
             lambda d: console.print(f"[green]submitted[/] run {d['run_id']} to {d['host']}\n{d['url']}"))
        return

    from pipelines.console import RunConsole
    from pipelines.runner import run_finetune_local
    from pipelines.summary import latest_parent_run, mark_interrupted, summarize

    since_ms = int(time.time() * 1000)
    label = time.strftime("finetune-%Y%m%d-%H%M%S")
    run_console = RunConsole(settings.state_dir / "logs", label, verbose=verbose, quiet=as_json)
    if not as_json:
        console.print(f"[bold]llmops finetune[/] (kfp.local)   full log: {_rel(run_console.log_path)}",
                      soft_wrap=True)
    try:
        with run_console:
            outcome = run_finetune_local(settings, overrides, data_dir)
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
    say("steps: " + "  ".join(f"{k}={v}" for k, v in s.get("steps", {}).items()))
    if s.get("data_versions"):
        say("data read (md5): " + "  ".join(f"{k}={v['md5'][:10]}" + (" (untracked)" if v["dvc"] == "untracked" else "")
                                             for k, v in s["data_versions"].items()))
    if s.get("train"):
        say("train: " + "  ".join(f"{k}={v:.4g}" for k, v in s["train"].items()))
    if s.get("eval"):
        table = Table(title="evaluation (same test data for every model)")
        models = list(s["eval"])
        metrics = sorted({m for v in s["eval"].values() for m in v})
        table.add_column("metric")
        for name in models:
            table.add_column(name, justify="right")
        for metric in metrics:
            table.add_row(metric, *[f"{s['eval'][n].get(metric, float('nan')):.4g}" for n in models])
        console.print(table)
    if s.get("gate"):
        gate = dict(s["gate"])
        checks = [ln.strip() for ln in str(gate.pop("summary", "")).splitlines() if ln.strip()]
        say("gate: " + "  ".join(f"{k}={v}" for k, v in gate.items() if v not in ("", None)))
        for check in checks:
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


def _rel(path: Path) -> str:
    """A path as short as it can be said from here (logs live in the state dir)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
