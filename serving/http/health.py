"""Liveness and readiness answers that tell the truth: each probe is a list of named checks, and any failing
check turns the probe into a 503 that names it, so Kubernetes restarts (liveness) or stops routing to
(readiness) what is broken instead of trusting a constant 200."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse


class HealthState(enum.StrEnum):
    OK = "ok"
    UNHEALTHY = "unhealthy"


@dataclass
class Health:
    """Failed checks by name -> one-line reason; empty means healthy."""

    problems: dict[str, str] = field(default_factory=dict)

    def fail(self, check: str, reason: str) -> None:
        self.problems[check] = reason

    @property
    def state(self) -> HealthState:
        return HealthState.UNHEALTHY if self.problems else HealthState.OK


def health_response(health: Health, **extra: Any) -> JSONResponse:
    """200 `{"status": "ok"}` or 503 `{"status": "unhealthy", "problems": {...}}` (plus `extra`)."""
    body: dict[str, Any] = {"status": str(health.state), **extra}
    if health.problems:
        body["problems"] = health.problems
    return JSONResponse(body, status_code=200 if health.state is HealthState.OK else 503)


def ready_response(ready: bool, body: dict[str, Any]) -> JSONResponse:
    """200 when ready, else 503 with `Retry-After`, the body carrying `ready` and the caller's details."""
    return JSONResponse({"ready": ready, **body}, status_code=200 if ready else 503,
                        headers=None if ready else {"Retry-After": "2"})
