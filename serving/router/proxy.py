"""The hot path, as plain ASGI ahead of FastAPI (the proxied routes pay no routing or validation layer).

One request: authenticate (the servers' key: an unauthenticated request is answered 401 here and never reaches
a side, the window or the log), read the bounded body, refuse a client request id that is already logged
(409: a client never overwrites a logged request), choose the side, forward over the pooled aiohttp client,
pass status and body (or the stream, event by event) through, then record metrics, the window observation and
the hooks (awaited before the body / before the stream's last event, contract C1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from fastapi import FastAPI

from serving.http.auth import AUTH_HEADERS, TOO_MANY, UNAUTHORIZED
from serving.http.errors import client_caused
from serving.records import RequestRecord, run_hooks
from serving.router.context import RequestContext
from serving.router.metrics import Observation, error_kind
from serving.router.respond import JSON_HEADERS, error, response_headers, send_simple, upstream_error
from serving.router.shadow import Mirror
from serving.router.split import CANARY, STABLE
from serving.router.state import RouterState
from serving.router.stream import StreamParser, answer_text, error_event, usage_of

log = logging.getLogger("llmops.router")
PROXY_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
_AUTH = tuple((k.lower().encode(), v.encode()) for k, v in AUTH_HEADERS.items())


def _proxied(scope: dict) -> bool:
    path, method = scope.get("path", ""), scope.get("method")
    return scope["type"] == "http" and ((path in PROXY_ROUTES and method == "POST")
                                        or (path == "/v1/models" and method == "GET"))


class Proxy:
    """Everything not proxied goes to the FastAPI app (admin, health, metrics, feedback)."""

    def __init__(self, app: FastAPI, state: RouterState) -> None:
        self.app, self.state = app, state
        self.mirror = Mirror(state)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not _proxied(scope):
            await self.app(scope, receive, send)
            return
        try:
            await self.handle(scope, receive, send)
        except Exception as exc:  # a bug in one request is a 500 for it, never the router down
            log.exception("router fault on %s", scope.get("path"))
            status, body = error(500, f"router error: {type(exc).__name__}: {exc}", "router_error")
            with contextlib.suppress(Exception):
                await send({"type": "http.response.start", "status": status, "headers": list(JSON_HEADERS)})
                await send({"type": "http.response.body", "body": body})

    async def reject(self, send: Callable, ctx: RequestContext, status: int, message: str, code: str,
                     reason: str, extra: tuple = ()) -> None:
        self.state.metrics.rejected.labels(reason=reason).inc()
        status, payload = error(status, message, code)
        await send_simple(send, status, payload, ctx.rid, extra=_AUTH if status == 401 else extra)

    async def handle(self, scope: dict, receive: Callable, send: Callable) -> None:
        state = self.state
        ctx = RequestContext.from_scope(scope)
        verdict = state.guard.check(ctx.authorization, ctx.client)  # before the body is read: an anonymous
        if verdict.retry_after:                                       # client costs nothing
            await self.reject(send, ctx, 429, TOO_MANY.format(wait=verdict.retry_after), "rate_limit_exceeded",
                              "auth_limited", extra=((b"retry-after", str(verdict.retry_after).encode()),))
            return
        if not verdict.ok:
            await self.reject(send, ctx, 401, UNAUTHORIZED, "invalid_api_key", "unauthorized")
            return
        if not await self.read_body(ctx, receive, send):
            return
        if ctx.path == "/v1/models":  # the stable side's list; it takes no slot of the split
            await self.forward_plain(send, ctx)
            return
        exists = state.config.id_exists
        if ctx.client_rid and state.hooks and exists is not None and await exists(ctx.rid):
            await self.reject(send, ctx, 409, f"x-request-id {ctx.rid!r} is already taken by a logged request: send "
                              "a new id, or none and the router makes one", "request_id_conflict", "conflict")
            return
        self.choose_side(ctx)
        mirrored = self.mirror.wanted(ctx)
        self.parse_body(ctx, mirrored)
        stable_answer = self.mirror.start(ctx) if mirrored else None
        try:
            await self.forward(ctx, send, receive, read_answer=bool(state.hooks) or stable_answer is not None)
        finally:
            if stable_answer is not None and not stable_answer.done():
                stable_answer.set_result(ctx.text if ctx.ok else None)

    async def read_body(self, ctx: RequestContext, receive: Callable, send: Callable) -> bool:
        """The body, bounded; False when the client left or the body is too large (answered 413)."""
        limit, parts, size = self.state.params.max_body_bytes, [], 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self.reject(send, ctx, 413, f"request body is over the router's {limit}-byte limit",
                                  "body_too_large", "body_too_large")
                return False
            parts.append(chunk)
            more = message.get("more_body", False)
        ctx.body = b"".join(parts)
        return True

    def choose_side(self, ctx: RequestContext) -> None:
        state = self.state
        canary = state.canary
        ctx.side = state.split.side(ctx.session) if canary else STABLE
        ctx.backend = canary if ctx.side == CANARY and canary else state.stable

    def parse_body(self, ctx: RequestContext, mirrored: bool) -> None:
        """The JSON body, read only for a record or a mirror (a bad one is the backend's 400); for a logged
        stream, ask the server for the usage chunk (and drop it again unless the client asked for it)."""
        hooks = bool(self.state.hooks)
        if not (hooks or mirrored):
            return
        with contextlib.suppress(ValueError, RecursionError):
            ctx.request_json = json.loads(ctx.body or b"null")
        req = ctx.request_json
        if not (hooks and isinstance(req, dict) and req.get("stream") is True and ctx.path != "/v1/responses"):
            return
        opts = req.get("stream_options")
        if opts is None or (isinstance(opts, dict) and not opts.get("include_usage")):
            ctx.request_json = {**req, "stream_options": {**(opts or {}), "include_usage": True}}
            ctx.body, ctx.inject_usage = json.dumps(ctx.request_json).encode(), True

    async def forward_plain(self, send: Callable, ctx: RequestContext) -> None:
        state, backend = self.state, self.state.stable
        assert state.session is not None
        try:
            async with state.session.request("GET", backend.url + ctx.path, headers=ctx.headers) as resp:
                payload, status, raw = await resp.read(), resp.status, resp.raw_headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, payload = upstream_error(exc, STABLE, backend, state.params)
            raw = JSON_HEADERS
        await send_simple(send, status, payload, ctx.rid, STABLE, backend.model_version, raw)

    async def forward(self, ctx: RequestContext, send: Callable, receive: Callable, read_answer: bool) -> None:
        state, backend = self.state, ctx.backend
        assert state.session is not None and backend is not None
        if backend.model_version is None and time.monotonic() - backend.checked_at > 30:
            backend.checked_at = time.monotonic()
            state.spawn(state.refresh_version(backend))
        try:
            resp = await state.session.post(backend.url + ctx.path, headers=ctx.headers, data=ctx.body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            ctx.status, payload = upstream_error(exc, ctx.side, backend, state.params)
            ctx.error = json.loads(payload)["error"]["message"]
            await self.finish(ctx)
            await send_simple(send, ctx.status, payload, ctx.rid, ctx.side, backend.model_version)
            return
        try:
            ctx.status = resp.status
            if resp.status == 200 and resp.content_type == "text/event-stream":
                await self.stream(ctx, send, receive, resp)
                return
            payload, raw = await self.read_answer(ctx, resp, read_answer)
            await self.finish(ctx)
            await send_simple(send, ctx.status, payload, ctx.rid, ctx.side, backend.model_version, raw)
        finally:
            resp.release()

    async def read_answer(self, ctx: RequestContext, resp: aiohttp.ClientResponse,
                          read_answer: bool) -> tuple[bytes, Any]:
        """A JSON answer's bytes (and headers to pass on); its text and usage only for hooks and shadows."""
        try:
            payload = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            ctx.status, payload = upstream_error(exc, ctx.side, ctx.backend, self.state.params)  # type: ignore
            ctx.error = json.loads(payload)["error"]["message"]
            return payload, None
        data = None
        if read_answer or resp.status != 200:
            with contextlib.suppress(ValueError, RecursionError):
                data = json.loads(payload)
        if resp.status == 200 and isinstance(data, dict):
            ctx.text, ctx.finish = answer_text(ctx.path, data)
            ctx.usage = usage_of(data)
        elif isinstance(data, dict) and isinstance(data.get("error"), dict):
            ctx.error = str(data["error"].get("message"))
        return payload, resp.raw_headers

    async def stream(self, ctx: RequestContext, send: Callable, receive: Callable,
                     resp: aiohttp.ClientResponse) -> None:
        """Forward SSE events as they complete; hold the terminal event until the hooks have run. A stream that
        breaks ends with an error event (OpenAI's stream error shape), never silently."""
        headers = response_headers(resp.raw_headers, ctx.rid, ctx.side, ctx.model_version())
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        parser = StreamParser(ctx.path, drop_usage_chunk=ctx.inject_usage)
        terminal = await relay(ctx, parser, resp, send, receive)
        if ctx.broke and not parser.error:  # the backend's own error event was passed on already
            terminal = error_event(ctx.path, ctx.error or "the stream broke", "backend_stream_broken")
        await self.finish(ctx)
        await send({"type": "http.response.body", "body": terminal or b"", "more_body": False})

    async def finish(self, ctx: RequestContext) -> None:
        """Metrics, the window observation, then the hooks (awaited: the response completes after them).
        A request the servers refused as unauthenticated is neither analysed nor logged."""
        state, backend = self.state, ctx.backend
        assert backend is not None
        latency = time.perf_counter() - ctx.t0
        version = backend.model_version or "unknown"
        m = state.metrics
        m.requests.labels(side=ctx.side, model_version=version, route=ctx.path, status=str(ctx.status)).inc()
        abandoned = ctx.status == 499 and ctx.ttft is None and latency >= state.params.abandoned_after_s
        kind = error_kind(ctx.status, ctx.broke, abandoned)
        analysed = kind is not None or not client_caused(ctx.status)  # a client's bad input says nothing of a side
        if kind is not None:
            m.errors.labels(side=ctx.side, model_version=version, kind=kind).inc()
        elif analysed:
            m.latency.labels(side=ctx.side, model_version=version).observe(latency)
            if ctx.ttft is not None:
                m.ttft.labels(side=ctx.side, model_version=version).observe(ctx.ttft)
        if analysed:
            state.window.add(Observation(time.time(), ctx.side, kind is not None, latency, ctx.ttft))
        if state.hooks and ctx.status not in (401, 403):
            await run_hooks(state.hooks, self.record(ctx, latency))

    def record(self, ctx: RequestContext, latency: float) -> RequestRecord:
        req = ctx.request_json if isinstance(ctx.request_json, dict) else {}
        prompt = req.get("messages", req.get("prompt", req.get("input")))
        usage = ctx.usage or {}
        assert ctx.backend is not None
        return RequestRecord(
            request_id=ctx.rid, route=ctx.path, model=str(req.get("model", "")), model_version=ctx.model_version(),
            prompt=prompt, response=ctx.text, prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)), latency_s=latency, ttft_s=ctx.ttft,
            status=ctx.status, finish_reason=ctx.finish, error=ctx.error,
            extra={"backend": ctx.backend.url, "key_id": self.state.key_id}, time=ctx.wall0, side=ctx.side,
            session=ctx.session)


