"""Bearer-token auth and API key reading, the one implementation for the model server, the router and the
feedback route.

A key comes from a key file (first line) or an environment variable. Surrounding whitespace is stripped (a
key file or secret usually ends in a newline, which would otherwise lock every client out); a key that is
set but empty or all whitespace is a startup error naming where it came from, never a silent "auth off".
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from llmops.errors import LlmopsError
from serving.http.throttle import FailureLimit

KEY_ENV = "LLMOPS_API_KEY"
KEY_FILE_ENV = "LLMOPS_API_KEY_FILE"
AUTH_HEADERS = {"WWW-Authenticate": "Bearer"}
UNAUTHORIZED = "missing or wrong API key: send Authorization: Bearer <key>"
TOO_MANY = "too many wrong API keys from this address: retry after {wait} s (Retry-After)"


def _key_from_file(key_file: Path) -> str:
    try:
        lines = key_file.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise LlmopsError(f"cannot read the API key file {key_file}: {why}",
                          "pass a readable file holding the key on its first line") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise LlmopsError(f"the API key file {key_file} is empty", "write the key on its first line")
    return key


def read_api_key(env_name: str = KEY_ENV, key_file: Path | str | None = None, *,
                 file_env: str | None = KEY_FILE_ENV) -> str | None:
    """The bearer token, or None for "no auth" (neither source set).

    `key_file` wins; without it, the file named by `file_env` (LLMOPS_API_KEY_FILE), then `env_name`.
    Set-but-empty (or whitespace-only) is an error that names the variable or file."""
    if key_file is None and file_env:
        named = os.environ.get(file_env)
        if named is not None:
            if not named.strip():
                raise LlmopsError(f"{file_env} is set but empty",
                                  f"point {file_env} at the key file, or unset it")
            key_file = named.strip()
    if key_file is not None:
        return _key_from_file(Path(key_file))
    raw = os.environ.get(env_name)
    if raw is None:
        return None
    key = raw.strip()
    if not key:
        raise LlmopsError(f"{env_name} is set but empty (or only whitespace): that would turn auth off",
                          f"set {env_name} to the API key, or unset it to serve without auth")
    return key


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header value ("" when absent or another scheme)."""
    if not authorization:
        return ""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _authorization(headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]] | str | None) -> str:
    if headers is None or isinstance(headers, str):
        return headers or ""
    if isinstance(headers, Mapping):
        return str(headers.get("authorization", ""))
    for name, value in headers:  # ASGI scope headers
        if name.lower() == b"authorization":
            return value.decode("latin-1")
    return ""


def token_matches(token: str, expected: str) -> bool:
    """Constant-time `token == expected` (a bearer token against the API key or the router's admin token);
    an empty token never matches."""
    return bool(token) and hmac.compare_digest(token.encode("utf-8", "surrogatepass"), expected.encode())


def is_authorized(headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]] | str | None,
                  key: str | None) -> bool:
    """True when no key is configured or the request's bearer token equals it (constant-time compare).

    `headers` is a header mapping (lower-case names, e.g. Starlette's), ASGI scope headers, or the
    Authorization value itself."""
    if not key:
        return True
    return token_matches(bearer_token(_authorization(headers)), key)


class Verdict(NamedTuple):
    ok: bool
    retry_after: int = 0  # > 0: refused unchecked, too many wrong keys from this address (429 + Retry-After)


class KeyGuard:
    """The API key with a limit on wrong keys per client address (throttle.py), for the model server, the router
    (its proxy and its feedback route share one guard) and the review page: without it a client could try keys
    as fast as the server answers 401s. No key: auth off."""

    def __init__(self, key: str | None, failures: int, window_s: float) -> None:
        self.key = key
        self.limit = FailureLimit(failures, window_s) if key else None

    def check(self, headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]] | str | None, address: str) -> Verdict:
        """A request's bearer token (headers as `is_authorized` takes them) from `address`."""
        return self.check_token(bearer_token(_authorization(headers)), address)

    def check_token(self, token: str, address: str) -> Verdict:
        if self.limit is None or self.key is None:
            return Verdict(True)
        if wait := self.limit.take(address):
            return Verdict(False, wait)
        if not token_matches(token, self.key):
            return Verdict(False)
        self.limit.give_back(address)
        return Verdict(True)


def peer_address(scope: Mapping) -> str:
    """The TCP peer of an ASGI connection (X-Forwarded-For is not believed: anyone can send it)."""
    client = scope.get("client")
    return str(client[0]) if client else ""
