"""Failed key checks per client address, so an API key cannot be guessed at speed (the model server, the router
and the review page).

A token bucket per address: `burst` tries, refilled at burst / window per second. A key check takes a token before
the key is compared; a correct key gives it back, so clients with the key are never slowed, and a wrong one keeps
it spent. With no token left the address is answered 429 with Retry-After and its key is not even compared: while
refused, a right guess looks like a wrong one, so the API cannot be used as an oracle either. The address is the
TCP peer's (X-Forwarded-For is not believed: anyone can send it); clients behind one proxy share its bucket.
Buckets live in memory; full ones are forgotten once `max_clients` addresses are held, then the stalest, so many
addresses cannot grow it without bound.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class FailureLimit:
    def __init__(self, burst: int, window_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000) -> None:
        self.burst, self.rate = float(burst), burst / window_s
        self._clock, self._max = clock, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)
        self._lock = threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, then = self._buckets.get(address, (self.burst, now))
        return min(self.burst, tokens + (now - then) * self.rate)

    def take(self, address: str) -> int:
        """0 when `address` may try a key now (a token is taken), else the seconds until it may (Retry-After)."""
        with self._lock:
            now = self._clock()
            tokens = self._tokens(address, now)
            if tokens < 1:
                return max(1, math.ceil((1 - tokens) / self.rate))
            self._buckets[address] = (tokens - 1, now)
            if len(self._buckets) > self._max:
                self._prune(now)
            return 0

    def give_back(self, address: str) -> None:
        """The key was right: the try is not counted."""
        with self._lock:
            now = self._clock()
            self._buckets[address] = (min(self.burst, self._tokens(address, now) + 1), now)

    def _prune(self, now: float) -> None:
        self._buckets = {a: b for a, b in self._buckets.items() if self._tokens(a, now) < self.burst}
        while len(self._buckets) > self._max:
            del self._buckets[min(self._buckets, key=lambda a: self._buckets[a][1])]
