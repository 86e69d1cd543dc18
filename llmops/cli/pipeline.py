"""`llmops pipeline ...`: compile DAGs to KFP IR YAML (what a cluster runs) and check it is current."""

from __future__ import annotations

from pathlib import Path

import typer

from llmops.cli._common import console, handle_errors

app = typer.Typer(no_args_is_help=True)


@app.command("compile")
@handle_errors
def compile_(
    out: Path = typer.Option(None, "--out", help="Where to write the YAML (default pipelines/compiled/finetune.yaml)."),
    check: bool = typer.Option(False, "--check", help="Exit 1 if the checked-in YAML differs from a fresh compile."),
) -> None:
    """Compile the finetune pipeline to KFP IR YAML."""
    import tempfile

    from pipelines.runner import COMPILED_DIR, compile_finetune

    target = out or COMPILED_DIR / "finetune.yaml"
    if not check:
        console.print(f"[green]compiled[/] {compile_finetune(target)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_finetune(Path(tmp) / "finetune.yaml").read_text()
    if not target.is_file() or target.read_text() != fresh:
        console.print(f"[red]out of date:[/] {target} differs from a fresh compile; run `llmops pipeline compile`")
        raise typer.Exit(1)
    console.print(f"[green]up to date[/] {target}")
