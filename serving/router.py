"""The traffic router: one OpenAI-compatible endpoint in front of a stable and an optional canary model server.

Proxied routes (`/v1/chat/completions`, `/v1/completions`, `/v1/responses`, `GET /v1/models`) are handled by a
plain ASGI handler ahead of FastAPI (the hot path pays no routing or validation layer), over one pooled aiohttp
client (measured faster than httpx2 here: benchmarks/router_overhead.py). Status codes and bodies pass through;
streams are forwarded event by event as they arrive. Each request gets a side from `Split` (exact weights,
sticky `x-llmops-session`), an `x-request-id` (propagated or generated), and answers with `x-llmops-side` and
`x-llmops-model-version`. A weight or backend change is live: a request holds the backend it was sent to.

Every proxied request becomes a `RequestRecord` for the hooks (awaited before the body / before the stream's
last event, contract C1) and an observation for `/admin/window` (contract C2). A backend that is down or
silent is a 502/504 with a one-line cause, never a hang. Shadow mode mirrors a share of stable requests to the
canary in the background and scores its answer against the stable one (ROUGE-L); it is never returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from llmops.errors import LlmopsError
from llmops.params import RouterParams
from serving.api import ApiError
from serving.records import RequestHook, RequestRecord, run_hooks
from serving.router_metrics import Observation, RouterMetrics, Window
from serving.router_split import CANARY, STABLE, Split, check_percent
from serving.router_stream import StreamParser, answer_text, usage_of

log = logging.getLogger("llmops.router")

PROXY_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
TOKEN_ENV = "LLMOPS_ROUTER_ADMIN_TOKEN"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Not forwarded either way: hop-by-hop headers, and the ones the router sets itself.
_DROP_REQUEST = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
                 "upgrade", "proxy-connection", "proxy-authorization", "x-request-id", "accept-encoding"}
_DROP_RESPONSE = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}


def admin_token(state_dir: Path) -> str:
    """The admin bearer token: LLMOPS_ROUTER_ADMIN_TOKEN, else `<state_dir>/router/admin-token` (created 0600)."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = state_dir / "router" / "admin-token"
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def check_url(url: object, name: str) -> str:
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise ValueError(f"{name} must be an http(s) base URL such as http://127.0.0.1:8000 (got {url!r})")
    return url.rstrip("/").removesuffix("/v1")


@dataclass
class Backend:
    url: str
    model_version: str | None = None
    checked_at: float = -1e9  # monotonic time of the last version lookup (an unknown version is retried, slowly)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "model_version": self.model_version}


