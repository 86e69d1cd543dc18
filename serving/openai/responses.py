"""POST /v1/responses: OpenAI's Responses API (text in, one message out; json output formats) over the
generation service."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.api import ApiError, ResponsesRequest
from serving.generation import GenerationService, Job
from serving.generation_prompt import encode_chat
from serving.openai.chat import format_constraint
from serving.openai.common import collect, prepare, sse, stream
from serving.scheduler import Sequence

ROUTE = "/v1/responses"
ROLES = ("user", "assistant", "system", "developer")
router = APIRouter()


def _item_text(i: int, item: Any) -> tuple[str, str]:
    if not isinstance(item, dict):
        raise ApiError(400, f"input[{i}] must be a message object", f"input.{i}")
    role, content = item.get("role"), item.get("content")
    if item.get("type", "message") != "message" or role not in ROLES:
        raise ApiError(400, f"input[{i}] must be a message with role user/assistant/system/developer", f"input.{i}")
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        if any(not isinstance(t, str) for t in texts) or len(texts) != len(content):
            raise ApiError(400, f"input[{i}].content supports text parts only", f"input.{i}.content")
        content = "".join(texts)
    if not isinstance(content, str):
        raise ApiError(400, f"input[{i}].content must be a string or text parts", f"input.{i}.content")
    return ("system" if role == "developer" else role), content


def build_job(service: GenerationService, req: ResponsesRequest) -> Job:
    if req.tools:
        raise ApiError(400, "tools are not supported on /v1/responses; use /v1/chat/completions with a forced "
                       "tool_choice", "tools", "unsupported_parameter")
    msgs: list[dict[str, str]] = []
    if req.instructions:
        msgs.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        msgs.append({"role": "user", "content": req.input})
    else:
        for i, item in enumerate(req.input):
            role, content = _item_text(i, item)
            msgs.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in msgs):
        raise ApiError(400, "input must contain at least one user message", "input")
    constraint = format_constraint(service, req.text.format if req.text else None, "text.format")
    ids = encode_chat(service.engine.tokenizer, msgs)
    sampling = service.sampling_for(len(ids), req.max_output_tokens, req.temperature, req.top_p, None, None,
                                    "max_output_tokens")
    return Job(ROUTE, ids, msgs, sampling, constraint)


def _done_status(finish: str) -> str:
    return "incomplete" if finish == "length" else "completed"


class _Shaper:
    """One response's wire shapes: the response object, and the stream's typed events."""

    def __init__(self, req: ResponsesRequest, job: Job) -> None:
        self.req, self.job = req, job
        self.id, self.mid, self.created = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}", int(time.time())
        self.where = {"item_id": self.mid, "output_index": 0, "content_index": 0}
        self.n = 0
        self.parts: list[str] = []
        fmt = req.text.format if req.text else None
        self.fmt = fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}

    def item(self, text: str, status: str) -> dict[str, Any]:
        return {"id": self.mid, "type": "message", "status": status, "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}

    def response(self, status: str, output: list[dict[str, Any]], seq: Sequence | None,
                 finish: str | None) -> dict[str, Any]:
        req, sampling = self.req, self.job.sampling
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "model": req.model, "output": output, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if finish == "length" else None,
                "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
                "metadata": req.metadata or {}, "parallel_tool_calls": False,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "tool_choice": "none",
                "tools": [], "text": {"format": self.fmt}, "truncation": "disabled",
                "usage": None if seq is None else {
                    "input_tokens": len(seq.prompt_ids), "output_tokens": len(seq.generated),
                    "total_tokens": len(seq.prompt_ids) + len(seq.generated),
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 0}}}

    def whole(self, seq: Sequence, text: str, finish: str) -> dict[str, Any]:
        return self.response(_done_status(finish), [self.item(text, "completed")], seq, finish)

    def event(self, kind: str, data: dict[str, Any]) -> str:
        data = {"type": kind, "sequence_number": self.n, **data}
        self.n += 1
        return sse(data, kind)

    def __call__(self, kind: str, value: str, seq: Sequence) -> list[str]:
        ev, where = self.event, self.where
        if kind == "start":
            started = self.response("in_progress", [], None, None)
            return [ev("response.created", {"response": started}),
                    ev("response.in_progress", {"response": started}),
                    ev("response.output_item.added", {"output_index": 0,
                                                      "item": {**self.item("", "in_progress"), "content": []}}),
                    ev("response.content_part.added", {**where, "part": self.item("", "")["content"][0]})]
        if kind == "delta":
            self.parts.append(value)
            return [ev("response.output_text.delta", {**where, "delta": value, "logprobs": []})]
        text = "".join(self.parts)
        return [ev("response.output_text.done", {**where, "text": text, "logprobs": []}),
                ev("response.content_part.done", {**where, "part": self.item(text, "")["content"][0]}),
                ev("response.output_item.done", {"output_index": 0, "item": self.item(text, "completed")}),
                ev(f"response.{_done_status(value)}", {"response": self.whole(seq, text, value)})]


@router.post(ROUTE)
async def responses(request: Request) -> Response:
    req, job = await prepare(request, ResponsesRequest, build_job)
    shaper = _Shaper(req, job)
    if not req.stream:
        seq, text, finish = await collect(job, request)
        return JSONResponse(shaper.whole(seq, text, finish))
    return await stream(job, request, shaper, lambda seq: [], error_event="error")