async def relay(ctx: RequestContext, parser: StreamParser, resp: aiohttp.ClientResponse, send: Callable,
                receive: Callable) -> bytes | None:
    """Pass a 200 stream's events on as they complete; returns the held-back terminal event (None if none came).
    Sets `ctx.broke` (with the cause) when the backend broke off, and 499 when the client left."""
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.get_running_loop().create_task(watch())
    terminal: bytes | None = None
    side, url = ctx.side, ctx.backend.url if ctx.backend else "?"
    try:
        async for chunk in resp.content.iter_any():
            if gone.is_set():
                ctx.status, ctx.error = 499, "client disconnected"
                break
            forward, terminal = parser.feed(chunk)
            if ctx.ttft is None and parser.first_content:
                ctx.ttft = time.perf_counter() - ctx.t0
            if forward:
                await send({"type": "http.response.body", "body": forward, "more_body": True})
            if terminal is not None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):  # read to the end: the
                    await asyncio.wait_for(resp.content.read(), 2)  # connection goes back to the pool
                break
    except (aiohttp.ClientError, TimeoutError) as exc:
        ctx.broke = True
        ctx.error = f"the {side} stream from {url} broke: {type(exc).__name__}: {exc}".strip()
    finally:
        watcher.cancel()
    if ctx.status == 200 and not ctx.broke and (parser.error or terminal is None):
        ctx.broke = True
        ctx.error = parser.error or f"the {side} stream from {url} ended before its last event"
    if not ctx.ok:
        resp.close()  # never reuse a half-read connection; closing it also stops the backend's generation
    ctx.text, ctx.finish, ctx.usage = parser.text(), parser.finish, parser.usage
    return terminal
