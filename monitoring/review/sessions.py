"""Browser sessions and CSRF checks for the review page.

A browser cannot send `Authorization: Bearer` on a page load, so it signs in once with the same API key (a form
POST) and gets a random session id in an HttpOnly, SameSite=Strict cookie; the page's script reads a per-session
CSRF token from GET /api/session (same-origin only: the app sends no CORS headers) and sends it back as
`X-CSRF-Token` with every decision. A state-changing request is refused unless its token matches AND its
`Origin` (or, without one, `Sec-Fetch-Site`) says it came from this origin. Scripts use the bearer key instead
(no cookie, so no CSRF exposure). Sessions live in this process's memory: restarting the server signs everyone
out, which is what a small local tool wants.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

COOKIE = "llmops_review_session"
CSRF_HEADER = "x-csrf-token"


@dataclass
class Session:
    id: str
    csrf: str
    reviewer: str
    key_id: str | None
    expires: float


class Sessions:
    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, reviewer: str, key_id: str | None) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), reviewer, key_id,
                    time.time() + self.lifetime_s)
        with self._lock:
            self._by_id = {k: v for k, v in self._by_id.items() if v.expires > time.time()}
            self._by_id[s.id] = s
        return s

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            s = self._by_id.get(session_id)
        return s if s is not None and s.expires > time.time() else None

    def drop(self, session_id: str | None) -> None:
        with self._lock:
            self._by_id.pop(session_id or "", None)


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode("utf-8", "replace"))


def same_origin(headers: dict[str, str] | object, scheme: str) -> bool:
    """Whether a state-changing browser request came from this origin: its Origin header names this host, or
    (no Origin) the browser's Sec-Fetch-Site says same-origin; neither header (not a browser) passes, since the
    session cookie and CSRF token still have to match."""
    get = headers.get  # type: ignore[attr-defined]
    origin, host = get("origin"), get("host")
    if origin:
        parts = urlsplit(origin)
        return origin != "null" and parts.scheme == scheme and parts.netloc == host
    site = get("sec-fetch-site")
    return site in (None, "same-origin", "none")
