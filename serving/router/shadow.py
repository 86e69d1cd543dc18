"""Shadow mode: mirror a share of stable requests to the canary in the background (non-streaming), score its
answer against the stable one (ROUGE-L), never return it. The mirrored copy carries a marker signed by the
router for its request id (`x-llmops-internal`, serving/http/internal.py), which a client cannot forge; the
server's inference log skips only such copies."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from serving.http.internal import MARKER_HEADER, sign
from serving.router.context import RequestContext
from serving.router.split import STABLE
from serving.router.state import Backend, RouterState
from serving.router.stream import answer_text


class Mirror:
    def __init__(self, state: RouterState) -> None:
        self.state = state

    def wanted(self, ctx: RequestContext) -> bool:
        split = self.state.split
        return ctx.side == STABLE and self.state.canary is not None and split.shadow_percent > 0 and split.mirror()

    def start(self, ctx: RequestContext) -> asyncio.Future:
        """Spawn the mirror; resolve the returned future with the stable answer's text (None if it failed)."""
        stable_answer = asyncio.get_running_loop().create_future()
        assert self.state.canary is not None
        self.state.spawn(self.run(self.state.canary, ctx.path, ctx.request_json, ctx.headers, ctx.rid,
                                  stable_answer))
        return stable_answer

    def _count(self, version: str, outcome: str) -> None:
        self.state.metrics.shadow.labels(model_version=version, outcome=outcome).inc()

    async def _ask(self, canary: Backend, path: str, request_json: dict[str, Any], headers: dict[str, str],
                   rid: str) -> Any:
        state = self.state
        assert state.session is not None
        shadow_rid = f"{rid[:120]}-shadow"  # still a valid request id, so the server keeps it (and the marker fits)
        marker = sign(state.config.internal_secret, shadow_rid, "shadow")
        body = {k: v for k, v in request_json.items() if k not in ("stream", "stream_options")}
        try:
            async with state.session.post(canary.url + path, json=body, headers={
                    **headers, "x-request-id": shadow_rid, MARKER_HEADER: marker}) as resp:
                return await resp.json(content_type=None) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def run(self, canary: Backend, path: str, request_json: Any, headers: dict[str, str], rid: str,
                  stable_text: asyncio.Future) -> None:
        from llmops.modeling.text_metrics import rouge_l_f1

        state = self.state
        version = canary.model_version or "unknown"
        if state.shadows_in_flight >= state.params.shadow_max_in_flight or not isinstance(request_json, dict):
            self._count(version, "skipped")
            return
        state.shadows_in_flight += 1
        try:
            data = await self._ask(canary, path, request_json, headers, rid)
            reference = await stable_text
            if not isinstance(data, dict):
                self._count(version, "error")
                return
            if reference is None:
                self._count(version, "skipped")
                return
            candidate, _ = answer_text(path, data)
            state.metrics.shadow_similarity.labels(model_version=version).observe(rouge_l_f1(candidate, reference))
            self._count(version, "scored")
        finally:
            state.shadows_in_flight -= 1
