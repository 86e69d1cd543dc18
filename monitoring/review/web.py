"""The review queue's web app (`llmops review serve`): one page listing feedback with accept / edit / reject,
keyboard shortcuts, filters and the count of what is waiting, over a small JSON API.

Auth is the servers' bearer key (serving/http/auth.py): scripts send `Authorization: Bearer <key>`; a browser
signs in once with the key and then holds a session cookie + CSRF token (sessions.py). Without a configured key
(auth off, loopback only) a browser gets a session on its first visit. Wrong keys are limited per client
address on both paths (serving/http/throttle.py: review.login_failures per review.login_window_s, then 429 +
Retry-After).
On a loopback bind the Host header must name the loopback (a DNS-rebinding page cannot reach the API). Every
decision is audited with the reviewer's name, how it was made (web) and the key identity. The page is static (no
inline script: a strict CSP) and writes every user-supplied text with textContent, never as HTML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from llmops.errors import LlmopsError
from llmops.params import ReviewParams
from monitoring.review.queue import ACTIONS, Conflict, Filters, ReviewError, ReviewQueue, UnknownItem
from monitoring.review.sessions import COOKIE, CSRF_HEADER, Session, Sessions, csrf_ok, same_origin
from serving.http.auth import KeyGuard

STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_REVIEWER = re.compile(r"^[\w .@+-]{1,64}$")
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
MAX_BODY = 256 * 1024


def _error(status: int, message: str, fix: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "fix": fix}}, status_code=status)


def _too_many(wait: int) -> JSONResponse:
    response = _error(429, "too many wrong API keys from this address", f"wait {wait} s (Retry-After) and try again")
    response.headers["Retry-After"] = str(wait)
    return response


def _too_many_page(refused: JSONResponse) -> HTMLResponse:
    """The same 429 for a browser's sign-in form: a page that says how long to wait, not raw JSON."""
    wait = refused.headers["Retry-After"]
    page = (f"<!doctype html><meta charset=utf-8><title>Sign-in paused</title><h1>Sign-in paused</h1>"
            f"<p>Too many wrong API keys from this address. Wait {int(wait)} s, then "
            "<a href=\"/\">sign in again</a>.</p>")
    return HTMLResponse(page, status_code=429, headers={"Retry-After": wait})


def _address(request: Request) -> str:
    return request.client.host if request.client else "?"


def _status_of(exc: LlmopsError) -> int:
    return 404 if isinstance(exc, UnknownItem) else 409 if isinstance(exc, Conflict) else 400


class _Caller:
    """Who is calling: a bearer-key script or a signed-in browser session."""

    def __init__(self, reviewer: str, key_id: str | None, session: Session | None) -> None:
        self.reviewer, self.key_id, self.session = reviewer, key_id, session


class _Auth:
    """The servers' bearer key for scripts; sign-in sessions (cookie + CSRF token) for browsers."""

    def __init__(self, api_key: str | None, reviewer: str, session_hours: float, review: ReviewParams) -> None:
        from serving.http.identity import key_identity

        self.api_key, self.reviewer, self.session_hours = api_key, reviewer, session_hours
        self.key_id = key_identity(api_key)
        self.sessions = Sessions(session_hours * 3600)
        self.guard = KeyGuard(api_key, review.login_failures, review.login_window_s)

    def key_ok(self, request: Request, key: str | None) -> bool | JSONResponse:
        """Whether `key` is the servers' key, counted against the caller's address (a 429 once it is spent)."""
        verdict = self.guard.check_token(key or "", _address(request))
        return _too_many(verdict.retry_after) if verdict.retry_after else verdict.ok

    def caller(self, request: Request, *, writing: bool) -> _Caller | JSONResponse:
        """The caller, or the error response: 401 unknown, 403 a state change without token or from elsewhere."""
        from serving.http.auth import bearer_token
        from serving.http.identity import key_identity

        if request.headers.get("authorization"):  # a script: the bearer key, no cookie, no CSRF exposure
            ok = self.key_ok(request, bearer_token(request.headers.get("authorization")))
            if isinstance(ok, JSONResponse):
                return ok
            if not ok:
                return _error(401, "wrong API key", "send Authorization: Bearer <the servers' key>")
            name = request.headers.get("x-reviewer") or self.reviewer
            if not _REVIEWER.match(name):
                return _error(400, "X-Reviewer: letters, digits, space and ._@+- only (at most 64)")
            return _Caller(name, key_identity(bearer_token(request.headers.get("authorization"))), None)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            return _error(401, "not signed in", "open the page and sign in with the API key")
        if writing and not (same_origin(request.headers, request.url.scheme)
                            and csrf_ok(session, request.headers.get(CSRF_HEADER))):
            return _error(403, "cross-site or token-less request refused", "use the review page (it sends the token)")
        return _Caller(session.reviewer, session.key_id, session)

    def signed_in(self, response: Response, session: Session) -> Response:
        response.set_cookie(COOKIE, session.id, max_age=int(self.session_hours * 3600), httponly=True,
                            samesite="strict", path="/")
        return response


def create_app(queue: ReviewQueue, *, api_key: str | None, reviewer: str, session_hours: float = 12.0,
               loopback: bool = True, review: ReviewParams | None = None) -> FastAPI:
    """The app over `queue`; `reviewer`: the default name for sign-ins and bearer calls without X-Reviewer;
    `review`: params.yaml `review:` (the wrong-key limit; its defaults when None)."""
    app = FastAPI(title="llmops review", docs_url=None, redoc_url=None, openapi_url=None)
    auth = _Auth(api_key, reviewer, session_hours, review or ReviewParams())
    if loopback:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK))

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.update({"Content-Security-Policy": _CSP, "X-Frame-Options": "DENY",
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                                 "Cache-Control": "no-store"})
        return response

    _add_pages(app, auth)
    _add_api(app, queue, auth.caller)
    return app


