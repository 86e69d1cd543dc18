"""`llmops review ...`: the review queue. Feedback lands as pending; only what a reviewer accepts (or edits) can be
exported for training (`llmops log export`). `llmops review` alone serves the web page (= `review serve`); the
same decisions on the command line for scripts: list, accept, edit, reject, audit (all with --json).

Item ids are the feedback entries' ids (`review list`). Exit codes: 0 done, 2 a cause a user can fix (an unknown
id, an item someone else decided meanwhile, a bad filter...).
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

import typer

from cli._common import JSON_OPTION, console, emit, fail, handle_errors

app = typer.Typer(no_args_is_help=False, invoke_without_command=True)

STATUS_OPTION = typer.Option("pending", "--status", help="pending | accepted | rejected | all.")
VERSION_OPTION = typer.Option(None, "--model-version", help="Only items answered by this model version ('-': none).")
RATING_OPTION = typer.Option(None, "--rating", help="Only items rated -1, 0, 1 or none.")
SINCE_OPTION = typer.Option(None, "--since", help="Feedback from this time (ISO 8601 or a duration back: 24h, 7d).")
UNTIL_OPTION = typer.Option(None, "--until", help="Feedback before this time.")
REVIEWER_OPTION = typer.Option(None, "--reviewer", envvar="LLMOPS_REVIEWER",
                               help="Your name in the audit trail (default: the login name).")
REDECIDE_OPTION = typer.Option(False, "--redecide", help="Allow changing an earlier decision (default: pending only).")


def _queue():
    from llmops.settings import get_settings
    from monitoring.inference_log import open_log
    from monitoring.review import ReviewQueue

    ilog = open_log(get_settings(), start_writer=False)
    return ilog, ReviewQueue(ilog.store)


def _reviewer(name: str | None) -> str:
    return (name or getpass.getuser() or "").strip()


def _filters(status: str, model_version: str | None, rating: str | None, since: str | None, until: str | None,
             limit: int = 200) -> Any:
    from llmops.timeparse import parse_time
    from monitoring.review.queue import Filters

    return Filters(status=None if status == "all" else status, model_version=model_version, rating=rating,
                   since=parse_time(since) if since else None, until=parse_time(until) if until else None,
                   limit=limit).check()


def _short(text: Any, n: int = 50) -> str:
    from cli.log import _prompt_text
    from cli.log import _short as short

    return short(_prompt_text(text) if not isinstance(text, str) else text, n)


def _print_items(d: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{d['counts']['pending']} waiting; {d['matching']} match", title_justify="left")
    for col in ("id", "status", "version", "rating", "prompt", "answer", "correction"):
        table.add_column(col, overflow="fold")
    for i in d["items"]:
        correction = i["correction"] if i["status"] == "pending" else i["reviewed_correction"]
        table.add_row(str(i["id"]), i["status"] + (" (edited)" if i["edited"] else ""), i["model_version"] or "-",
                      "" if i["rating"] is None else str(i["rating"]), _short(i["prompt"]), _short(i["response"]),
                      "" if correction is None else _short(correction))
    Console().print(table)


@app.callback()
def main(ctx: typer.Context) -> None:
    """The review queue: accept / edit / reject feedback before it can become training data."""
    if ctx.invoked_subcommand is None:  # `llmops review` alone: serve the page with the defaults
        import os

        key_file = os.environ.get("LLMOPS_API_KEY_FILE")
        serve(host=None, port=None, api_key_env="LLMOPS_API_KEY", api_key_file=Path(key_file) if key_file else None,
              reviewer=os.environ.get("LLMOPS_REVIEWER"))


@app.command("list")
@handle_errors
def list_items(status: str = STATUS_OPTION, model_version: str | None = VERSION_OPTION,
               rating: str | None = RATING_OPTION, since: str | None = SINCE_OPTION,
               until: str | None = UNTIL_OPTION,
               limit: int = typer.Option(200, "--limit", min=1, max=10000, help="At most this many, oldest first."),
               as_json: bool = JSON_OPTION) -> None:
    """Items in the queue (default: pending), oldest feedback first, with the count of what is waiting."""
    ilog, queue = _queue()
    with ilog:
        flt = _filters(status, model_version, rating, since, until, limit)
        payload = {"items": [i.to_dict() for i in queue.items(flt)], "matching": queue.count(flt),
                   "counts": queue.counts()}
    emit(payload, as_json, _print_items)


def _decide_many(action: str, ids: list[int], all_matching: bool, filters: Any, reviewer: str | None,
                 redecide: bool, as_json: bool) -> None:
    from monitoring.review import ReviewError

    if bool(ids) == all_matching:
        fail("name the items", "pass item ids (`llmops review list`), or --all with filters, not both")
    ilog, queue = _queue()
    done, refused = [], []
    with ilog:
        targets = [i.id for i in queue.items(filters)] if all_matching else ids
        for fid in targets:
            try:
                item = queue.decide(fid, action, reviewer=_reviewer(reviewer), via="cli",
                                    expect=None if redecide else ("pending",))
                done.append(item.to_dict())
            except ReviewError as exc:
                refused.append({"id": fid, "error": exc.cause, "fix": exc.fix})
        counts = queue.counts()
    emit({"decided": done, "refused": refused, "counts": counts}, as_json, lambda d: console.print(
        f"{action}ed {len(d['decided'])}" + (f", refused {len(d['refused'])}: {d['refused']}" if d["refused"] else "")
        + f"; {d['counts']['pending']} waiting", highlight=False))
    if refused:
        raise typer.Exit(2)


@app.command("accept")
@handle_errors
def accept(ids: list[int] = typer.Argument(None, help="Item ids."),
           all_matching: bool = typer.Option(False, "--all", help="Every item matching the filters."),
           status: str = STATUS_OPTION, model_version: str | None = VERSION_OPTION,
           rating: str | None = RATING_OPTION, since: str | None = SINCE_OPTION, until: str | None = UNTIL_OPTION,
           reviewer: str | None = REVIEWER_OPTION, redecide: bool = REDECIDE_OPTION,
           as_json: bool = JSON_OPTION) -> None:
    """Accept items as the user sent them: their correction / rating may now be exported for training."""
    _decide_many("accept", ids or [], all_matching, _filters(status, model_version, rating, since, until, 10000),
                 reviewer, redecide, as_json)


@app.command("reject")
@handle_errors
def reject(ids: list[int] = typer.Argument(None, help="Item ids."),
           all_matching: bool = typer.Option(False, "--all", help="Every item matching the filters."),
           status: str = STATUS_OPTION, model_version: str | None = VERSION_OPTION,
           rating: str | None = RATING_OPTION, since: str | None = SINCE_OPTION, until: str | None = UNTIL_OPTION,
           reviewer: str | None = REVIEWER_OPTION, redecide: bool = REDECIDE_OPTION,
           as_json: bool = JSON_OPTION) -> None:
    """Reject items: they never reach a training dataset."""
    _decide_many("reject", ids or [], all_matching, _filters(status, model_version, rating, since, until, 10000),
                 reviewer, redecide, as_json)


@app.command("edit")
@handle_errors
def edit(item_id: int = typer.Argument(..., help="Item id."),
         correction: str | None = typer.Option(None, "--correction", help="The answer to train on instead."),
         correction_file: Path | None = typer.Option(None, "--correction-file", help="Read the correction here."),
         rating: int | None = typer.Option(None, "--rating", help="Replace the rating (-1, 0, 1)."),
         reviewer: str | None = REVIEWER_OPTION, redecide: bool = REDECIDE_OPTION,
         as_json: bool = JSON_OPTION) -> None:
    """Accept an item with your correction (and/or rating) in place of the user's."""
    if correction is not None and correction_file is not None:
        fail("--correction and --correction-file both given", "pass one of them")
    if correction_file is not None:
        correction = correction_file.read_text(encoding="utf-8")
    ilog, queue = _queue()
    with ilog:
        item = queue.decide(item_id, "edit", reviewer=_reviewer(reviewer), via="cli", correction=correction,
                            rating=rating, expect=None if redecide else ("pending",))
    emit(item.to_dict(), as_json, lambda d: console.print(f"edited and accepted item {d['id']}", highlight=False))


