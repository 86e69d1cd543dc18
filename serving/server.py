"""The OpenAI-compatible HTTP server (FastAPI + uvicorn): the app, its middleware, health, readiness and
metrics. Generation lives in the generation service (serving.generation) and the OpenAI wire formats in
serving/openai/ (one module per endpoint); shared HTTP pieces (auth, request ids, health, connection limits)
in serving/http/. It knows no engine internals.

Safety: binds 127.0.0.1 by default; with an API key every /v1 route needs `Authorization: Bearer <key>`
(/health, /ready, /metrics stay open); bodies over the limit are 413; bad input is a 4xx with one line;
a fault inside one request is a 500 for that request only. Every response carries `x-request-id`.
After each generation request the server calls its hooks with a `RequestRecord` (serving/records.py; the
inference log plugs in there) and awaits awaitable ones before the response completes.
`/health` fails (503) when the scheduler thread died, slots leaked or an iteration hangs; `/ready` fails
until warm-up succeeded and while the engine is failing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client.registry import Collector

from llmops.params import ServeParams
from serving.api import ApiError
from serving.engines.base import Engine
from serving.generation import GenerationService
from serving.http import AUTH_HEADERS, Health, health_response, ready_response, request_id_from
from serving.http.auth import TOO_MANY, UNAUTHORIZED, KeyGuard, Verdict, peer_address
from serving.http.errors import client_caused
from serving.http.limits import run_server
from serving.metrics import Metrics
from serving.model_source import ResolvedModel
from serving.openai import ROUTES as OPENAI_ROUTES
from serving.openai import add_openai_routes
from serving.records import RequestHook

log = logging.getLogger("llmops.serving")

ROUTES = (*OPENAI_ROUTES, "/health", "/ready", "/metrics")


class ServerState:
    """What the routes share: the model, the generation service, metrics and the API key."""

    def __init__(self, engine: Engine, model: ResolvedModel, params: ServeParams, api_key: str | None,
                 hooks: list[RequestHook], internal_secret: bytes | None = None) -> None:
        self.engine, self.model, self.params, self.api_key = engine, model, params, api_key
        self.guard = KeyGuard(api_key, params.auth_failures, params.auth_window_s)
        self.internal_secret = internal_secret  # verifies the router's signed markers (serving.http.internal)
        self.metrics = Metrics()
        self.service = GenerationService(engine, model, params, self.metrics, hooks)
        self.created = int(time.time())

    @property
    def ready(self) -> threading.Event:
        return self.service.ready

    def health(self) -> Health:
        health = Health()
        for check, reason in self.service.scheduler.health().items():
            health.fail(check, reason)
        return health


def _auth_error(verdict: Verdict) -> ApiError:
    if verdict.retry_after:
        return ApiError(429, TOO_MANY.format(wait=verdict.retry_after), code="rate_limit_exceeded",
                        headers={"Retry-After": str(verdict.retry_after)})
    return ApiError(401, UNAUTHORIZED, code="invalid_api_key", headers=AUTH_HEADERS)


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class _Context:
    """Pure ASGI middleware (streams stay unbuffered, disconnects reach the route): request id, auth on
    /v1, request metrics, and a JSON 500 for an unexpected fault without taking the server down."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(next((v.decode("latin-1") for k, v in scope.get("headers", [])
                                    if k.lower() == b"x-request-id"), None))
        scope.setdefault("state", {})["request_id"] = rid
        path = scope.get("path", "")
        t0, status, started = time.perf_counter(), 500, False

        async def send_with_id(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            verdict = self.state.guard.check(scope.get("headers", []), peer_address(scope)) if path.startswith(
                "/v1") else None
            if verdict is not None and not verdict.ok:
                self.state.metrics.rejected.labels(reason="auth_limited" if verdict.retry_after else
                                                   "unauthorized").inc()
                await _error_response(_auth_error(verdict))(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.exception("unhandled fault on %s", path)
            if not started:
                err = ApiError(500, f"internal server error: {type(exc).__name__}", code="internal_error")
                await _error_response(err)(scope, receive, send_with_id)
        finally:
            label, route = self.state.model.label, path if path in ROUTES else "other"
            self.state.metrics.requests.labels(route=route, status=str(status), model=label).inc()
            if not client_caused(status):  # a client's 4xx is fast and says nothing of this server's latency
                self.state.metrics.latency.labels(route=route, model=label).observe(time.perf_counter() - t0)


def _add_probes(app: FastAPI, state: ServerState) -> None:
    """Liveness (/health), readiness (/ready) and Prometheus metrics (/metrics); all open, no auth."""

    @app.get("/health")
    async def health() -> JSONResponse:
        return health_response(state.health())

    @app.get("/ready")
    async def ready() -> JSONResponse:
        service, scheduler = state.service, state.service.scheduler
        health = state.health()
        body: dict[str, Any] = {"model": state.model.name, "version": state.model.version,
                                "engine": state.engine.info(), "scheduler": scheduler.snapshot()}
        problem = service.warmup_error or scheduler.fault or next(iter(health.problems.values()), None)
        if problem:
            body["error"] = problem
        return ready_response(service.ready.is_set() and not scheduler.fault and not health.problems, body)

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")


def build_app(engine: Engine, model: ResolvedModel, params: ServeParams, *, api_key: str | None = None,
              hooks: list[RequestHook] | None = None, internal_secret: bytes | None = None,
              collectors: Sequence[Collector] = ()) -> FastAPI:
    """The app over a loaded engine; the engine warms up and the scheduler thread starts in its lifespan.
    `internal_secret`: the deployment's secret shared with the router, so a request is treated as the router's
    shadow copy only with its signed marker (without one, every request is logged). `collectors`: more Prometheus
    series for /metrics (a hook's own, e.g. the inference log's writer health)."""
    state = ServerState(engine, model, params, api_key, list(hooks or []), internal_secret)
    for collector in collectors:
        state.metrics.registry.register(collector)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=state.service.start, name="llmops-warmup", daemon=True).start()
        yield
        state.service.close()
        engine.close()

    app = FastAPI(title="llmops model server", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.llmops = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    _add_probes(app, state)
    add_openai_routes(app)
    app.add_middleware(_Context, state=state)
    return app


def serve(app: FastAPI, params: ServeParams, host: str, port: int, log_level: str = "info") -> None:
    """Run `app` under uvicorn with the connection limits of params.yaml `serve:` (slowloris-safe)."""
    run_server(app, host, port, max_connections=params.max_connections, header_timeout_s=params.header_timeout_s,
               keep_alive_s=params.keep_alive_timeout_s, log_level=log_level)
