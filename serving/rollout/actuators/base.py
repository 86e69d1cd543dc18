"""The one interface a rollout controller acts through (contract C4).

The controller decides (weights, verdicts); an actuator only executes and observes. The local router
(`local.py`) and a KServe InferenceService (`kserve.py`) implement the same five calls, so the step loop,
the analysis and the durable state are shared by both.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class SideStats:
    """One side's observations over a window: requests that ENDED in it, errors among them, tail latencies."""

    requests: int
    errors: int
    latency_p95_s: float | None
    ttft_p95_s: float | None


@dataclass(frozen=True)
class WindowStats:
    """Stable and canary over the same [since, until) window, so they are compared under the same load."""

    stable: SideStats
    canary: SideStats


class Actuator(abc.ABC):
    """Executes a rollout's traffic decisions on one platform."""

    name: str

    @abc.abstractmethod
    def set_canary_weight(self, percent: int) -> None:
        """Send exactly `percent` (0..100) of new requests to the canary; requests in flight are unaffected."""

    @abc.abstractmethod
    def window(self, since: float, until: float) -> WindowStats:
        """Per-side stats of requests that ended in [since, until) (unix seconds)."""

    @abc.abstractmethod
    def endpoints(self) -> tuple[str, str]:
        """Base URLs reaching (stable, canary) directly, bypassing the split (the quality probe uses them)."""

    @abc.abstractmethod
    def promote(self) -> None:
        """Make the canary the stable side and set the canary weight to 0."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Set the canary weight to 0 at once; the stable side is left untouched."""
