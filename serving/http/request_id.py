"""Request ids: a client's `x-request-id` is kept only when it is a plain token (letters, digits, `._:-`, at
most 128); anything else, a trailing newline included (`re.match` with `$` accepts one), gets a fresh id."""

from __future__ import annotations

import re
import uuid

REQUEST_ID_HEADER = "x-request-id"
_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def valid_request_id(value: str | None) -> bool:
    return bool(value) and _PATTERN.fullmatch(value) is not None  # type: ignore[arg-type]


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def request_id_from(value: str | None) -> str:
    """The client's id when valid, else a new one."""
    return value if valid_request_id(value) else new_request_id()  # type: ignore[return-value]
