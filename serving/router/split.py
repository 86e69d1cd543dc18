"""Which side a request goes to: an exact weighted split, sticky sessions, and the shadow share.

Exact, not merely random: requests without a session are dealt from shuffled blocks of 100 holding exactly
`canary_percent` canary slots, so every complete block of 100 sends exactly that many to the canary (a coin
flip per request is off by ±4 at 25% over 100 requests), while the order inside a block stays random, so a
load generator that cycles through prompts cannot put one kind of prompt on one side. A weight change starts
a fresh block at once.

Sticky: a session id hashes to a bucket in [0, 100) and goes to the canary iff bucket < canary_percent, so
a session stays on its side while the weight does not move past its bucket (raising 10% -> 25% keeps every
canary session on the canary and moves only buckets 10..24 over). The hash is keyed with the deployment's
internal secret, so a client cannot compute offline which session ids land on which side and pick its side.
"""

from __future__ import annotations

import hashlib
import random

STABLE, CANARY = "stable", "canary"


def session_bucket(session: str, key: bytes = b"") -> int:
    """A session id's fixed bucket in [0, 100): the same in every router process sharing `key` (no per-process
    hash seed), unpredictable without it."""
    digest = hashlib.blake2b(session.encode("utf-8", "surrogatepass"), digest_size=8, key=key[:64]).digest()
    return int.from_bytes(digest, "big") % 100


def check_percent(value: object, name: str) -> int:
    """An integer percentage in 0..100, else ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"{name} must be an integer from 0 to 100 (got {value!r})")
    return value


class _Blocks:
    """Deals True exactly `percent` times in every block of 100, in a random order inside the block."""

    def __init__(self, percent: int, rng: random.Random) -> None:
        self.percent, self._rng, self._block = percent, rng, []

    def next(self) -> bool:
        if self.percent <= 0:
            return False
        if self.percent >= 100:
            return True
        if not self._block:
            self._block = [True] * self.percent + [False] * (100 - self.percent)
            self._rng.shuffle(self._block)
        return self._block.pop()


class Split:
    """The router's live split. Not thread-safe by design: the router calls it from its one event loop."""

    def __init__(self, canary_percent: int = 0, shadow_percent: int = 0, seed: int | None = None,
                 session_key: bytes = b"") -> None:
        self._rng = random.Random(seed)
        self.session_key = session_key
        self._canary = _Blocks(check_percent(canary_percent, "canary_percent"), self._rng)
        self._shadow = _Blocks(check_percent(shadow_percent, "shadow_percent"), self._rng)

    @property
    def canary_percent(self) -> int:
        return self._canary.percent

    @property
    def shadow_percent(self) -> int:
        return self._shadow.percent

    def set_canary_percent(self, percent: int) -> None:
        self._canary = _Blocks(check_percent(percent, "canary_percent"), self._rng)

    def set_shadow_percent(self, percent: int) -> None:
        self._shadow = _Blocks(check_percent(percent, "shadow_percent"), self._rng)

    def side(self, session: str | None = None) -> str:
        """STABLE or CANARY for one request (the caller sends it to stable when no canary is set)."""
        percent = self._canary.percent
        if session and 0 < percent < 100:
            return CANARY if session_bucket(session, self.session_key) < percent else STABLE
        return CANARY if self._canary.next() else STABLE

    def mirror(self) -> bool:
        """Whether a stable-bound request is also mirrored to the canary (shadow mode)."""
        return self._shadow.next()
