"""`llmops pipeline ...`: compile the DAGs (finetune, retrain) to KFP IR YAML (what a cluster runs); check it."""

from __future__ import annotations

from pathlib import Path

import typer

from cli._common import console, handle_errors

app = typer.Typer(no_args_is_help=True)


@app.command("compile")
@handle_errors
def compile_(
    out: Path = typer.Option(None, "--out", help="Where to write the YAML (default pipelines/compiled/NAME"
                             "[.cluster].yaml); needs --pipeline."),
    pipeline: str = typer.Option("all", "--pipeline", help="finetune, retrain or all."),
    profile: str = typer.Option("local", "--profile", help="local (what kfp.local runs) or cluster (adds pod "
                                "resources, GPUs, scheduling, secrets, retries, caching from params.yaml `cluster:`)."),
    check: bool = typer.Option(False, "--check", help="Exit 1 if the checked-in YAML differs from a fresh compile."),
) -> None:
    """Compile the finetune and retrain pipelines to KFP IR YAML."""
    import tempfile

    from llmops.errors import LlmopsError
    from llmops.settings import get_settings
    from pipelines.runner import PIPELINES, compile_pipeline, compiled_path

    if profile not in ("local", "cluster"):
        raise LlmopsError(f"unknown profile {profile!r}", "use --profile local or --profile cluster")
    names = list(PIPELINES) if pipeline == "all" else [pipeline]
    if out is not None and len(names) != 1:
        raise LlmopsError("--out names one file but --pipeline all compiles several", "add --pipeline NAME")
    cluster = get_settings().params().cluster if profile == "cluster" else None
    stale = []
    for name in names:
        target = out or compiled_path(profile, name)
        if not check:
            console.print(f"[green]compiled[/] {compile_pipeline(name, target, cluster)}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            fresh = compile_pipeline(name, Path(tmp) / target.name, cluster).read_text()
        if not target.is_file() or target.read_text() != fresh:
            console.print(f"[red]out of date:[/] {target} differs from a fresh compile; run "
                          f"`llmops pipeline compile --profile {profile}`")
            stale.append(name)
        else:
            console.print(f"[green]up to date[/] {target}")
    if stale:
        raise typer.Exit(1)
