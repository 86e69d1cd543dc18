"""POST /v1/chat/completions: chat messages (and one forced tool call) over the generation service."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.api import ApiError, ChatRequest, ResponseFormat, Tool, ToolChoice
from serving.generation import GenerationService, Job
from serving.generation_prompt import encode_chat
from serving.openai.common import collect, done_chunks, prepare, sse, stream, usage
from serving.scheduler import Sequence
from serving.structured import Constraint

ROUTE = "/v1/chat/completions"
router = APIRouter()


def format_constraint(service: GenerationService, fmt: ResponseFormat | None, param: str) -> Constraint | None:
    """`response_format` (chat) or `text.format` (responses) -> the constraint it asks for, if any."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return service.constraint_for_schema({"type": "object"}, param)
    schema = fmt.schema_object()
    if not isinstance(schema, dict):
        raise ApiError(400, f"{param}.json_schema.schema must be a JSON Schema object", param)
    return service.constraint_for_schema(schema, param)


def _messages(req: ChatRequest) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = []
    for m in req.messages:
        role = "system" if m.role == "developer" else m.role
        content = m.text()
        if m.role == "assistant" and m.tool_calls:
            content = content or json.dumps([c.function.model_dump() for c in m.tool_calls])
        if m.role == "tool":
            role, content = "user", f"Tool result ({m.tool_call_id or 'call'}): {content}"
        msgs.append({"role": role, "content": content})
    return msgs


def _forced_tool(req: ChatRequest) -> Tool:
    tools, choice = req.tools or [], req.tool_choice
    if isinstance(choice, ToolChoice):
        match = [t for t in tools if t.function.name == choice.function.name]
        if not match:
            raise ApiError(400, f"tool_choice names function {choice.function.name!r}, which is not in tools",
                           "tool_choice")
        return match[0]
    if choice == "required" and len(tools) == 1:
        return tools[0]
    raise ApiError(400, "only a forced tool call is supported: set tool_choice to "
                   '{"type": "function", "function": {"name": ...}} (or "required" with one tool)',
                   "tool_choice", "unsupported_parameter")


def _tool_constraint(service: GenerationService, req: ChatRequest, msgs: list[dict[str, str]]
                     ) -> tuple[Constraint, str]:
    """The forced tool call: a system hint naming the function, and its parameters' schema as constraint."""
    tool = _forced_tool(req)
    name, schema = tool.function.name, tool.function.parameters or {"type": "object"}
    if req.response_format and req.response_format.type != "text":
        raise ApiError(400, "response_format cannot be combined with a forced tool call", "response_format")
    constraint = service.constraint_for_schema(schema, "tools")
    described = f" ({tool.function.description})" if tool.function.description else ""
    hint = (f"Call the function `{name}`{described}. Reply with only its JSON arguments, matching this JSON "
            f"schema: {json.dumps(schema)}")
    if msgs and msgs[0]["role"] == "system":
        msgs[0] = {"role": "system", "content": msgs[0]["content"] + "\n\n" + hint}
    else:
        msgs.insert(0, {"role": "system", "content": hint})
    return constraint, name


def build_job(service: GenerationService, req: ChatRequest) -> Job:
    if not req.messages:
        raise ApiError(400, "messages must not be empty", "messages")
    msgs = _messages(req)
    constraint, tool_name = None, None
    if req.tools and req.tool_choice != "none":
        constraint, tool_name = _tool_constraint(service, req, msgs)
    elif req.tool_choice not in (None, "none"):
        raise ApiError(400, "tool_choice needs tools", "tool_choice")
    else:
        constraint = format_constraint(service, req.response_format, "response_format")
    ids = encode_chat(service.engine.tokenizer, msgs)
    max_tokens = req.max_completion_tokens or req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    sampling = service.sampling_for(len(ids), max_tokens, req.temperature, req.top_p, req.seed, req.stop, param)
    return Job(ROUTE, ids, msgs, sampling, constraint, tool_name)


class _Shaper:
    """One chat completion's wire shapes (whole message, or stream chunks)."""

    def __init__(self, req: ChatRequest, job: Job, fingerprint: str) -> None:
        self.req, self.job, self.fingerprint = req, job, fingerprint
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.call_id = f"call_{uuid.uuid4().hex[:24]}"

    def finish(self, reason: str) -> str:
        return "tool_calls" if self.job.tool_name and reason == "stop" else reason

    def message(self, text: str) -> dict[str, Any]:
        if self.job.tool_name:
            return {"role": "assistant", "content": None, "tool_calls": [{
                "id": self.call_id, "type": "function", "function": {"name": self.job.tool_name, "arguments": text}}]}
        return {"role": "assistant", "content": text, "refusal": None}

    def whole(self, seq: Sequence, text: str, finish: str) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.req.model,
                "choices": [{"index": 0, "message": self.message(text), "finish_reason": self.finish(finish),
                             "logprobs": None}], "usage": usage(seq), "system_fingerprint": self.fingerprint}

    @property
    def head(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.req.model}

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        return sse({**self.head, "system_fingerprint": self.fingerprint,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    def __call__(self, kind: str, value: str, seq: Sequence) -> list[str]:
        tool = self.job.tool_name
        if kind == "start":
            if tool:
                return [self.chunk({"role": "assistant", "content": None, "tool_calls": [{
                    "index": 0, "id": self.call_id, "type": "function", "function": {"name": tool, "arguments": ""}}]})]
            return [self.chunk({"role": "assistant", "content": ""})]
        if kind == "delta":
            if tool:
                return [self.chunk({"tool_calls": [{"index": 0, "function": {"arguments": value}}]})]
            return [self.chunk({"content": value})]
        return [self.chunk({}, self.finish(value))]


@router.post(ROUTE)
async def chat_completions(request: Request) -> Response:
    req, job = await prepare(request, ChatRequest, build_job)
    shaper = _Shaper(req, job, request.app.state.llmops.model.label)
    if not req.stream:
        seq, text, finish = await collect(job, request)
        return JSONResponse(shaper.whole(seq, text, finish))
    include_usage = bool((req.stream_options or {}).get("include_usage"))
    return await stream(job, request, shaper, done_chunks(shaper.head, include_usage))