class RouterState:
    def __init__(self, params: RouterParams, stable: str, canary: str | None, canary_percent: int,
                 shadow_percent: int, token: str, hooks: list[RequestHook], seed: int | None = None) -> None:
        self.params, self.token, self.hooks = params, token, hooks
        self.split = Split(canary_percent, shadow_percent, seed)
        self.stable = Backend(check_url(stable, "stable"))
        self.canary = Backend(check_url(canary, "canary")) if canary else None
        if canary_percent and not self.canary:
            raise ValueError("canary_percent > 0 needs a canary backend")
        self.metrics = RouterMetrics()
        self.window = Window(params.window_observations)
        self.session: aiohttp.ClientSession | None = None
        self.background: set[asyncio.Task] = set()
        self.shadows_in_flight = 0
        self._gauges()

    def _gauges(self) -> None:
        self.metrics.canary_weight.set(self.split.canary_percent if self.canary else 0)
        self.metrics.shadow_weight.set(self.split.shadow_percent if self.canary else 0)

    def snapshot(self) -> dict[str, Any]:
        return {"canary_percent": self.split.canary_percent, "shadow_percent": self.split.shadow_percent,
                "stable": self.stable.to_json(), "canary": self.canary.to_json() if self.canary else None}

    def set_weight(self, percent: int) -> None:
        check_percent(percent, "canary_percent")
        if percent and not self.canary:
            raise ValueError("no canary backend is set: PUT /admin/backends with a canary URL first")
        self.split.set_canary_percent(percent)
        self._gauges()

    def set_backends(self, stable: str, canary: str | None, percent: int, shadow: int | None = None) -> None:
        check_percent(percent, "canary_percent")
        stable_b = Backend(check_url(stable, "stable"))
        canary_b = Backend(check_url(canary, "canary")) if canary else None
        if percent and not canary_b:
            raise ValueError("canary_percent > 0 needs a canary URL")
        for new in (stable_b, canary_b):  # keep a known version when the URL does not change
            if new is not None:
                old = next((b for b in (self.stable, self.canary) if b and b.url == new.url), None)
                new.model_version = old.model_version if old else None
        self.stable, self.canary = stable_b, canary_b
        self.split.set_canary_percent(percent)
        if shadow is not None:
            self.split.set_shadow_percent(shadow)
        self._gauges()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def refresh_version(self, backend: Backend) -> None:
        """The backend's model version from its /v1/models (our server reports `version`); best effort."""
        assert self.session is not None
        backend.checked_at = time.monotonic()
        try:
            async with self.session.get(f"{backend.url}/v1/models",
                                        timeout=aiohttp.ClientTimeout(total=self.params.connect_timeout_s + 3)) as r:
                data = await r.json(content_type=None)
            version = (data.get("data") or [{}])[0].get("version")
            backend.model_version = None if version is None else str(version)
        except Exception as exc:  # unknown until the backend answers; requests still flow
            log.debug("cannot read the model version of %s: %s", backend.url, exc)


def _error(status: int, message: str, code: str) -> tuple[int, bytes]:
    return status, json.dumps(ApiError(status, message, code=code).body()).encode()


class _Outcome:
    """What one proxied request produced, filled while it runs."""

    __slots__ = ("broke", "error", "finish", "status", "text", "ttft", "usage")

    def __init__(self) -> None:
        self.status, self.error, self.ttft, self.broke = 502, None, None, False
        self.text, self.finish, self.usage = "", None, None


