"""`llmops schedule ...`: retraining (and monitoring) on a schedule.

Cluster profile: a KFP recurring run of the retrain pipeline (`--host` / LLMOPS_KFP_HOST).
Local: a durable APScheduler job store in the state dir, run by `llmops schedule daemon`.

    llmops schedule retrain --cron "0 3 * * 1"     # Mondays 03:00
    llmops schedule monitor --cron "*/15 * * * *"  # `llmops monitor run` every 15 min (which may trigger retrain)
    llmops schedule list | pause ID | resume ID | delete ID
    llmops schedule daemon                          # runs the local schedules (keep it running: systemd, tmux)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import typer

from cli._common import JSON_OPTION, console, emit, handle_errors, profile_settings
from llmops.errors import LlmopsError

app = typer.Typer(no_args_is_help=True)

PROFILE = typer.Option(None, "--profile", help="local (APScheduler store, default) or cluster (KFP recurring run).")
HOST = typer.Option(None, "--host", help="KFP API server URL for the cluster profile (overrides LLMOPS_KFP_HOST).")


def _host(settings: Any) -> str:
    if not settings.kfp_host:
        raise LlmopsError("the cluster profile needs a KFP host",
                          "pass --host https://<kfp-api> or set LLMOPS_KFP_HOST")
    return settings.kfp_host.rstrip("/")


def _print_one(d: dict) -> None:
    where = d.get("url") or f"next run {d.get('next_run') or '-'}"
    state = " (paused)" if d.get("paused") else ""
    console.print(f"[green]{d['id']}[/] {d.get('name') or ''}{state}: {where}")


@app.command("retrain")
@handle_errors
def retrain(
    cron: str = typer.Option(..., "--cron", help="5 fields (minute hour day month weekday) or 6 with seconds first."),
    name: str = typer.Option(None, "--name", help="A name for the schedule."),
    overrides: list[str] = typer.Option([], "--set", help="Params overrides every scheduled run gets."),
    profile: str = PROFILE,
    host: str = HOST,
    as_json: bool = JSON_OPTION,
) -> None:
    """Retrain on a schedule: a KFP recurring run (cluster) or a local durable schedule of `llmops run retrain`."""
    from monitoring import schedules
    from monitoring.triggers import resolve_command

    settings = profile_settings(profile, host)
    params = settings.params(overrides)
    if settings.profile == "cluster":
        h = _host(settings)
        schedules.parse_cron(cron)
        from pipelines.retrain import PIPELINE_NAME
        from pipelines.runner import compile_pipeline

        with tempfile.TemporaryDirectory() as tmp:
            package = compile_pipeline("retrain", Path(tmp) / "retrain.cluster.yaml", cluster=params.cluster)
            arguments = {"overrides": list(overrides), "reason": f"schedule {name or cron}"}
            out = schedules.create_cluster(h, package, PIPELINE_NAME, cron, arguments, name)
    else:
        command = resolve_command(["llmops", "run", "retrain", "--reason", f"schedule {name or cron}"])
        command += [a for o in overrides for a in ("--set", o)]
        out = schedules.create_local(settings.state_dir, "retrain", cron, command, settings.project_dir, name,
                                     url=settings.schedules_db_uri)
    emit(out, as_json, _print_one)


@app.command("monitor")
@handle_errors
def monitor(
    cron: str = typer.Option(..., "--cron", help="5 fields (minute hour day month weekday) or 6 with seconds first."),
    name: str = typer.Option(None, "--name", help="A name for the schedule."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run `llmops monitor run` on a local schedule (a drift verdict there starts retraining)."""
    from llmops.settings import get_settings
    from monitoring import schedules
    from monitoring.triggers import resolve_command

    settings = get_settings()
    out = schedules.create_local(settings.state_dir, "monitor", cron, resolve_command(["llmops", "monitor", "run"]),
                                 settings.project_dir, name, url=settings.schedules_db_uri)
    emit(out, as_json, _print_one)


@app.command("list")
@handle_errors
def list_cmd(profile: str = PROFILE, host: str = HOST, as_json: bool = JSON_OPTION) -> None:
    """Schedules with their next and last run."""
    from monitoring import schedules

    settings = profile_settings(profile, host)
    rows = (schedules.list_cluster(_host(settings)) if settings.profile == "cluster"
            else schedules.list_local(settings.state_dir, url=settings.schedules_db_uri))

    def human(rows: list) -> None:
        if not rows:
            console.print("no schedules")
        for r in rows:
            _print_one(r)
            if last := r.get("last_run"):
                console.print(f"    last run exit {last['exit_code']} ({last['log_path']})")

    emit(rows, as_json, human)


def _change(action: str, schedule_id: str, profile: str | None, host: str | None, as_json: bool) -> None:
    from monitoring import schedules

    settings = profile_settings(profile, host)
    if settings.profile == "cluster":
        out = schedules.set_cluster(_host(settings), schedule_id, action)
    else:
        fn = {"pause": schedules.pause_local, "resume": schedules.resume_local, "delete": schedules.delete_local}
        out = fn[action](settings.state_dir, schedule_id, url=settings.schedules_db_uri)
    emit(out, as_json, lambda d: console.print(f"{action}d {d['id']}"))


@app.command("pause")
@handle_errors
def pause(schedule_id: str = typer.Argument(..., help="Schedule id (`llmops schedule list`)."),
          profile: str = PROFILE, host: str = HOST, as_json: bool = JSON_OPTION) -> None:
    """Pause a schedule (it keeps its definition; `resume` restarts it from the next matching time)."""
    _change("pause", schedule_id, profile, host, as_json)


@app.command("resume")
@handle_errors
def resume(schedule_id: str = typer.Argument(..., help="Schedule id (`llmops schedule list`)."),
           profile: str = PROFILE, host: str = HOST, as_json: bool = JSON_OPTION) -> None:
    """Resume a paused schedule."""
    _change("resume", schedule_id, profile, host, as_json)


@app.command("delete")
@handle_errors
def delete(schedule_id: str = typer.Argument(..., help="Schedule id (`llmops schedule list`)."),
           profile: str = PROFILE, host: str = HOST, as_json: bool = JSON_OPTION) -> None:
    """Delete a schedule."""
    _change("delete", schedule_id, profile, host, as_json)


@app.command("daemon")
@handle_errors
def daemon(wake_s: float = typer.Option(5.0, "--wake-s", min=0.5, help="How often to re-read the store for "
                                        "schedules changed by other processes.")) -> None:
    """Run the local schedules until stopped (SIGTERM / Ctrl-C)."""
    from llmops.settings import get_settings
    from monitoring.schedules import run_daemon

    settings = get_settings()
    run_daemon(settings.state_dir, wake_s, url=settings.schedules_db_uri)
