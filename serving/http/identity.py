"""A key's identity: a short fingerprint that the inference log stores with each request and checks feedback
against, so a caller can rate and correct only answers given to its own key (the key itself is never stored)."""

from __future__ import annotations

import hashlib


def key_identity(key: str | None) -> str | None:
    """`k_` + 16 hex digits of SHA-256 of the key; None when auth is off (no key configured)."""
    if not key:
        return None
    return "k_" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
