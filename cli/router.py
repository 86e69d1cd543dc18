"""`llmops router --stable URL [--canary URL]`: one OpenAI-compatible endpoint in front of a stable and a canary
model server, with a live weighted split (admin API), sticky sessions, shadow mode and its own /metrics.

Defaults (port, timeouts, pool and buffer sizes) come from params.yaml `router:`. The admin token is
LLMOPS_ROUTER_ADMIN_TOKEN, else `<state_dir>/router/admin-token` (created 0600 on first start). The API key
clients must send comes from the same sources as `llmops serve`'s (LLMOPS_API_KEY_FILE or LLMOPS_API_KEY).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cli._common import JSON_OPTION, console, emit, handle_errors
from cli.serve import LOOPBACK


@handle_errors
def router(
    stable: str = typer.Option(..., "--stable", help="Base URL of the stable model server, e.g. http://127.0.0.1:8000."),
    canary: str = typer.Option(None, "--canary", help="Base URL of the canary model server."),
    canary_percent: int = typer.Option(0, "--canary-percent", min=0, max=100,
                                       help="Share of requests sent to the canary."),
    shadow_percent: int = typer.Option(0, "--shadow-percent", min=0, max=100,
                                       help="Share of stable requests mirrored to the canary, scored, never returned."),
    host: str = typer.Option(None, "--host", help="Bind address (default: params.yaml router.host, 127.0.0.1)."),
    port: int = typer.Option(None, "--port", "-p", help="Port (default: params.yaml router.port)."),
    overrides: list[str] = typer.Option([], "--set", help="Override params, e.g. --set router.read_timeout_s=30."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
    api_key_env: str = typer.Option("LLMOPS_API_KEY", "--api-key-env",
                                    help="Environment variable holding the servers' bearer token; unset = no auth."),
    api_key_file: Path = typer.Option(None, "--api-key-file", envvar="LLMOPS_API_KEY_FILE",
                                      help="File whose first line is the bearer token (wins over --api-key-env)."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not record requests in the inference log (default: on "
                                "unless LLMOPS_INFERENCE_LOG_ENABLED=false); also drops POST /v1/feedback."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Route OpenAI traffic between a stable and a canary model server (weights changeable live)."""
    from llmops.settings import get_settings
    from serving.http.auth import read_api_key
    from serving.http.internal import internal_secret
    from serving.http.limits import run_server
    from serving.router import TOKEN_ENV, admin_token, create_router_app

    settings = get_settings()
    params = settings.params(overrides).router
    host, port = host or params.host, port or params.port
    token = admin_token(settings.state_dir)
    key = read_api_key(api_key_env, api_key_file)  # the servers' key, from the same sources as theirs
    from cli.log_wiring import inference_log_for

    ilog = inference_log_for(settings, overrides, enabled=not no_log)
    app = create_router_app(params, stable=stable, canary=canary, canary_percent=canary_percent,
                            shadow_percent=shadow_percent, token=token, hooks=[ilog.hook] if ilog else [],
                            api_key=key, internal_secret=internal_secret(settings.state_dir),
                            id_exists=ilog.exists_async if ilog else None,
                            collectors=[ilog.metrics] if ilog else [])  # the log's failures and writer health
    if ilog:
        from monitoring.inference_log import add_feedback_route

        add_feedback_route(app.app, ilog, guard=app.state.guard)  # one wrong-key count with the proxy
    source = TOKEN_ENV if os.environ.get(TOKEN_ENV, "").strip() else str(settings.state_dir / "router/admin-token")
    info = {"url": f"http://{host}:{port}", "admin_token_source": source, "auth": key is not None,
            **app.state.snapshot()}
    if host not in LOOPBACK and key is None:
        console.print(f"[bold yellow]warning:[/] binding {host} with no API key: anyone who can reach this port "
                      f"can use the models and send feedback (set {api_key_env} or --api-key-file)")

    def human(payload: dict) -> None:
        canary_txt = f", canary {canary} at {canary_percent}%" if canary else ""
        console.print(f"router on {payload['url']}/v1: stable {stable}{canary_txt}; shadow {shadow_percent}%; "
                      f"admin token from {payload['admin_token_source']}")

    emit(info, as_json, human)
    try:
        # the servers' connection limits (params.yaml serve:): limit_concurrency, keep-alive, header deadline
        limits = settings.params(overrides).serve
        run_server(app, host, port, max_connections=limits.max_connections, header_timeout_s=limits.header_timeout_s,
                   keep_alive_s=limits.keep_alive_timeout_s, log_level=log_level)
    finally:
        if ilog:
            ilog.close()