class Proxy:
    """The hot path, as plain ASGI: everything not proxied goes to the FastAPI app."""

    def __init__(self, app: FastAPI, state: RouterState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (
                (path in PROXY_ROUTES and scope["method"] == "POST") or (path == "/v1/models"
                                                                         and scope["method"] == "GET")):
            await self.app(scope, receive, send)
            return
        try:
            await self.proxy(scope, receive, send, path)
        except Exception as exc:  # a bug in one request is a 500 for it, never the router down
            log.exception("router fault on %s", path)
            status, body = _error(500, f"router error: {type(exc).__name__}: {exc}", "router_error")
            with contextlib.suppress(Exception):
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})

    async def proxy(self, scope: dict, receive: Callable, send: Callable, path: str) -> None:
        state, params = self.state, self.state.params
        t0, wall0 = time.perf_counter(), time.time()
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            if name not in _DROP_REQUEST:
                headers[name] = v.decode("latin-1")
        rid = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"x-request-id"), "")
        if not _REQUEST_ID.match(rid):
            rid = f"req_{uuid.uuid4().hex}"
        headers["x-request-id"] = rid
        session_id = headers.get("x-llmops-session") or None

        body, too_big = b"", False
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > params.max_body_bytes:
                too_big = True
                break
        if too_big:
            status, payload = _error(413, f"request body is over the router's {params.max_body_bytes}-byte limit",
                                     "body_too_large")
            await _send_simple(send, status, payload, rid, None, None)
            return

        if path == "/v1/models":  # the stable side's list; it takes no slot of the split
            await self.forward_plain(send, "GET", state.stable, path, headers, b"", rid, STABLE)
            return
        canary = state.canary
        side = state.split.side(session_id) if canary else STABLE
        backend = canary if side == CANARY and canary else state.stable

        mirror = side == STABLE and canary is not None and state.split.shadow_percent > 0 and state.split.mirror()
        request_json: Any = None
        if state.hooks or mirror:  # the body is read only for a record or a mirror; a bad one is the backend's 400
            with contextlib.suppress(ValueError):
                request_json = json.loads(body or b"null")
        inject_usage = False
        if (state.hooks and isinstance(request_json, dict) and request_json.get("stream") is True
                and path != "/v1/responses"):
            opts = request_json.get("stream_options")
            if opts is None or (isinstance(opts, dict) and not opts.get("include_usage")):
                # our server reports usage at the end of a stream only when asked; the router needs it for the
                # hooks, and drops that chunk again when the client did not ask for it
                request_json = {**request_json, "stream_options": {**(opts or {}), "include_usage": True}}
                body, inject_usage = json.dumps(request_json).encode(), True

        shadow_future: asyncio.Future | None = None
        if mirror and canary is not None:
            shadow_future = asyncio.get_running_loop().create_future()
            state.spawn(self.shadow(canary, path, request_json, headers, rid, shadow_future))

        out = _Outcome()
        try:
            await self.forward(send, receive, backend, side, path, headers, body, rid, session_id, request_json,
                               inject_usage, out, t0, wall0, read_answer=bool(state.hooks) or shadow_future is not None)
        finally:
            if shadow_future is not None and not shadow_future.done():
                shadow_future.set_result(out.text if out.status == 200 and not out.broke else None)

    async def forward_plain(self, send: Callable, method: str, backend: Backend, path: str, headers: dict[str, str],
                            body: bytes, rid: str, side: str) -> None:
        assert self.state.session is not None
        try:
            async with self.state.session.request(method, backend.url + path, headers=headers, data=body) as resp:
                payload = await resp.read()
                status, raw = resp.status, resp.raw_headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, payload = _upstream_error(exc, side, backend, self.state.params)
            raw = ((b"content-type", b"application/json"),)
        await _send_simple(send, status, payload, rid, side, backend.model_version, raw)

    async def forward(self, send: Callable, receive: Callable, backend: Backend, side: str, path: str,
                      headers: dict[str, str], body: bytes, rid: str, session_id: str | None, request_json: Any,
                      inject_usage: bool, out: _Outcome, t0: float, wall0: float, read_answer: bool) -> None:
        state = self.state
        assert state.session is not None
        if backend.model_version is None and time.monotonic() - backend.checked_at > 30:
            backend.checked_at = time.monotonic()
            state.spawn(state.refresh_version(backend))
        resp = None
        try:
            try:
                resp = await state.session.post(backend.url + path, headers=headers, data=body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.status, payload = _upstream_error(exc, side, backend, state.params)
                out.error = json.loads(payload)["error"]["message"]
                await self.finish(out, side, backend, path, session_id, request_json, rid, t0, wall0)
                await _send_simple(send, out.status, payload, rid, side, backend.model_version)
                return
            out.status = resp.status
            if resp.status == 200 and resp.content_type == "text/event-stream":
                await self.stream(send, receive, resp, backend, side, path, session_id, request_json, inject_usage,
                                  rid, out, t0, wall0)
                return
            try:
                payload = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.status, payload = _upstream_error(exc, side, backend, state.params)
                out.error = json.loads(payload)["error"]["message"]
            else:  # the answer's text and usage are for the hooks and the shadow comparison only
                data = None
                if read_answer or resp.status != 200:
                    with contextlib.suppress(ValueError):
                        data = json.loads(payload)
                if resp.status == 200 and isinstance(data, dict):
                    out.text, out.finish = answer_text(path, data)
                    out.usage = usage_of(data)
                elif isinstance(data, dict) and isinstance(data.get("error"), dict):
                    out.error = str(data["error"].get("message"))
            await self.finish(out, side, backend, path, session_id, request_json, rid, t0, wall0)
            await _send_simple(send, out.status, payload, rid, side, backend.model_version,
                               resp.raw_headers if resp.status == out.status else None)
        finally:
            if resp is not None:
                resp.release()

    async def stream(self, send: Callable, receive: Callable, resp: aiohttp.ClientResponse, backend: Backend,
                     side: str, path: str, session_id: str | None, request_json: Any, inject_usage: bool, rid: str,
                     out: _Outcome, t0: float, wall0: float) -> None:
        """Forward SSE events as they complete; hold the terminal event until the hooks have run."""
        headers = _response_headers(resp.raw_headers, rid, side, backend.model_version)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        parser = StreamParser(path, drop_usage_chunk=inject_usage)
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.get_running_loop().create_task(watch())
        terminal: bytes | None = None
        try:
            async for chunk in resp.content.iter_any():
                if gone.is_set():
                    out.status, out.error = 499, "client disconnected"
                    break
                forward, terminal = parser.feed(chunk)
                if out.ttft is None and parser.first_content:
                    out.ttft = time.perf_counter() - t0
                if forward:
                    await send({"type": "http.response.body", "body": forward, "more_body": True})
                if terminal is not None:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):  # read to the end: the
                        await asyncio.wait_for(resp.content.read(), 2)  # connection goes back to the pool
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            out.broke = True
            out.error = f"the {side} stream from {backend.url} broke: {type(exc).__name__}: {exc}".strip()
        if out.status == 200 and not out.broke and (parser.error or terminal is None):
            out.broke = True
            out.error = parser.error or f"the {side} stream from {backend.url} ended before its last event"
        if out.status != 200 or out.broke:
            resp.close()  # never reuse a half-read connection; closing it also stops the backend's generation
        out.text, out.finish, out.usage = parser.text(), parser.finish, parser.usage
        watcher.cancel()
        await self.finish(out, side, backend, path, session_id, request_json, rid, t0, wall0)
        await send({"type": "http.response.body", "body": terminal or b"", "more_body": False})

    async def finish(self, out: _Outcome, side: str, backend: Backend, path: str, session_id: str | None,
                     request_json: Any, rid: str, t0: float, wall0: float) -> None:
        """Metrics, the window observation, then the hooks (awaited: the response completes after them)."""
        state = self.state
        latency = time.perf_counter() - t0
        version = backend.model_version or "unknown"
        error = out.broke or out.status >= 500
        m = state.metrics
        m.requests.labels(side=side, model_version=version, route=path, status=str(out.status)).inc()
        if error:
            kind = "broken_stream" if out.broke else {502: "unreachable", 504: "timeout"}.get(out.status, "5xx")
            m.errors.labels(side=side, model_version=version, kind=kind).inc()
        else:
            m.latency.labels(side=side, model_version=version).observe(latency)
            if out.ttft is not None:
                m.ttft.labels(side=side, model_version=version).observe(out.ttft)
        state.window.add(Observation(time.time(), side, error, latency, out.ttft))
        if not state.hooks:
            return
        req = request_json if isinstance(request_json, dict) else {}
        prompt = req.get("messages", req.get("prompt", req.get("input")))
        usage = out.usage or {}
        await run_hooks(state.hooks, RequestRecord(
            request_id=rid, route=path, model=str(req.get("model", "")), model_version=backend.model_version,
            prompt=prompt, response=out.text, prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)), latency_s=latency, ttft_s=out.ttft,
            status=out.status, finish_reason=out.finish, error=out.error, extra={"backend": backend.url},
            time=wall0, side=side, session=session_id))

    async def shadow(self, canary: Backend, path: str, request_json: Any, headers: dict[str, str], rid: str,
                     stable_text: asyncio.Future) -> None:
        """Mirror one stable request to the canary (non-streaming), score its answer against the stable one."""
        from llmops.modeling.text_metrics import rouge_l_f1

        state = self.state
        version = canary.model_version or "unknown"
        if state.shadows_in_flight >= state.params.shadow_max_in_flight or not isinstance(request_json, dict):
            state.metrics.shadow.labels(model_version=version, outcome="skipped").inc()
            return
        state.shadows_in_flight += 1
        try:
            body = {k: v for k, v in request_json.items() if k not in ("stream", "stream_options")}
            assert state.session is not None
            try:
                async with state.session.post(canary.url + path, json=body, headers={
                        **headers, "x-request-id": f"{rid}-shadow", "x-llmops-shadow": "1"}) as resp:
                    data = await resp.json(content_type=None) if resp.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, ValueError):
                data = None
            reference = await stable_text
            if not isinstance(data, dict):
                state.metrics.shadow.labels(model_version=version, outcome="error").inc()
                return
            if reference is None:
                state.metrics.shadow.labels(model_version=version, outcome="skipped").inc()
                return
            candidate, _ = answer_text(path, data)
            state.metrics.shadow_similarity.labels(model_version=version).observe(rouge_l_f1(candidate, reference))
            state.metrics.shadow.labels(model_version=version, outcome="scored").inc()
        finally:
            state.shadows_in_flight -= 1


