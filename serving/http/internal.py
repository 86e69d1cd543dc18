"""Markers that only the router may set on a request to a model server (`shadow`: a mirrored copy, answered to
no one, so the server's inference log skips it), made unforgeable by clients.

The router signs each internal flag for one request id with a secret shared by the router and the servers of
one deployment (`LLMOPS_INTERNAL_SECRET`, else `<state_dir>/internal-secret`, created 0600 by whichever
process starts first); a server honours an internal header only when `verify` accepts its signature. A client
that sends the old bare `x-llmops-shadow: 1` (or a forged marker) is ignored by the server and stripped by the
router; the router itself sends only the signed `x-llmops-internal` marker.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

SECRET_ENV = "LLMOPS_INTERNAL_SECRET"
SHADOW_HEADER = "x-llmops-shadow"
MARKER_HEADER = "x-llmops-internal"
# Client request headers the router never forwards: only the router itself may set these upstream.
INTERNAL_HEADERS = frozenset({SHADOW_HEADER, MARKER_HEADER})


def internal_secret(state_dir: Path) -> bytes:
    """The deployment's internal secret: LLMOPS_INTERNAL_SECRET, else `<state_dir>/internal-secret` (made once)."""
    env = os.environ.get(SECRET_ENV, "").strip()
    if env:
        return env.encode()
    path = Path(state_dir) / "internal-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # O_EXCL: two processes starting at once agree on one secret
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    value = path.read_text().strip()
    return value.encode() if value else secrets.token_bytes(32)


def sign(secret: bytes, request_id: str, flag: str) -> str:
    """The `x-llmops-internal` value that marks `request_id` with `flag` (e.g. "shadow")."""
    mac = hmac.new(secret, f"{flag}\0{request_id}".encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return f"{flag}.{mac}"


def verify(secret: bytes | None, request_id: str, value: str | None) -> str | None:
    """The flag a valid marker carries for `request_id`, else None (no secret, no header, forged or replayed
    for another request id)."""
    if not secret or not value or "." not in value:
        return None
    flag = value.split(".", 1)[0]
    return flag if hmac.compare_digest(sign(secret, request_id, flag).encode(), value.encode("utf-8", "replace")) \
        else None


def is_shadow(secret: bytes | None, request_id: str, headers: Mapping[str, str]) -> bool:
    """Whether a server should treat this request as the router's shadow copy: only with a valid signed
    marker for its own request id (`x-llmops-shadow` alone, which any client can send, is not enough)."""
    return verify(secret, request_id, headers.get(MARKER_HEADER)) == "shadow"
