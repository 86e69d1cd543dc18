"""uvicorn with connection limits, for every server of the project: at most `max_connections` open
(`limit_concurrency`, beyond that a 503), idle keep-alive connections closed after `keep_alive_s`, and a
header deadline uvicorn lacks: a connection that has not sent a whole request head within `header_timeout_s`
of connecting (or of its previous response) is closed, so slow-header clients (slowloris) cannot pile up."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import uvicorn


def _base_protocol() -> type:
    try:
        import httptools  # noqa: F401  (uvicorn's "auto" choice: the faster parser when installed)
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


@functools.cache
def guarded_protocol(header_timeout_s: float) -> type:
    """uvicorn's HTTP protocol class with a deadline for each request head."""
    base = _base_protocol()

    class HeaderDeadline(base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            armed_cycle = self.cycle  # a new request head replaces the cycle
            self._deadline = self.loop.call_later(header_timeout_s, self._expire, armed_cycle)

        def _expire(self, armed_cycle: Any) -> None:
            self._deadline = None
            if self.cycle is armed_cycle and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return HeaderDeadline


def server_config(app: Any, host: str, port: int, *, max_connections: int, header_timeout_s: float,
                  keep_alive_s: float, log_level: str = "info", **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, limit_concurrency=max_connections,
                          timeout_keep_alive=int(max(1, keep_alive_s)), http=guarded_protocol(header_timeout_s),
                          timeout_graceful_shutdown=5, **kwargs)


def run_server(app: Any, host: str, port: int, **limits: Any) -> None:
    """Serve `app` until interrupted, with the limits above."""
    uvicorn.Server(server_config(app, host, port, **limits)).run()
