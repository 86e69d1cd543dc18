"""`llmops models ...`: the MLflow model registry — list, show, promote, rollback, history.

Every alias change made here is recorded in the audit trail (who, when, from, to, why); MLflow itself
keeps none. Heavy imports (mlflow) stay inside the commands so `llmops --help` is instant.
"""

from __future__ import annotations

from typing import Any

import typer

from cli._common import JSON_OPTION, emit, handle_errors

app = typer.Typer(no_args_is_help=True)

REASON_OPTION = typer.Option(..., "--reason", "-r", help="Why (recorded in the audit trail).")
ALIAS_OPTION = typer.Option("champion", "--alias", "-a", help="Alias to move (champion, challenger, canary).")


def _registry():
    from llmops.registry import Registry
    from llmops.settings import get_settings

    return Registry(get_settings())


def _out():
    """Human output goes to stdout (errors go to stderr through `console`)."""
    from rich.console import Console

    return Console()


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in columns:
        # Times and ids stay whole; free text (reasons, tags) wraps.
        wraps = col in ("reason", "value", "aliases")
        table.add_column(col, no_wrap=not wraps)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    _out().print(table)


def _aliases_text(aliases: dict[str, str]) -> str:
    return ", ".join(f"{a}={v}" for a, v in aliases.items()) or "-"


@app.command("list")
@handle_errors
def list_models(as_json: bool = JSON_OPTION) -> None:
    """List registered models with their latest version and aliases."""
    models = _registry().list_models()

    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            _out().print("no registered models yet (a pipeline run registers one)")
            return
        _table("registered models", ["name", "latest", "versions", "aliases"],
               [[m["name"], m["latest_version"], m["versions"], _aliases_text(m["aliases"])] for m in rows])

    emit(models, as_json, human)


@app.command("show")
@handle_errors
def show(
    ref: str = typer.Argument(..., help="NAME, NAME@ALIAS or NAME/VERSION."),
    card: bool = typer.Option(False, "--card", help="Print the version's model card (Hugging Face format)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a model (NAME) or one version (NAME@ALIAS, NAME/VERSION): aliases, tags, run, source."""
    if card:
        emit(_registry().card(ref), as_json, lambda d: print(d["card"], end=""))  # plain text: pipe it to a file
        return
    info = _registry().show(ref)

    def human(d: dict[str, Any]) -> None:
        if d["kind"] == "model":
            _out().print(f"[bold]{d['name']}[/]  aliases: {_aliases_text(d['aliases'])}  "
                          f"latest: {d['latest_version']}")
            _table("versions", ["version", "aliases", "status", "run id", "created"],
                   [[v["version"], ", ".join(v["aliases"]), v["status"], (v["run_id"] or "")[:12],
                     (v["created"] or "")[:19].replace("T", " ")] for v in d["versions"]])
            return
        _table(f"{d['name']} version {d['version']}", ["field", "value"],
               [["aliases", ", ".join(d["aliases"]) or "-"], ["status", d["status"]], ["run id", d["run_id"]],
                ["source", d["source"]], ["created", d["created"]], ["uri", d["model_uri"]]]
               + [[f"tag {k}", v] for k, v in d["tags"].items()])

    emit(info, as_json, human)


def _event_line(e: dict[str, Any]) -> None:
    if not e.get("changed", True):
        _out().print(f"{e['model']}@{e['alias']} already points at version {e['to_version']}: nothing changed")
        return
    _out().print(f"[green]{e['action']}[/] {e['model']}@{e['alias']}: "
                  f"{e['from_version'] or '(unset)'} -> {e['to_version'] or '(unset)'}  "
                  f"by {e['actor']}: {e['reason']}")


@app.command("promote")
@handle_errors
def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Version number to point the alias at."),
    alias: str = ALIAS_OPTION,
    reason: str = REASON_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Point NAME@ALIAS at VERSION (audited)."""
    emit(_registry().promote(name, version, alias, reason=reason), as_json, _event_line)


@app.command("rollback")
@handle_errors
def rollback(
    name: str = typer.Argument(..., help="Registered model name."),
    alias: str = ALIAS_OPTION,
    reason: str = REASON_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Return NAME@ALIAS to the version it pointed at before its latest change (from the audit trail)."""
    emit(_registry().rollback(name, alias, reason=reason), as_json, _event_line)


@app.command("history")
@handle_errors
def history(
    name: str = typer.Argument(..., help="Registered model name."),
    alias: str | None = typer.Option(None, "--alias", "-a", help="Only this alias."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The audit trail of alias changes: who moved which alias, when, from which version to which, why."""
    events = _registry().history(name, alias)

    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            _out().print(f"no alias changes recorded for {name}" + (f"@{alias}" if alias else ""))
            return
        _table(f"alias history of {name}", ["#", "time (UTC)", "alias", "action", "from", "to", "actor", "reason"],
               [[e["id"], e["timestamp"][:16].replace("T", " "), e["alias"], e["action"], e["from_version"] or "-",
                 e["to_version"] or "-", e["actor"], e["reason"]] for e in rows])

    emit(events, as_json, human)


@app.command("lineage")
@handle_errors
def lineage(
    request_id: str = typer.Argument(..., help="A logged request id (the x-request-id of a response)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """From a logged answer: the model version, its git commit, data versions and pipeline run."""
    from llmops.settings import get_settings
    from monitoring.inference_log import open_log
    from monitoring.inference_log.lineage import request_lineage

    settings = get_settings()
    with open_log(settings, start_writer=False) as ilog:
        info = request_lineage(ilog, settings, request_id)

    def human(d: dict[str, Any]) -> None:
        m, p = d["model"], d["pipeline"]
        rows = [["model", f"{m['name']}/{m['version']}" + (f" ({', '.join(m['aliases'])})" if m["aliases"] else "")],
                ["git commit", d["git_commit"] or "(not recorded)"],
                *[[f"data {split}", f"md5 {t.get('md5')}  dvc {t.get('dvc')}"] for split, t in d["data"].items()],
                ["data sources", d["data_sources"]["summary"] or "(not recorded)"],
                ["pipeline run", p["kfp_run_id"] or p["mlflow_run_id"] or "(not recorded)"],
                ["register run", p["register_run_id"]], ["params hash", d["params_hash"] or "(not recorded)"],
                ["base model", f"{d['base_model']['id']} sha256 {(d['base_model']['sha256'] or '')[:12]}"]]
        _table(f"lineage of request {d['request_id']}", ["field", "value"], rows)

    emit(info, as_json, human)
