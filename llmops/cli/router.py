"""`llmops router --stable URL [--canary URL]`: one OpenAI-compatible endpoint in front of a stable and a canary
model server, with a live weighted split (admin API), sticky sessions, shadow mode and its own /metrics.

Defaults (port, timeouts, pool and buffer sizes) come from params.yaml `router:`. The admin token is
LLMOPS_ROUTER_ADMIN_TOKEN, else `<state_dir>/router/admin-token` (created 0600 on first start).
"""

from __future__ import annotations

import os

import typer

from llmops.cli._common import JSON_OPTION, console, emit, handle_errors
from llmops.cli.serve import LOOPBACK


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
    no_log: bool = typer.Option(False, "--no-log", help="Do not record requests in the inference log (default: on "
                                "unless LLMOPS_INFERENCE_LOG_ENABLED=false); also drops POST /v1/feedback."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Route OpenAI traffic between a stable and a canary model server (weights changeable live)."""
    import uvicorn

    from llmops.settings import get_settings
    from serving.router import TOKEN_ENV, admin_token, create_router_app

    settings = get_settings()
    params = settings.params(overrides).router
    host, port = host or params.host, port or params.port
    token = admin_token(settings.state_dir)
    from monitoring.inference_log.wiring import inference_log_for

    ilog = inference_log_for(settings, overrides, enabled=not no_log)
    app = create_router_app(params, stable=stable, canary=canary, canary_percent=canary_percent,
                            shadow_percent=shadow_percent, token=token, hooks=[ilog.hook] if ilog else [])
    if ilog:
        from llmops.cli.serve import read_api_key
        from monitoring.inference_log import add_feedback_route

        # proxied routes are authorised by the model servers; feedback is answered here, with their key
        add_feedback_route(app.app, ilog, api_key=read_api_key("LLMOPS_API_KEY", None))
    source = TOKEN_ENV if os.environ.get(TOKEN_ENV, "").strip() else str(settings.state_dir / "router/admin-token")
    info = {"url": f"http://{host}:{port}", "admin_token_source": source, **app.state.snapshot()}
    if host not in LOOPBACK:
        console.print(f"[bold yellow]warning:[/] binding {host}: the proxied /v1 routes pass the client's "
                      f"Authorization through to the model servers, so protect those with an API key")

    def human(payload: dict) -> None:
        canary_txt = f", canary {canary} at {canary_percent}%" if canary else ""
        console.print(f"router on {payload['url']}/v1: stable {stable}{canary_txt}; shadow {shadow_percent}%; "
                      f"admin token from {payload['admin_token_source']}")

    emit(info, as_json, human)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        if ilog:
            ilog.close()

