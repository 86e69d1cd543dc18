"""OpenAI's error shape, and whose fault a status is, one definition for every HTTP surface of the project."""

from __future__ import annotations

from typing import Any

_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def error_type(status: int) -> str:
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}` as OpenAI answers it."""
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


# The statuses that are the server's fault although below 500: it timed out or shed load.
SIDE_FAULTS = {408: "timeout", 429: "rate_limited"}


def client_caused(status: int) -> bool:
    """A 4xx the client caused (bad input, no key, too large, disconnected): says nothing about the server, so
    it is neither an error nor a latency sample (the router's canary window and the server's histogram)."""
    return 400 <= status < 500 and status not in SIDE_FAULTS
