"""What the OpenAI endpoint modules share: reading and validating a body (size, JSON depth, Unicode, types)
off the event loop, running a job to one answer or to a server-sent-event stream over the generation
service, and the OpenAI pieces (usage, SSE framing) every wire format uses."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from serving.api import ApiError, parse, reject_unsupported
from serving.generation import GenerationService, Job
from serving.http.internal import is_shadow
from serving.scheduler import EventKind, Sequence

MAX_JSON_DEPTH = 64  # nesting of a request body (JSON schemas included); json.loads recurses per level
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]", re.ASCII)  # a surrogate can only arrive escaped
R = TypeVar("R")
Shape = Callable[[str, str, Sequence], list[str]]


def service_of(request: Request) -> GenerationService:
    return request.app.state.llmops.service


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _walk(data: Any, check_strings: bool) -> None:
    """Reject nesting over MAX_JSON_DEPTH and (when escapes were seen) lone surrogates, iteratively."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(400, f"the JSON body is nested over {MAX_JSON_DEPTH} levels deep")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                if check_strings and isinstance(key, str):
                    stack.append((key, depth))
                stack.append((value, depth + 1))
        elif check_strings and isinstance(node, str) and not node.isascii():
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "the JSON body holds a lone surrogate (\\ud800-\\udfff): not valid Unicode"
                               ) from None


def load_json(body: bytes) -> Any:
    """Bytes -> JSON value; malformed, too deep or invalid Unicode is a 400 (never a RecursionError 500)."""
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise ApiError(400, f"the JSON body is nested over {MAX_JSON_DEPTH} levels deep") from None
    _walk(data, check_strings=_SURROGATE_ESCAPE.search(body) is not None)
    return data


async def prepare(request: Request, schema: type[Any], build: Callable[[GenerationService, Any], Job]
                  ) -> tuple[Any, Job]:
    """Body -> (typed request, job): the size limit on the loop; JSON, validation, model check, templating,
    tokenizing and schema compiling in the service's CPU pool."""
    service = service_of(request)
    body = await read_body(request, service.params.max_body_bytes)

    def work() -> tuple[Any, Job]:
        req = parse(schema, load_json(body))
        reject_unsupported(req)
        service.check_model(req.model)
        return req, build(service, req)

    req, job = await service.offload(work)
    job.request_id = request.state.request_id
    # the router's mirrored copy only with its signed marker: a client's bare x-llmops-shadow is ignored
    job.shadow = is_shadow(request.app.state.llmops.internal_secret, job.request_id, request.headers)
    return req, job


def usage(seq: Sequence) -> dict[str, int]:
    return {"prompt_tokens": len(seq.prompt_ids), "completion_tokens": len(seq.generated),
            "total_tokens": len(seq.prompt_ids) + len(seq.generated)}


def sse(data: Any, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def done_chunks(head: dict[str, Any], include_usage: bool) -> Callable[[Sequence], list[str]]:
    """The end of an OpenAI chat/completions stream: a usage chunk if asked for, then `data: [DONE]`."""
    def closing(seq: Sequence) -> list[str]:
        tail = [sse({**head, "choices": [], "usage": usage(seq)})] if include_usage else []
        return [*tail, "data: [DONE]\n\n"]
    return closing


async def _client_gone(request: Request, service: GenerationService, seq: Sequence) -> bool:
    """Waits until the client of a non-streaming request disconnects, then cancels its sequence. The body is
    already read, so the next ASGI message is the disconnect (uvicorn)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    service.cancel(seq)
    return True


async def collect(job: Job, request: Request) -> tuple[Sequence, str, str]:
    """Run `job` to its whole answer: (sequence, text, finish_reason); hooks are awaited before returning."""
    service = service_of(request)
    await service.inject_faults(job)
    seq = service.submit(job)
    watcher = asyncio.get_running_loop().create_task(_client_gone(request, service, seq))
    parts: list[str] = []
    finish = "stop"
    try:
        async for kind, value in service.events(seq):
            if kind is EventKind.DELTA:
                parts.append(value)
            else:
                finish = value
    except ApiError as exc:
        err = exc
        if watcher.done() and not watcher.cancelled():  # cancelled because the client went away
            err = ApiError(499, "client disconnected", code="client_disconnected")
        await service.record(job, seq, "".join(parts), err.status, err.message)
        raise err from None
    finally:
        watcher.cancel()
        service.cancel(seq)
    text = "".join(parts)
    await service.record(job, seq, text, 200)
    return seq, text, finish


async def stream(job: Job, request: Request, shape: Shape, closing: Callable[[Sequence], list[str]],
                 error_event: str | None = None) -> StreamingResponse:
    """SSE over the job's events; `shape(kind, value, seq)` renders one event ("start", "delta", "done").
    The hooks are awaited before the last chunk. A client that goes away cancels the task running the body,
    and `finally` frees the slot at once."""
    service = service_of(request)
    await service.inject_faults(job)
    seq = service.submit(job)
    return StreamingResponse(_stream_body(service, job, seq, shape, closing, error_event),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream_body(service: GenerationService, job: Job, seq: Sequence, shape: Shape,
                       closing: Callable[[Sequence], list[str]], error_event: str | None) -> AsyncIterator[str]:
    parts: list[str] = []
    recorded = False
    try:
        for chunk in shape("start", "", seq):
            yield chunk
        final: list[str] = []
        async for kind, value in service.events(seq):
            if kind is EventKind.DELTA:
                parts.append(value)
                for chunk in shape("delta", value, seq):
                    yield chunk
            else:
                final = [*shape("done", value, seq), *closing(seq)]
        for chunk in final[:-1]:
            yield chunk
        recorded = True
        await service.record(job, seq, "".join(parts), 200)
        for chunk in final[-1:]:
            yield chunk
    except ApiError as err:
        if not recorded:
            recorded = True
            await service.record(job, seq, "".join(parts), err.status, err.message)
        yield sse(err.body(), error_event)
    finally:
        service.cancel(seq)
        if not recorded:  # cancelled (client gone): no awaiting here
            service.record_later(job, seq, "".join(parts), 499, "client disconnected")
