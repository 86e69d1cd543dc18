"""One proxied request as the router's steps see it: what came in (path, forwarded headers, request id,
session, body), where it goes (side, backend) and what came out (status, text, usage, timings), in one object
passed from step to step instead of a dozen positional parameters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from serving.http.auth import peer_address
from serving.http.internal import INTERNAL_HEADERS
from serving.http.request_id import REQUEST_ID_HEADER, new_request_id, valid_request_id
from serving.router.split import STABLE
from serving.router.state import Backend

# Not forwarded either way: hop-by-hop headers, the ones the router sets itself, and internal ones that only
# the router may set (a client's x-llmops-shadow must never reach a server).
DROP_REQUEST = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te",
                          "trailer", "upgrade", "proxy-connection", "proxy-authorization", REQUEST_ID_HEADER,
                          "accept-encoding"} | INTERNAL_HEADERS)


@dataclass(eq=False, slots=True)
class RequestContext:
    path: str
    headers: dict[str, str]  # what is forwarded upstream (lower-case names)
    rid: str
    client_rid: bool  # the id came from the client (checked against the log), not from the router
    session: str | None
    authorization: str
    client: str = ""  # the TCP peer's address (wrong keys are limited per address)
    t0: float = field(default_factory=time.perf_counter)
    wall0: float = field(default_factory=time.time)
    body: bytes = b""
    request_json: Any = None
    inject_usage: bool = False  # the router asked for the usage chunk; drop it before the client sees it
    side: str = STABLE
    backend: Backend | None = None
    # the outcome, filled while the request runs
    status: int = 502
    error: str | None = None
    ttft: float | None = None
    broke: bool = False
    text: str = ""
    finish: str | None = None
    usage: dict[str, int] | None = None

    @classmethod
    def from_scope(cls, scope: dict[str, Any]) -> RequestContext:
        headers: dict[str, str] = {}
        rid = authorization = ""
        for k, v in scope["headers"]:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            if name == REQUEST_ID_HEADER:
                rid = value
            elif name == "authorization":
                authorization = value
            if name not in DROP_REQUEST:
                headers[name] = value
        client_rid = valid_request_id(rid)
        if not client_rid:
            rid = new_request_id()
        headers[REQUEST_ID_HEADER] = rid
        return cls(scope.get("path", ""), headers, rid, client_rid, headers.get("x-llmops-session") or None,
                   authorization, peer_address(scope))

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.broke

    def model_version(self) -> str | None:
        return self.backend.model_version if self.backend else None
