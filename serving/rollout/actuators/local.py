"""The local actuator: drives `llmops router` through its token-protected admin API (contract C2).

Weights, backends and the per-side window all come from the router itself, so the controller sees exactly
the requests the router split. Every admin call is retried briefly (a router restarting for a second must
not turn an abort into a crash); a call that still fails raises RolloutError naming the router and the fix.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from serving.rollout.actuators.base import Actuator, SideStats, WindowStats
from serving.rollout.errors import RolloutError

TOKEN_ENV = "LLMOPS_ROUTER_ADMIN_TOKEN"  # the router's own (serving/router/state.py); read here, never created


def read_admin_token(state_dir: Path) -> str:
    """LLMOPS_ROUTER_ADMIN_TOKEN, else `<state_dir>/router/admin-token` (written by the router at first start)."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    path = Path(state_dir) / "router" / "admin-token"
    if not token and path.is_file():
        token = path.read_text().strip()
    if not token:
        raise RolloutError(f"no router admin token ({TOKEN_ENV} is unset and {path} does not exist)",
                           f"start the router once (`llmops router`) or set {TOKEN_ENV} to its token")
    return token


def _side(data: dict[str, Any]) -> SideStats:
    return SideStats(requests=int(data.get("requests") or 0), errors=int(data.get("errors") or 0),
                     latency_p95_s=data.get("latency_p95_s"), ttft_p95_s=data.get("ttft_p95_s"))


class LocalRouterActuator(Actuator):
    """Acts on one running `llmops router` at `router_url`."""

    name = "local"

    def __init__(self, router_url: str, token: str, *, canary_url: str | None = None, timeout_s: float = 10.0,
                 retries: int = 3) -> None:
        self.router_url = router_url.rstrip("/")
        self.canary_url = canary_url.rstrip("/") if canary_url else None
        self._client = httpx.Client(base_url=self.router_url, timeout=timeout_s,
                                    headers={"Authorization": f"Bearer {token}"})
        self._retries = retries

    def spec(self) -> dict[str, Any]:
        """What the rollout state records to rebuild this actuator on resume/abort (never the token)."""
        return {"kind": self.name, "router_url": self.router_url, "canary_url": self.canary_url}

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        last = ""
        for attempt in range(self._retries):
            try:
                resp = self._client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 400:
                    return resp.json()
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if resp.status_code < 500:
                    break  # a refusal (bad token, bad body) does not get better by retrying
            time.sleep(0.2 * (attempt + 1))
        raise RolloutError(f"router {self.router_url} {method} {path} failed: {last}",
                           "check that `llmops router` runs there and the admin token matches "
                           f"({TOKEN_ENV} or <state_dir>/router/admin-token)")

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/admin/state")

    def attach_canary(self, canary_url: str) -> dict[str, Any]:
        """Put the candidate's server behind the router as the canary at 0% (the rollout's first act)."""
        current = self.state()
        self.canary_url = canary_url.rstrip("/")
        return self._call("PUT", "/admin/backends", json={"stable": current["stable"]["url"],
                                                          "canary": self.canary_url, "canary_percent": 0})

    def set_canary_weight(self, percent: int) -> None:
        if not 0 <= int(percent) <= 100:
            raise RolloutError(f"canary weight {percent} is outside 0..100")
        got = self._call("PUT", "/admin/weight", json={"canary_percent": int(percent)})
        if int(got.get("canary_percent", -1)) != int(percent):
            raise RolloutError(f"router {self.router_url} reports canary weight {got.get('canary_percent')} "
                               f"after setting {percent}", "check the router's log")

    def window(self, since: float, until: float) -> WindowStats:
        data = self._call("GET", "/admin/window", params={"since": since, "until": until})
        return WindowStats(stable=_side(data["stable"]), canary=_side(data["canary"]))

    def endpoints(self) -> tuple[str, str]:
        state = self.state()
        canary = (state.get("canary") or {}).get("url") or self.canary_url
        if not canary:
            raise RolloutError(f"router {self.router_url} has no canary backend", "start the rollout again")
        return state["stable"]["url"], canary

    def promote(self) -> None:
        state = self.state()
        canary = (state.get("canary") or {}).get("url") or self.canary_url
        if state.get("canary") is None and state["stable"]["url"] == canary:
            return  # already promoted (a resumed promotion)
        if not canary:
            raise RolloutError(f"router {self.router_url} has no canary to promote", "see `llmops canary status`")
        self._call("PUT", "/admin/backends", json={"stable": canary, "canary": None, "canary_percent": 0})

    def abort(self) -> None:
        self._call("PUT", "/admin/weight", json={"canary_percent": 0})

    def close(self) -> None:
        self._client.close()