def _upstream_error(exc: BaseException, side: str, backend: Backend, params: RouterParams) -> tuple[int, bytes]:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return _error(504, f"the {side} backend {backend.url} did not answer within its timeout "
                      f"(connect {params.connect_timeout_s:g}s, read {params.read_timeout_s:g}s)", "backend_timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _error(502, f"the {side} backend {backend.url} is unreachable: {exc.os_error.strerror or exc}",
                      "backend_unreachable")
    return _error(502, f"the {side} backend {backend.url} failed: {type(exc).__name__}: {exc}".strip(),
                  "backend_error")


def _response_headers(raw: Any, rid: str, side: str | None, version: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(k, v) for k, v in raw if k.lower() not in _DROP_RESPONSE]
    if not any(k.lower() == b"x-request-id" for k, _ in headers):  # the backend echoes the id it was sent
        headers.append((b"x-request-id", rid.encode()))
    if side is not None:
        headers += [(b"x-llmops-side", side.encode()), (b"x-llmops-model-version", (version or "").encode())]
    return headers


async def _send_simple(send: Callable, status: int, body: bytes, rid: str, side: str | None, version: str | None,
                       raw: Any = ((b"content-type", b"application/json"),)) -> None:
    headers = _response_headers(raw or ((b"content-type", b"application/json"),), rid, side, version)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_router_app(params: RouterParams, *, stable: str, canary: str | None = None, canary_percent: int = 0,
                      shadow_percent: int = 0, token: str, hooks: list[RequestHook] | None = None,
                      seed: int | None = None) -> Proxy:
    """The router as an ASGI app (the proxy handler in front of a FastAPI app for admin, health and metrics)."""
    try:
        state = RouterState(params, stable, canary, canary_percent, shadow_percent, token, list(hooks or []), seed)
    except ValueError as exc:
        raise LlmopsError(str(exc), "see `llmops router --help`") from None

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

    app = FastAPI(title="llmops router", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.router = state

    def require_admin(request: Request) -> None:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            raise HTTPException(401, "admin routes need Authorization: Bearer <admin token> (LLMOPS_ROUTER_ADMIN_"
                                "TOKEN or <state_dir>/router/admin-token)", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(auth[7:].strip().encode(), state.token.encode()):
            raise HTTPException(403, "wrong admin token")

    admin = [Depends(require_admin)]

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise HTTPException(400, "the body must be a JSON object") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return data

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

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

    @app.get("/admin/state", dependencies=admin)
    async def get_state() -> dict[str, Any]:
        return state.snapshot()

    @app.put("/admin/weight", dependencies=admin)
    async def put_weight(request: Request) -> dict[str, Any]:
        data = await body_of(request)
        try:
            state.set_weight(data.get("canary_percent"))  # type: ignore[arg-type]
            if "shadow_percent" in data:
                state.split.set_shadow_percent(data["shadow_percent"])
                state._gauges()
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        log.info("canary weight -> %d%%", state.split.canary_percent)
        return state.snapshot()

    @app.put("/admin/backends", dependencies=admin)
    async def put_backends(request: Request) -> dict[str, Any]:
        data = await body_of(request)
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

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code,
                            headers=exc.headers)

    return Proxy(app, state)
