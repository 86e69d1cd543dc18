"""`llmops canary ...`: metric-gated canary rollouts of a registered version against the champion.

`start` runs the rollout in the foreground (live progress line per analysis interval) against a running
`llmops router` whose stable side serves the champion; the candidate's server is given with `--canary-url`
(or is already the router's canary). The steps and thresholds come from params.yaml `canary:`.
`status`, `history`, `abort`, `promote` and `resume` work from any shell, including after the controller died.
Exit codes: 0 promoted (or the command did what it says), 1 the rollout ended without promotion, 2 an error.
"""

from __future__ import annotations

import time
from typing import Any

import typer

from cli._common import JSON_OPTION, console, emit, handle_errors

app = typer.Typer(no_args_is_help=True)

SETS_OPTION = typer.Option([], "--set", help="Override params, e.g. --set canary.interval_s=5.")


def _settings():
    from llmops.settings import get_settings

    return get_settings()


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def progress_line(event: dict[str, Any]) -> str:
    """One line per analysis: step, weight, requests seen per side, each metric vs its threshold."""
    if event.get("kind") == "done":
        return f"[bold]{event['status']}[/]: {event.get('reason', '')}"
    a = event["analysis"]
    marks = {"pass": "[green]ok[/]", "fail": "[red]FAIL[/]", "inconclusive": "[yellow]?[/]", "no_data": "n/a"}
    metrics = "  ".join(f"{m['name']} {_fmt(m['value'])}/{_fmt(m['threshold'])} {marks[m['verdict']]}"
                        for m in a["metrics"])
    return (f"step {event['step']}/{event['steps']} {event['weight']:>3}%  {event['elapsed_s']:5.0f}s/"
            f"{event['min_duration_s']:g}s  requests stable {a['stable']['requests']} canary "
            f"{a['canary']['requests']} (min {a['min_requests']})  {metrics}  -> {a['verdict']}")


def _printer(as_json: bool):
    return (lambda _e: None) if as_json else (lambda e: console.print(progress_line(e), highlight=False))


def _finish(outcome, as_json: bool) -> None:
    def human(o: dict[str, Any]) -> None:
        colour = "green" if o["status"] == "promoted" else "red"
        console.print(f"[bold {colour}]{o['status']}[/] {o['model']}/{o['version']} (rollout {o['rollout_id']}, "
                      f"stable was {o['stable_version']}): {o['reason']}")
        if o.get("load"):
            console.print(f"load generator: {o['load']}")

    emit(outcome.to_json(), as_json, human)
    if outcome.status != "promoted":
        raise typer.Exit(1)


