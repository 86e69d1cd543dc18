"""`llmops pipeline ...`: compile DAGs to KFP IR YAML (what a cluster runs) and check it is current."""

from __future__ import annotations

from pathlib import Path

import typer

from llmops.cli._common import console, handle_errors

app = typer.Typer(no_args_is_help=True)


@app.command("compile")
@handle_errors
def compile_(
    out: Path = typer.Option(None, "--out", help="Where to write the YAML (default pipelines/compiled/finetune"
                             "[.cluster].yaml)."),
    profile: str = typer.Option("local", "--profile", help="local (what kfp.local runs) or cluster (adds pod "
                                "resources, GPUs, scheduling, secrets, retries, caching from params.yaml `cluster:`)."),
    check: bool = typer.Option(False, "--check", help="Exit 1 if the checked-in YAML differs from a fresh compile."),
) -> None:
    """Compile the finetune pipeline to KFP IR YAML."""
    import tempfile

    from llmops.errors import LlmopsError
    from llmops.settings import get_settings
    from pipelines.runner import compile_finetune, compiled_path

    if profile not in ("local", "cluster"):
        raise LlmopsError(f"unknown profile {profile!r}", "use --profile local or --profile cluster")
    cluster = get_settings().params().cluster if profile == "cluster" else None
    target = out or compiled_path(profile)
    if not check:
        console.print(f"[green]compiled[/] {compile_finetune(target, cluster)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_finetune(Path(tmp) / target.name, cluster).read_text()
    if not target.is_file() or target.read_text() != fresh:
        console.print(f"[red]out of date:[/] {target} differs from a fresh compile; run "
                      f"`llmops pipeline compile --profile {profile}`")
        raise typer.Exit(1)
    console.print(f"[green]up to date[/] {target}")
