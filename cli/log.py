"""`llmops log ...`: read the inference log, export its feedback as a training dataset, prune it.

The log is `settings.inference_log_uri` (default `<state_dir>/inference-log.db`); `llmops serve` and
`llmops router` write it. Exit codes: 0 done, 1 an export the records suite refused (nothing written),
2 a cause a user can fix (unknown request id, bad time, no feedback in the window...).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import typer

from cli._common import JSON_OPTION, console, emit, handle_errors

app = typer.Typer(no_args_is_help=True)


def _open(start_writer: bool = False):
    from llmops.settings import get_settings
    from monitoring.inference_log import open_log

    return open_log(get_settings(), start_writer=start_writer)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1] if users else prompt)
    return str(prompt)


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _print_rows(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="inference log (oldest first)", title_justify="left")
    for col in ("time (UTC)", "request id", "model", "status", "tokens", "latency", "rating", "prompt", "response"):
        text = col in ("prompt", "response")
        table.add_column(col, no_wrap=not text, min_width=16 if text else None, overflow="fold" if text else "ellipsis")
    for r in rows:
        when = _iso(r["time"])[5:].replace("T", " ")
        table.add_row(when, r["request_id"], f"{r['model']}/{r['model_version'] or '-'}", str(r["status"]),
                      f"{r['prompt_tokens']}+{r['completion_tokens']}", f"{r['latency_s']:.2f}s",
                      "" if r["rating"] is None else str(r["rating"]), _short(_prompt_text(r["prompt"])),
                      _short(r["response"]))
    Console().print(table)


@app.command("tail")
@handle_errors
def tail(
    n: int = typer.Option(20, "-n", "--lines", min=1, help="How many of the latest requests."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new requests (Ctrl-C stops)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The latest logged requests (with --json: one JSON object per line)."""
    import json
    import sys

    with _open() as ilog:
        rows = ilog.query(limit=n)
        if as_json:
            for r in rows:
                sys.stdout.write(json.dumps(r.to_dict(), default=str) + "\n")
        elif not rows:
            console.print("the inference log is empty (`llmops serve` / `llmops router` write it)")
        else:
            _print_rows([r.to_dict() for r in rows])
        seen = {r.request_id for r in rows}
        since = rows[-1].time if rows else time.time() - 1
        while follow:
            time.sleep(1.0)
            new = [r for r in ilog.query(since=since) if r.request_id not in seen]
            for r in new:
                seen.add(r.request_id)
                since = max(since, r.time)
            if new and as_json:
                for r in new:
                    sys.stdout.write(json.dumps(r.to_dict(), default=str) + "\n")
                sys.stdout.flush()
            elif new:
                _print_rows([r.to_dict() for r in new])


