"""The router's ASGI app: the proxy handler (proxy.py) in front of a FastAPI app for admin, health and metrics.

`create_router_app` builds the state, the pooled aiohttp client (measured faster than httpx2 here:
benchmarks/router_overhead.py) and the routes. Admin routes need the admin token; the proxied routes need the
servers' API key when one is configured (`api_key`, read by the CLI from the same sources as `llmops serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client.registry import Collector

from llmops.errors import LlmopsError
from llmops.params import RouterParams
from serving.http.auth import bearer_token, token_matches
from serving.http.errors import error_body
from serving.http.health import Health, health_response
from serving.records import RequestHook
from serving.router.proxy import Proxy
from serving.router.state import IdExists, RouterConfig, RouterState

log = logging.getLogger("llmops.router")


def _lifespan(state: RouterState) -> Any:
    params = state.params

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=params.max_connections, ttl_dns_cache=300, keepalive_timeout=30)
        state.session = aiohttp.ClientSession(
            connector=connector, read_bufsize=params.read_bufsize, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=params.connect_timeout_s,
                                          sock_read=params.read_timeout_s))
        for b in (state.stable, state.canary):
            if b is not None:
                state.spawn(state.refresh_version(b))
        yield
        for task in list(state.background):
            task.cancel()
        await state.session.close()

    return lifespan


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (ValueError, RecursionError):
        raise HTTPException(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return data


def _add_probes(app: FastAPI, state: RouterState) -> None:
    params = state.params

    @app.get("/health")
    async def health() -> JSONResponse:
        h = Health()
        if state.session is None or state.session.closed:
            h.fail("upstream_client", "the pooled upstream client is not open")
        return health_response(h)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        assert state.session is not None
        try:
            async with state.session.get(f"{state.stable.url}/ready",
                                         timeout=aiohttp.ClientTimeout(total=params.connect_timeout_s + 3)) as r:
                ok = r.status == 200
                cause = None if ok else f"stable backend /ready answered {r.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, cause = False, f"stable backend {state.stable.url} is unreachable: {type(exc).__name__}"
        body = {"ready": ok, **state.snapshot()}
        if cause:
            body["error"] = cause
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")


def _add_admin(app: FastAPI, state: RouterState) -> None:
    def require_admin(request: Request) -> None:
        token = bearer_token(request.headers.get("authorization"))
        if not token:
            raise HTTPException(401, "admin routes need Authorization: Bearer <admin token> (LLMOPS_ROUTER_ADMIN_"
                                "TOKEN or <state_dir>/router/admin-token)", headers={"WWW-Authenticate": "Bearer"})
        if not token_matches(token, state.token):
            raise HTTPException(403, "wrong admin token")

    admin = [Depends(require_admin)]

    @app.get("/admin/state", dependencies=admin)
    async def get_state() -> dict[str, Any]:
        return state.snapshot()

    @app.put("/admin/weight", dependencies=admin)
    async def put_weight(request: Request) -> dict[str, Any]:
        data = await _json_object(request)
        try:
            state.set_weight(data.get("canary_percent"))  # type: ignore[arg-type]
            if "shadow_percent" in data:
                state.split.set_shadow_percent(data["shadow_percent"])
                state.gauges()
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        log.info("canary weight -> %d%%", state.split.canary_percent)
        return state.snapshot()

    @app.put("/admin/backends", dependencies=admin)
    async def put_backends(request: Request) -> dict[str, Any]:
        data = await _json_object(request)
        try:
            state.set_backends(data.get("stable"), data.get("canary"), data.get("canary_percent", 0),  # type: ignore
                               data.get("shadow_percent"))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        await asyncio.gather(*(state.refresh_version(b) for b in (state.stable, state.canary)
                               if b is not None and b.model_version is None))
        log.info("backends -> %s", state.snapshot())
        return state.snapshot()

    @app.get("/admin/window", dependencies=admin)
    async def window(since: float, until: float | None = None) -> dict[str, Any]:
        return state.window.stats(since, time.time() + 1 if until is None else until)


def create_router_app(params: RouterParams, *, stable: str, canary: str | None = None, canary_percent: int = 0,
                      shadow_percent: int = 0, token: str, hooks: list[RequestHook] | None = None,
                      seed: int | None = None, api_key: str | None = None, internal_secret: bytes = b"",
                      id_exists: IdExists | None = None, collectors: Sequence[Collector] = ()) -> Proxy:
    """The router as an ASGI app. `api_key`: the bearer key clients must send (None: auth off);
    `internal_secret`: signs internal headers and keys the session hash; `id_exists`: whether a request id is
    already logged (a client's reused id is then refused with 409); `collectors`: more series for /metrics."""
    config = RouterConfig(token, api_key, internal_secret, tuple(hooks or ()), id_exists, seed, tuple(collectors))
    try:
        state = RouterState(params, stable, canary, canary_percent, shadow_percent, config)
    except ValueError as exc:
        raise LlmopsError(str(exc), "see `llmops router --help`") from None
    app = FastAPI(title="llmops router", version="1", lifespan=_lifespan(state), docs_url=None, redoc_url=None)
    app.state.router = state
    _add_probes(app, state)
    _add_admin(app, state)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)

    return Proxy(app, state)
