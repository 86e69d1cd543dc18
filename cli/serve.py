"""`llmops serve MODEL`: an OpenAI-compatible server over a registered version or a local checkpoint.

MODEL is `NAME@ALIAS` (e.g. llmops-smollm2@champion), `NAME/VERSION`, `NAME` (latest) or a local directory: a
checkpoint, or a registered version's MLflow model as downloaded (KServe's /mnt/models).
The version is pinned at start; limits and defaults come from params.yaml `serve:` (override with --set).
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli._common import console, handle_errors

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def read_api_key(env_name: str, key_file: Path | None) -> str | None:
    """The bearer token: from the key file when given (first line), else LLMOPS_API_KEY_FILE, else the named
    environment variable; stripped; set-but-empty is an error (serving.http.auth, shared with the router)."""
    from serving.http.auth import read_api_key as read

    return read(env_name, key_file)


@handle_errors
def serve(
    model: str = typer.Argument(..., help="NAME@ALIAS, NAME/VERSION, NAME or a local checkpoint directory."),
    engine: str = typer.Option(None, "--engine", "-e", help="auto | eager | a built engine (default: params.yaml)."),
    host: str = typer.Option(None, "--host", help="Bind address (default: params.yaml serve.host, 127.0.0.1)."),
    port: int = typer.Option(None, "--port", "-p", help="Port (default: params.yaml serve.port)."),
    api_key_env: str = typer.Option("LLMOPS_API_KEY", "--api-key-env",
                                    help="Environment variable holding the bearer token; unset = no auth."),
    api_key_file: Path = typer.Option(None, "--api-key-file", envvar="LLMOPS_API_KEY_FILE",
                                      help="File whose first line is the bearer token (wins over --api-key-env)."),
    max_slots: int = typer.Option(None, "--max-slots", min=1,
                                  help="Sequences decoded together (default: params.yaml serve.max_concurrent)."),
    model_version: str = typer.Option(None, "--model-version", envvar="LLMOPS_MODEL_VERSION",
                                      help="NAME/VERSION a local MODEL directory is (labels /v1/models, metrics and "
                                      "the inference log); KServe's canary actuator sets LLMOPS_MODEL_VERSION."),
    overrides: list[str] = typer.Option([], "--set", help="Override params, e.g. --set serve.max_concurrent=16."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not record requests in the inference log (default: "
                                "on unless LLMOPS_INFERENCE_LOG_ENABLED=false); also drops POST /v1/feedback."),
) -> None:
    """Serve MODEL over the OpenAI API (chat, completions, responses, models) with continuous batching."""
    from llmops.settings import get_settings
    from serving.engines import load_engine
    from serving.model_source import resolve_model
    from serving.server import build_app
    from serving.server import serve as serve_app

    settings = get_settings()
    if max_slots is not None:
        overrides = [*overrides, f"serve.max_concurrent={max_slots}"]
    params = settings.params(overrides).serve
    host = host or params.host
    port = port or params.port
    key = read_api_key(api_key_env, api_key_file)
    resolved = resolve_model(settings, model, model_version=model_version)
    console.print(f"loading {resolved.label} from {resolved.model_dir} ...")
    eng = load_engine(engine or params.engine, resolved.model_dir, params)
    info = eng.info()
    from cli.log_wiring import inference_log_for

    ilog = inference_log_for(settings, overrides, enabled=not no_log)
    from serving.http.internal import internal_secret

    app = build_app(eng, resolved, params, api_key=key, hooks=[ilog.hook] if ilog else [],
                    internal_secret=internal_secret(settings.state_dir),  # the router's, to verify its shadows
                    collectors=[ilog.metrics] if ilog else [])  # the log's failures and writer health
    if ilog:
        from monitoring.inference_log import add_feedback_route

        add_feedback_route(app, ilog)  # auth: the server's middleware guards every /v1 path
    auth = "bearer token required on /v1" if key else "no auth"
    if host not in LOOPBACK and not key:
        console.print(f"[bold yellow]warning:[/] binding {host} without an API key: anyone who can reach this "
                      f"port can use the model (set {api_key_env})")
    which = info.get("engine") or info.get("name") or info.get("kind")  # the built engine, e.g. onnxruntime-int8-…
    console.print(f"serving {resolved.label} with engine {which} on http://{host}:{port}/v1 ({auth}); "
                  f"/ready turns 200 after warmup")
    if (selection := getattr(eng, "selection", None)) is not None:  # which engine and why (also on /ready)
        console.print(f"engine choice: {selection.reason}")
    try:
        serve_app(app, params, host, port, log_level=log_level)  # with connection limits (slowloris-safe)
    finally:
        if ilog:
            ilog.close()
