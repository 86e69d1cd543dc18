"""`llmops demo ...`: end-to-end demonstrations on real processes (the README's `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cli._common import JSON_OPTION, console, emit, handle_errors

app = typer.Typer(no_args_is_help=True)


@app.command("drift")
@handle_errors
def drift(
    requests: int = typer.Option(200, "--requests", min=1, help="Requests per phase (the monitor's window)."),
    max_tokens: int = typer.Option(32, "--max-tokens", min=1, help="Tokens generated per request."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, help="Requests in flight at once."),
    feedback: int = typer.Option(150, "--feedback", min=0, help="Shifted requests given a corrected answer "
                                 "(reviewed, then exported as SFT records and preference pairs, so the retrain "
                                 "trains on them: SFT, then DPO)."),
    seed: int = typer.Option(0, "--seed", help="Which prompts each phase sends (a fixed sample)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a params.yaml value for the servers and "
                                        "the monitor: section.key=value."),
    summary_out: Path = typer.Option(None, "--summary-out", help="Also write the summary JSON here."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Serve the champion, replay reference-like then shifted traffic, watch drift fire, review and export the
    corrections (SFT records + preference pairs), and start the retrain (SFT then DPO), which goes through the
    gate and the canary; prints what each phase did and DPO vs SFT-only on held-out pairs."""
    from cli.drift_demo import DemoConfig, run_drift_demo
    from llmops.settings import get_settings

    settings = get_settings()
    params = settings.params(overrides)
    cfg = DemoConfig(requests=requests, max_tokens=max_tokens, concurrency=concurrency, seed=seed,
                     feedback=feedback, overrides=list(overrides))
    say = (lambda _m: None) if as_json else (lambda m: console.print(m, highlight=False, soft_wrap=True))
    result = run_drift_demo(settings, params, cfg, say)
    if summary_out:
        summary_out.write_text(json.dumps(result, indent=2, default=str))
    emit(result, as_json, _print)
    if not (result["shifted"]["drifted"] and result.get("retrain") and result["retrain"].get("succeeded", True)):
        raise typer.Exit(1)


def _print(r: dict[str, Any]) -> None:
    from cli.drift_demo import summary_lines

    say = console.print
    for line in summary_lines(r):  # every phase's severity; the drift held for want of new data, and why
        say(line, soft_wrap=True, highlight=False)
    rt = r.get("retrain")
    if not rt:
        say("[red]no retraining run was started[/]")
        return
    say(f"[bold]retrain[/] MLflow run {rt.get('mlflow_run_id')}: state {rt.get('state')}", highlight=False)
    say("  steps: " + "  ".join(f"{k}={v}" for k, v in rt.get("steps", {}).items()), soft_wrap=True)
    if rt.get("data_sources"):
        say(f"  data sources: {rt['data_sources']}", soft_wrap=True, highlight=False)
    if rt.get("registered"):
        say("  registered: " + "  ".join(f"{k}={v}" for k, v in rt["registered"].items()), highlight=False)
    if rt.get("canary"):
        say(f"  canary: {rt['canary']}", soft_wrap=True, highlight=False)
    if r.get("dpo"):
        from cli.drift_demo import dpo_lines

        for line in dpo_lines(r["dpo"]):  # held-out preference accuracy and margin: SFT-only vs SFT->DPO
            say(line, soft_wrap=True, highlight=False)
