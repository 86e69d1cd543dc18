"""One answered request as the per-request hooks see it (contract C1), shared by the model server and the
router so the inference log stores the same record whichever of them it is plugged into.

A hook is `Callable[[RequestRecord], Awaitable[None] | None]`. The caller awaits an awaitable hook before the
response completes (non-streaming: before the body is returned; streaming: before `data: [DONE]`), so a log
that group-commits can make every acknowledged request durable; such a hook bounds its own wait (the inference
log: `write_timeout_s`, then the request is counted unlogged), so a stalled sink never holds a response. A hook's
exception is logged and never fails the request.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("llmops.serving")


@dataclass
class RequestRecord:
    """One answered generation request. `extra` may carry `mean_logprob` (mean log-probability of the
    generated tokens under the model, filled by the model server) and `tool` (a forced tool call's name)."""

    request_id: str
    route: str
    model: str
    model_version: str | None
    prompt: Any  # messages (chat/responses) or the prompt string
    response: str  # generated text (tool-call arguments for a tool call)
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ttft_s: float | None
    status: int
    finish_reason: str | None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0  # unix time the request started
    side: str | None = None  # "stable" / "canary" behind the router, None at a model server
    session: str | None = None  # the x-llmops-session header, if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RequestHook = Callable[[RequestRecord], Awaitable[None] | None]


async def run_hooks(hooks: list[RequestHook], record: RequestRecord) -> None:
    """Call every hook with `record`, awaiting the awaitable ones; a failing hook is logged, never raised."""
    for hook in hooks:
        try:
            result = hook(record)
            if inspect.isawaitable(result):
                await result
        except Exception:  # a broken log sink must never fail the request
            log.exception("request hook %r failed", hook)