def _add_pages(app: FastAPI, auth: _Auth) -> None:
    @app.get("/")
    def page(request: Request) -> Response:
        if auth.sessions.get(request.cookies.get(COOKIE)) is not None:
            return FileResponse(STATIC / "review.html")
        if auth.api_key:
            return FileResponse(STATIC / "login.html")
        return auth.signed_in(FileResponse(STATIC / "review.html"), auth.sessions.create(auth.reviewer, None))

    @app.post("/login")
    async def login(request: Request) -> Response:
        if not same_origin(request.headers, request.url.scheme):
            return _error(403, "cross-site sign-in refused")
        form = await _form(request)
        name = (form.get("reviewer") or auth.reviewer).strip()
        ok = auth.key_ok(request, (form.get("key") or "").strip())
        if isinstance(ok, JSONResponse):
            return _too_many_page(ok) if "text/html" in request.headers.get("accept", "") else ok
        if not ok:
            return RedirectResponse("/?error=key", status_code=303)
        if not _REVIEWER.match(name):
            return RedirectResponse("/?error=name", status_code=303)
        return auth.signed_in(RedirectResponse("/", status_code=303), auth.sessions.create(name, auth.key_id))

    @app.post("/logout")
    def logout(request: Request) -> Response:
        who = auth.caller(request, writing=True)
        if isinstance(who, JSONResponse):
            return who
        auth.sessions.drop(request.cookies.get(COOKIE))
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in ("review.js", "review.css", "login.js"):
            return _error(404, "no such file")
        kind = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(STATIC / name, media_type=kind)


def _filters(request: Request) -> Filters:
    from llmops.timeparse import parse_time

    q = request.query_params
    status = q.get("status") or "pending"
    try:
        limit, offset = int(q.get("limit") or 200), int(q.get("offset") or 0)
    except ValueError:
        raise ReviewError("limit and offset must be integers", "e.g. limit=50") from None
    return Filters(status=None if status == "all" else status, model_version=q.get("model_version") or None,
                   rating=q.get("rating") or None, since=parse_time(q["since"]) if q.get("since") else None,
                   until=parse_time(q["until"]) if q.get("until") else None, limit=limit, offset=offset).check()


def _add_api(app: FastAPI, queue: ReviewQueue, caller: Any) -> None:
    @app.get("/api/session")
    def session(request: Request) -> Response:
        who = caller(request, writing=False)
        if isinstance(who, JSONResponse):
            return who
        return JSONResponse({"reviewer": who.reviewer, "key_id": who.key_id,
                             "csrf": who.session.csrf if who.session else None})

    @app.get("/api/items")
    def items(request: Request) -> Response:
        who = caller(request, writing=False)
        if isinstance(who, JSONResponse):
            return who
        try:
            flt = _filters(request)
            found = queue.items(flt)
            matching = queue.count(flt)
        except LlmopsError as exc:
            return _error(_status_of(exc), exc.cause, exc.fix)
        return JSONResponse({"items": [i.to_dict() for i in found], "matching": matching,
                             "counts": queue.counts(), "model_versions": queue.model_versions()})

    @app.get("/api/audit")
    def audit(request: Request, id: int | None = None) -> Response:
        who = caller(request, writing=False)
        if isinstance(who, JSONResponse):
            return who
        return JSONResponse({"decisions": queue.audit(id)})

    @app.post("/api/items/{feedback_id}/{action}")
    async def decide(request: Request, feedback_id: int, action: str) -> Response:
        who = caller(request, writing=True)
        if isinstance(who, JSONResponse):
            return who
        if action not in ACTIONS:
            return _error(404, f"no action {action!r}", "use accept, edit or reject")
        try:
            body = await _json_body(request)
            from starlette.concurrency import run_in_threadpool

            item = await run_in_threadpool(
                queue.decide, feedback_id, action, reviewer=who.reviewer, via="web", key_id=who.key_id,
                correction=body.get("correction"), rating=body.get("rating"), expect=body.get("expect", ["pending"]))
        except LlmopsError as exc:
            return _error(_status_of(exc), exc.cause, exc.fix)
        return JSONResponse({"item": item.to_dict(), "counts": queue.counts()})


async def _form(request: Request) -> dict[str, str]:
    """The sign-in form (application/x-www-form-urlencoded, bounded): its fields' first values."""
    from urllib.parse import parse_qs

    raw = await request.body()
    if len(raw) > 4096:
        return {}
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items() if v}


async def _json_body(request: Request) -> dict[str, Any]:
    """The decision's JSON object: {} when empty; `correction` a string, `rating` -1/0/1, `expect` statuses."""
    import json

    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ReviewError(f"body over {MAX_BODY} bytes", "send a shorter correction")
    if not raw.strip():
        return {}
    if "application/json" not in request.headers.get("content-type", ""):
        raise ReviewError("send the body as application/json", "set Content-Type: application/json")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise ReviewError("malformed JSON body", "send an object like {\"correction\": \"...\"}") from None
    if not isinstance(body, dict) or set(body) - {"correction", "rating", "expect"}:
        raise ReviewError("the body is an object with correction, rating and/or expect only", "drop other fields")
    if body.get("correction") is not None and not isinstance(body["correction"], str):
        raise ReviewError("correction must be a string", "send text")
    expect = body.get("expect", ["pending"])
    if expect is not None and (not isinstance(expect, list) or not all(isinstance(s, str) for s in expect)):
        raise ReviewError("expect must be a list of statuses or null", 'e.g. ["pending"]')
    return body
