"""The router's live state: its backends, the split, its metrics and window, and the secrets it acts with (the
admin token for /admin, the API key clients must present, the internal secret it signs internal headers with)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.registry import Collector

from llmops.params import RouterParams
from serving.http.auth import KeyGuard
from serving.http.identity import key_identity
from serving.records import RequestHook
from serving.router.metrics import RouterMetrics, Window
from serving.router.split import Split, check_percent

log = logging.getLogger("llmops.router")
TOKEN_ENV = "LLMOPS_ROUTER_ADMIN_TOKEN"
IdExists = Callable[[str], Awaitable[bool]]


def admin_token(state_dir: Path) -> str:
    """The admin bearer token: LLMOPS_ROUTER_ADMIN_TOKEN, else `<state_dir>/router/admin-token` (created 0600)."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = state_dir / "router" / "admin-token"
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def check_url(url: object, name: str) -> str:
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise ValueError(f"{name} must be an http(s) base URL such as http://127.0.0.1:8000 (got {url!r})")
    return url.rstrip("/").removesuffix("/v1")


@dataclass
class Backend:
    url: str
    model_version: str | None = None
    checked_at: float = -1e9  # monotonic time of the last version lookup (an unknown version is retried, slowly)

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "model_version": self.model_version}


@dataclass
class RouterConfig:
    """What `create_router_app` is given besides the params and the backends."""

    token: str  # the admin token
    api_key: str | None = None  # the clients' bearer key (the servers' key); None = auth off
    internal_secret: bytes = b""  # signs internal headers and keys the session hash
    hooks: tuple[RequestHook, ...] = ()
    id_exists: IdExists | None = None  # is a client's x-request-id already logged? (then 409)
    seed: int | None = None
    collectors: tuple[Collector, ...] = ()  # more Prometheus series for /metrics (the inference log's health)


class RouterState:
    def __init__(self, params: RouterParams, stable: str, canary: str | None, canary_percent: int,
                 shadow_percent: int, config: RouterConfig) -> None:
        self.params, self.config = params, config
        self.token, self.hooks, self.api_key = config.token, list(config.hooks), config.api_key
        self.key_id = key_identity(config.api_key)
        self.guard = KeyGuard(config.api_key, params.auth_failures, params.auth_window_s)
        self.split = Split(canary_percent, shadow_percent, config.seed, session_key=config.internal_secret)
        self.stable = Backend(check_url(stable, "stable"))
        self.canary = Backend(check_url(canary, "canary")) if canary else None
        if canary_percent and not self.canary:
            raise ValueError("canary_percent > 0 needs a canary backend")
        self.metrics = RouterMetrics()
        for collector in config.collectors:
            self.metrics.registry.register(collector)
        self.window = Window(params.window_observations)
        self.session: aiohttp.ClientSession | None = None
        self.background: set[asyncio.Task] = set()
        self.shadows_in_flight = 0
        self.gauges()

    def gauges(self) -> None:
        self.metrics.canary_weight.set(self.split.canary_percent if self.canary else 0)
        self.metrics.shadow_weight.set(self.split.shadow_percent if self.canary else 0)

    def snapshot(self) -> dict[str, Any]:
        return {"canary_percent": self.split.canary_percent, "shadow_percent": self.split.shadow_percent,
                "stable": self.stable.to_json(), "canary": self.canary.to_json() if self.canary else None}

    def set_weight(self, percent: int) -> None:
        check_percent(percent, "canary_percent")
        if percent and not self.canary:
            raise ValueError("no canary backend is set: PUT /admin/backends with a canary URL first")
        self.split.set_canary_percent(percent)
        self.gauges()

    def set_backends(self, stable: str, canary: str | None, percent: int, shadow: int | None = None) -> None:
        check_percent(percent, "canary_percent")
        stable_b = Backend(check_url(stable, "stable"))
        canary_b = Backend(check_url(canary, "canary")) if canary else None
        if percent and not canary_b:
            raise ValueError("canary_percent > 0 needs a canary URL")
        for new in (stable_b, canary_b):  # keep a known version when the URL does not change
            if new is not None:
                old = next((b for b in (self.stable, self.canary) if b and b.url == new.url), None)
                new.model_version = old.model_version if old else None
        self.stable, self.canary = stable_b, canary_b
        self.split.set_canary_percent(percent)
        if shadow is not None:
            self.split.set_shadow_percent(shadow)
        self.gauges()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def refresh_version(self, backend: Backend) -> None:
        """The backend's model version from its /v1/models (our server reports `version`); best effort."""
        assert self.session is not None
        backend.checked_at = time.monotonic()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            async with self.session.get(f"{backend.url}/v1/models", headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=self.params.connect_timeout_s + 3)) as r:
                data = await r.json(content_type=None)
            version = (data.get("data") or [{}])[0].get("version")
            backend.model_version = None if version is None else str(version)
        except Exception as exc:  # unknown until the backend answers; requests still flow
            log.debug("cannot read the model version of %s: %s", backend.url, exc)
