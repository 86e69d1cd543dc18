"""`POST /v1/feedback` for any FastAPI app (the model server and the router add it through this one function).

Body: `{"request_id": str, "rating": -1 | 0 | 1 | null, "correction": str | null, "comment": str | null}` —
a rating (-1 bad, 0 neutral, 1 good), the answer the model should have given, or both. 200 with what was
recorded; 400 for a malformed body; 413 for a body over 256 KiB, answered before it is read (from its
Content-Length, or as soon as a chunked body passes the limit); 404 for a request id the log does not hold
(the `x-request-id` of a response) or holds for another key. Auth: with `api_key`, the bearer key is checked
here before anything is read (the router); without it the app's own middleware checks it (the model server).
Feedback is bound to the caller's key identity: corrections become training data, so a caller may correct only
the answers given to its own key. It lands *pending* (`"review": "pending"` in the answer): only what a reviewer
accepts in `llmops review` (monitoring/review) can be exported for training.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from llmops.errors import LlmopsError
from monitoring.inference_log.log import RATINGS, InferenceLog, UnknownRequest
from serving.http.auth import KeyGuard
from serving.http.request_id import valid_request_id

PATH = "/v1/feedback"
_FIELDS = {"request_id", "rating", "correction", "comment"}
MAX_BODY = 256 * 1024


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    from serving.http.errors import error_body

    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def parse_feedback(raw: bytes) -> dict[str, Any]:
    """The checked body, or ValueError("param: message") naming what is wrong."""
    if len(raw) > MAX_BODY:
        raise ValueError(f"body: over the {MAX_BODY}-byte limit")
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"body: malformed JSON ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise ValueError("body: must be a JSON object with request_id and a rating and/or a correction")
    if unknown := sorted(set(body) - _FIELDS):
        raise ValueError(f"{unknown[0]}: unknown field (send request_id, rating, correction, comment)")
    rid = body.get("request_id")
    if not isinstance(rid, str) or not valid_request_id(rid):  # the servers' and router's own rule
        raise ValueError("request_id: must be the response's x-request-id (letters, digits, ._:- up to 128)")
    rating = body.get("rating")
    if rating is not None and (isinstance(rating, bool) or rating not in RATINGS):
        raise ValueError(f"rating: must be -1 (bad), 0 (neutral) or 1 (good), got {rating!r}")
    for name in ("correction", "comment"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise ValueError(f"{name}: must be a string or null")
    if rating is None and body.get("correction") is None and not body.get("comment"):
        raise ValueError("body: send a rating, a correction or a comment")
    return {"request_id": rid, "rating": None if rating is None else int(rating),
            "correction": body.get("correction"), "comment": body.get("comment")}


async def read_bounded(request: Request, limit: int = MAX_BODY) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` (declared length, or bytes received)."""
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        return None
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def add_feedback_route(app: FastAPI, log: InferenceLog, *, guard: KeyGuard | None = None) -> None:
    """Add POST /v1/feedback to `app`, recording into `log`; `guard` checks the key (the router passes its own, so
    wrong keys here count against the same address as on its proxied routes)."""
    from serving.http.auth import AUTH_HEADERS, TOO_MANY, UNAUTHORIZED, bearer_token, peer_address
    from serving.http.identity import key_identity

    @app.post(PATH)
    async def feedback(request: Request) -> JSONResponse:
        verdict = guard.check(request.headers, peer_address(request.scope)) if guard else None
        if verdict is not None and verdict.retry_after:
            return _error(429, TOO_MANY.format(wait=verdict.retry_after), None, "rate_limit_exceeded",
                          {"Retry-After": str(verdict.retry_after)})
        if verdict is not None and not verdict.ok:
            return _error(401, UNAUTHORIZED, None, "invalid_api_key", AUTH_HEADERS)
        raw = await read_bounded(request)
        if raw is None:
            return _error(413, f"the feedback body is over the {MAX_BODY}-byte limit", None, "body_too_large")
        try:
            body = parse_feedback(raw)
        except ValueError as exc:
            param, _, message = str(exc).partition(": ")
            return _error(400, message, None if param == "body" else param)
        caller = key_identity(bearer_token(request.headers.get("authorization")))
        try:
            entry = await run_in_threadpool(log.feedback, body["request_id"], body["rating"], body["correction"],
                                            body["comment"], key_id=caller)
        except UnknownRequest as exc:
            return _error(404, exc.cause, "request_id", "request_not_found")
        except LlmopsError as exc:
            return _error(400, exc.cause)
        return JSONResponse({"object": "feedback", "request_id": entry.request_id, "time": entry.time,
                             "rating": entry.rating, "correction": entry.correction, "comment": entry.comment,
                             "review": "pending"})