@app.command("show")
@handle_errors
def show(
    request_id: str = typer.Argument(..., help="A request id (the x-request-id of a response)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """One logged request in full, with its feedback."""
    from monitoring.inference_log import UnknownRequest

    with _open() as ilog:
        req = ilog.get(request_id)
    if req is None:
        raise UnknownRequest(f"no logged request with id {request_id!r}",
                             "`llmops log tail` lists recent ids; pruned requests are gone")

    def human(d: dict[str, Any]) -> None:
        from rich.console import Console

        out = Console()
        out.print(f"[bold]{d['request_id']}[/] {_iso(d['time'])} {d['route']} {d['model']}/{d['model_version'] or '-'}"
                  f" status {d['status']}" + (f" side {d['side']}" if d["side"] else ""), highlight=False)
        out.print(f"tokens {d['prompt_tokens']}+{d['completion_tokens']}  latency {d['latency_s']:.3f}s  ttft "
                  f"{d['ttft_s'] if d['ttft_s'] is None else round(d['ttft_s'], 3)}  mean_logprob "
                  f"{d['mean_logprob']}" + (f"  error {d['error']}" if d["error"] else ""), highlight=False)
        out.print("[bold]prompt[/]", d["prompt"], highlight=False)
        out.print("[bold]response[/]", d["response"], highlight=False, markup=False)
        for f in d["feedback"]:
            out.print(f"[bold]feedback[/] {_iso(f['time'])} rating {f['rating']} correction {f['correction']!r} "
                      f"comment {f['comment']!r}", highlight=False)

    emit(req.to_dict(), as_json, human)


@app.command("export")
@handle_errors
def export(
    since: str = typer.Option(..., "--since", help="ISO 8601 time (UTC if no zone) or a duration back (24h, 7d)."),
    until: str | None = typer.Option(None, "--until", help="End of the window (default: now)."),
    dvc: bool = typer.Option(False, "--dvc", help="Write a new dataset into the `feedback` data source folder "
                             "(params.yaml data.sources) and track it with DVC."),
    out: Path | None = typer.Option(None, "--out", help="Write the JSONL here instead (no DVC)."),
    name: str | None = typer.Option(None, "--name", help="Dataset name (default: feedback-<until, UTC>)."),
    no_push: bool = typer.Option(False, "--no-push", help="With --dvc: track it but do not push to the remote."),
    no_docs: bool = typer.Option(False, "--no-docs", help="Skip the Data Docs HTML (faster)."),
    kind: str = typer.Option("sft", "--kind", help="sft: instruction records for the `feedback` source; "
                             "preference: (prompt, chosen, rejected) pairs for DPO in inference_log.preference_dir."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Export REVIEWED feedback (accepted or edited in `llmops review`; pending and rejected never) as a training
    dataset, validated by its GX suite first (invalid: refused, exit 1).

    sft rule (latest accepted feedback per answered request): a correction becomes the answer; else an answer rated 1
    is kept; single-user-turn prompts only; a prompt answered twice keeps the later one. preference: a correction
    gives (chosen = correction, rejected = served answer); answers to one prompt rated 1 and -1 give pairs."""
    from llmops.settings import get_settings
    from llmops.timeparse import parse_time
    from monitoring.inference_log.export import ExportRefused, export_feedback

    settings = get_settings()
    params = settings.params()
    start, end = parse_time(since), (parse_time(until) if until else None)
    try:
        with _open() as ilog, console.status("collecting feedback and validating with Great Expectations..."):
            result = export_feedback(ilog, settings, params, since=start, until=end, dvc=dvc, out=out, name=name,
                                     push=not no_push, data_docs=not no_docs, kind=kind)
    except ExportRefused as exc:
        from cli.data import _print_result

        emit(exc.validation | {"exported": False}, as_json, _print_result)
        console.print(f"[red]refused:[/] {exc.cause}\n[dim]fix: {exc.fix}[/]")
        raise typer.Exit(1) from None
    payload = {"exported": True, **result.__dict__, "since": _iso(result.since), "until": _iso(result.until)}

    def human(d: dict[str, Any]) -> None:
        where = d["path"] + (f" (DVC md5 {d['md5']}" + (", pushed)" if d["pushed"] else ")") if d["dvc_file"] else "")
        what = "preference pairs" if kind == "preference" else "records"
        console.print(f"[green]exported[/] {d['rows']} {what} to {where}", highlight=False)
        if d["skipped"]:
            console.print(f"skipped: {d['skipped']}", highlight=False)
        scrubbed = d["privacy"].get("scrubbed") or {}
        console.print(f"PII scrubbed: {scrubbed or 'none found'}; manifest {d['manifest']}", highlight=False)
        if d["dvc_file"]:
            then = ("a DPO run reads it (inference_log.preference_dir)" if kind == "preference"
                    else "the next data build merges it (data.sources `feedback`)")
            console.print(f"commit {d['dvc_file']} and its manifest to version it; {then}", highlight=False)

    emit(payload, as_json, human)


@app.command("prune")
@handle_errors
def prune(
    max_age_days: float | None = typer.Option(None, "--max-age-days", help="Delete requests older than this "
                                              "(default: params.yaml inference_log.retention_days)."),
    max_rows: int | None = typer.Option(None, "--max-rows", help="Keep at most this many, newest "
                                        "(default: inference_log.max_rows)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Apply the retention policy now (the serving writer also does it every inference_log.prune_interval_s)."""
    with _open() as ilog:
        done = ilog.prune(max_age_days, max_rows)
        done["remaining"] = ilog.count()
    emit(done, as_json, lambda d: console.print(
        f"pruned {d['deleted_by_age']} by age, {d['deleted_by_size']} by size ({d['feedback_deleted']} feedback "
        f"entries); {d['remaining']} requests remain", highlight=False))


@app.command("erase")
@handle_errors
def erase(
    request_id: list[str] = typer.Option([], "--request-id", help="A request id to erase (repeatable)."),
    session: str | None = typer.Option(None, "--session", help="Erase every request of this session."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Erase a person's records: delete the requests (and their feedback and review rows) from the inference log,
    and mark every exported dataset version that holds them (an `erasures` entry in its manifest)."""
    from llmops.settings import get_settings
    from monitoring.inference_log.privacy import erase as erase_records

    settings = get_settings()
    with _open() as ilog:
        done = erase_records(ilog.store, settings, settings.params(), request_id, session)

    def human(d: dict[str, Any]) -> None:
        console.print(f"erased {len(d['deleted'])} request(s) from the inference log", highlight=False)
        for ds in d["datasets"]:
            console.print(f"[yellow]marked[/] {ds['path']} (md5 {ds['md5'] or '-'}): still holds "
                          f"{len(ds['request_ids'])} of them; re-export or delete that version", highlight=False)
        console.print(f"recorded in {d['erasures_log']}", highlight=False)

    emit(done, as_json, human)