@app.command("audit")
@handle_errors
def audit(item_id: int | None = typer.Option(None, "--id", help="Only this item's decisions."),
          limit: int = typer.Option(100, "--limit", min=1, help="The latest this many."),
          as_json: bool = JSON_OPTION) -> None:
    """Every decision, newest first: who, when, how (cli/web, key identity), what changed."""
    ilog, queue = _queue()
    with ilog:
        rows = queue.audit(item_id, limit)

    def human(rows: list[dict[str, Any]]) -> None:
        from cli.log import _iso

        for r in rows:
            console.print(f"{_iso(r['time'])} item {r['feedback_id']} {r['action']} by {r['reviewer']} via {r['via']}"
                          f"{' key ' + r['key_id'] if r['key_id'] else ''}: {r['before']} -> {r['after']}",
                          highlight=False, markup=False)

    emit(rows, as_json, human)


@app.command("serve")
@handle_errors
def serve(host: str | None = typer.Option(None, "--host", help="Bind address (default: params.yaml review.host)."),
          port: int | None = typer.Option(None, "--port", "-p", help="Port (default: params.yaml review.port)."),
          api_key_env: str = typer.Option("LLMOPS_API_KEY", "--api-key-env",
                                          help="Environment variable holding the servers' bearer key."),
          api_key_file: Path | None = typer.Option(None, "--api-key-file", envvar="LLMOPS_API_KEY_FILE",
                                                   help="File whose first line is the key (wins over the env)."),
          reviewer: str | None = REVIEWER_OPTION) -> None:
    """Serve the review page (sign in with the servers' API key; no key: loopback only, no sign-in)."""
    import uvicorn

    from cli.serve import LOOPBACK, read_api_key
    from llmops.settings import get_settings
    from monitoring.review.web import create_app

    settings = get_settings()
    params = settings.params().review
    host, port = host or params.host, port or params.port
    key = read_api_key(api_key_env, api_key_file)
    if host not in LOOPBACK and not key:
        fail(f"refusing to serve the review queue on {host} without an API key (anyone could train your model)",
             f"set {api_key_env} (or --api-key-file), or bind 127.0.0.1")
    ilog, queue = _queue()
    app = create_app(queue, api_key=key, reviewer=_reviewer(reviewer), session_hours=params.session_hours,
                     loopback=host in LOOPBACK, review=params)
    console.print(f"review queue on http://{host}:{port}/ ({queue.counts()['pending']} waiting; "
                  + ("sign in with the API key)" if key else "no API key: no sign-in, loopback only)"), highlight=False)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        ilog.close()
