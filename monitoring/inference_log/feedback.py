"""`POST /v1/feedback` for any FastAPI app (the model server and the router add it through this one function).

Body: `{"request_id": str, "rating": -1 | 0 | 1 | null, "correction": str | null, "comment": str | null}` —
a rating (-1 bad, 0 neutral, 1 good), the answer the model should have given, or both. 200 with what was
recorded; 400 for a malformed body; 404 for a request id the log does not hold (the `x-request-id` of a
response). Auth is that of the app's other /v1 routes: the model server's middleware checks its API key on
every /v1 path; the router, which has no key of its own for proxied routes, checks `api_key` when given.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from llmops.errors import LlmopsError
from monitoring.inference_log.log import RATINGS, InferenceLog, UnknownRequest

PATH = "/v1/feedback"
_FIELDS = {"request_id", "rating", "correction", "comment"}
MAX_BODY = 256 * 1024


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    from serving.api import ApiError

    err = ApiError(status, message, param, code, headers)
    return JSONResponse(err.body(), status_code=status, headers=headers)


def parse_feedback(raw: bytes) -> dict[str, Any]:
    """The checked body, or ValueError("param: message") naming what is wrong."""
    if len(raw) > MAX_BODY:
        raise ValueError(f"body: over the {MAX_BODY}-byte limit")
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body: malformed JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ValueError("body: must be a JSON object with request_id and a rating and/or a correction")
    if unknown := sorted(set(body) - _FIELDS):
        raise ValueError(f"{unknown[0]}: unknown field (send request_id, rating, correction, comment)")
    rid = body.get("request_id")
    if not isinstance(rid, str) or not rid.strip() or len(rid) > 128:
        raise ValueError("request_id: must be the response's x-request-id (a non-empty string)")
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


def add_feedback_route(app: FastAPI, log: InferenceLog, *, api_key: str | None = None) -> None:
    """Add POST /v1/feedback to `app`, recording into `log`."""

    @app.post(PATH)
    async def feedback(request: Request) -> JSONResponse:
        if api_key:
            auth = request.headers.get("authorization", "")
            token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return _error(401, "missing or wrong API key: send Authorization: Bearer <key>", None,
                              "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        try:
            body = parse_feedback(await request.body())
        except ValueError as exc:
            param, _, message = str(exc).partition(": ")
            return _error(400, message, None if param == "body" else param)
        try:
            entry = await run_in_threadpool(log.feedback, body["request_id"], body["rating"], body["correction"],
                                            body["comment"])
        except UnknownRequest as exc:
            return _error(404, exc.cause, "request_id", "request_not_found")
        except LlmopsError as exc:
            return _error(400, exc.cause)
        return JSONResponse({"object": "feedback", "request_id": entry.request_id, "time": entry.time,
                             "rating": entry.rating, "correction": entry.correction, "comment": entry.comment})