@app.command("start")
@handle_errors
def start(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="Candidate version (the champion is the stable side)."),
    steps: str = typer.Option(None, "--steps", help="Canary weights in %, e.g. 10,25,50,100 (default: params.yaml)."),
    router: str = typer.Option(None, "--router", help="Router base URL (default: params.yaml router.host:port)."),
    canary_url: str = typer.Option(None, "--canary-url",
                                   help="Base URL of the candidate's server (`llmops serve NAME/VERSION`); default: "
                                   "the router's current canary."),
    no_load: bool = typer.Option(False, "--no-load", help="No load generator: decide on live traffic only."),
    overrides: list[str] = SETS_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Roll NAME/VERSION out step by step; promote it to champion or roll it back on the numbers."""
    import httpx2 as httpx

    from llmops.errors import LlmopsError
    from llmops.registry import normalize_version
    from serving.rollout.actuators.local import LocalRouterActuator, read_admin_token
    from serving.rollout.config import parse_weights
    from serving.rollout.controller import start_rollout

    settings = _settings()
    params = settings.params(overrides)
    router = (router or f"http://{params.router.host}:{params.router.port}").rstrip("/")
    actuator = LocalRouterActuator(router, read_admin_token(settings.state_dir))
    state = actuator.state()
    canary_url = (canary_url or (state.get("canary") or {}).get("url") or "").rstrip("/")
    if not canary_url:
        raise LlmopsError(f"router {router} has no canary and no --canary-url was given",
                          f"start the candidate: `llmops serve {name}/{version} --port 8001`, then pass "
                          "--canary-url http://127.0.0.1:8001")
    try:
        served = httpx.get(f"{canary_url}/v1/models", timeout=10).json()["data"][0]
    except Exception as exc:
        raise LlmopsError(f"cannot read {canary_url}/v1/models: {exc}", "check that the candidate's server runs") \
            from None
    if str(served.get("version")) != normalize_version(version) or served.get("id") != name:
        raise LlmopsError(f"{canary_url} serves {served.get('id')}/{served.get('version')}, not {name}/{version}",
                          f"serve the candidate there: `llmops serve {name}/{version}`")
    actuator.canary_url = canary_url
    if no_load:
        params = settings.params([*overrides, "canary.loadgen.rate=0"])
    outcome = start_rollout(settings, name, version, actuator, traffic_url=router, actuator_spec=actuator.spec(),
                            params=params, weights=parse_weights(steps) if steps else None,
                            prepare=lambda: actuator.attach_canary(canary_url), progress=_printer(as_json))
    _finish(outcome, as_json)


def _status_human(d: dict[str, Any]) -> None:
    alive = d.get("controller_alive")
    ctl = "" if d["status"] not in ("running", "promoting", "aborting") else (
        f"  controller pid {d['owner_pid']} on {d['owner_host']}: " + ("[green]alive[/]" if alive else
                                                                        "[red]gone[/] (resume or abort)"))
    step = d["step_index"] + 1
    console.print(f"rollout {d['id']} {d['model']}/{d['version']} vs {d['stable_version']}: [bold]{d['status']}[/] "
                  f"step {max(step, 0)}/{len(d['steps'])} weight {d['weight']}%{ctl}", highlight=False)
    if d.get("reason"):
        console.print(f"  reason: {d['reason']}", highlight=False)
    for e in d["decisions"][-8:]:
        when = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        console.print(f"  {when} step {e['step_index'] + 1} {e['weight']:>3}% {e['kind']:<9} {e['verdict'] or '':<12} "
                      f"{e['message']}", highlight=False)


@app.command("status")
@handle_errors
def status(
    name: str = typer.Argument(..., help="Registered model name."),
    rollout_id: int = typer.Option(None, "--id", help="A specific rollout (default: the active, else the latest)."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh every 2 s until the rollout ends."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Where the model's rollout stands: status, step, weight, controller alive or gone, latest decisions."""
    from serving.rollout.controller import rollout_status

    settings = _settings()
    while True:
        d = rollout_status(settings, name, rollout_id)
        emit(d, as_json, _status_human)
        if not watch or d["status"] not in ("running", "promoting", "aborting"):
            return
        time.sleep(2)


@app.command("abort")
@handle_errors
def abort(
    name: str = typer.Argument(..., help="Registered model name."),
    reason: str = typer.Option("aborted by hand", "--reason", "-r", help="Why (recorded)."),
    force: bool = typer.Option(False, "--force", help="End the rollout in the state even if the router cannot be "
                               "reached (then set its canary weight to 0 by hand)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Stop the model's active rollout now: canary weight 0, champion untouched (works after a controller died)."""
    from serving.rollout.controller import abort_rollout

    outcome = abort_rollout(_settings(), name, reason=reason, force=force)
    emit(outcome.to_json(), as_json, lambda o: console.print(f"rollout {o['rollout_id']}: {o['status']} "
                                                             f"({o['reason']})", highlight=False))


@app.command("promote")
@handle_errors
def promote(
    name: str = typer.Argument(..., help="Registered model name."),
    reason: str = typer.Option(..., "--reason", "-r", help="Why the remaining steps are skipped (audited)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Skip the remaining steps: champion -> the candidate (audited), the canary becomes the stable side."""
    from serving.rollout.controller import promote_rollout

    _finish(promote_rollout(_settings(), name, reason=reason), as_json)


@app.command("resume")
@handle_errors
def resume(
    name: str = typer.Argument(..., help="Registered model name."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Continue a rollout whose controller died, from its last recorded step."""
    from serving.rollout.controller import resume_rollout

    _finish(resume_rollout(_settings(), name, progress=_printer(as_json)), as_json)


@app.command("history")
@handle_errors
def history(
    name: str = typer.Argument(None, help="Registered model name (default: every model)."),
    limit: int = typer.Option(20, "--limit", "-n", help="Newest N rollouts."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Past and active rollouts, newest first: candidate, stable version, outcome, reason."""
    from serving.rollout.controller import rollout_history

    rows = rollout_history(_settings(), name, limit)

    def human(rs: list[dict[str, Any]]) -> None:
        if not rs:
            console.print("no rollouts yet")
        for r in rs:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["started"]))
            console.print(f"{r['id']:>4} {when} {r['model']}/{r['version']} vs {r['stable_version']}  "
                          f"{r['status']:<12} step {max(r['step_index'] + 1, 0)} {r['weight']}%  {r['reason']}",
                          highlight=False)

    emit(rows, as_json, human)
