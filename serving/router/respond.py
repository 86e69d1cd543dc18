"""Answers the router writes itself: error bodies in OpenAI's shape, upstream failures named by cause, and
response headers (the request id, the side and the model version)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp

from llmops.params import RouterParams
from serving.http.errors import error_body
from serving.router.state import Backend

JSON_HEADERS = ((b"content-type", b"application/json"),)
_DROP_RESPONSE = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}


def error(status: int, message: str, code: str) -> tuple[int, bytes]:
    return status, json.dumps(error_body(status, message, code=code)).encode()


def upstream_error(exc: BaseException, side: str, backend: Backend, params: RouterParams) -> tuple[int, bytes]:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return error(504, f"the {side} backend {backend.url} did not answer within its timeout "
                     f"(connect {params.connect_timeout_s:g}s, read {params.read_timeout_s:g}s)", "backend_timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return error(502, f"the {side} backend {backend.url} is unreachable: {exc.os_error.strerror or exc}",
                     "backend_unreachable")
    return error(502, f"the {side} backend {backend.url} failed: {type(exc).__name__}: {exc}".strip(),
                 "backend_error")


def response_headers(raw: Any, rid: str, side: str | None, version: str | None) -> list[tuple[bytes, bytes]]:
    headers = [(k, v) for k, v in raw if k.lower() not in _DROP_RESPONSE]
    if not any(k.lower() == b"x-request-id" for k, _ in headers):  # the backend echoes the id it was sent
        headers.append((b"x-request-id", rid.encode()))
    if side is not None:
        headers += [(b"x-llmops-side", side.encode()), (b"x-llmops-model-version", (version or "").encode())]
    return headers


async def send_simple(send: Callable, status: int, body: bytes, rid: str, side: str | None = None,
                      version: str | None = None, raw: Any = JSON_HEADERS,
                      extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    headers = response_headers(raw or JSON_HEADERS, rid, side, version)
    headers += [*extra, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
