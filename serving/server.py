"""The OpenAI-compatible HTTP server (FastAPI + uvicorn). It knows no engine internals: requests become
`Sequence`s for the scheduler, events come back and are shaped as OpenAI chat/completions/responses JSON
or server-sent events.

Safety: binds 127.0.0.1 by default; with an API key every /v1 route needs `Authorization: Bearer <key>`
(/health, /ready, /metrics stay open); bodies over the limit are 413; bad input is a 4xx with one line;
a fault inside one request is a 500 for that request only. Every response carries `x-request-id`.
After each generation request the server calls its hooks with a `RequestRecord` (serving/records.py; the
inference log plugs in there) and awaits awaitable ones before the response completes.

Test-only fault injection: `LLMOPS_SERVE_FAULTS="error_rate=0.5,latency_s=2.0"` (read at app creation) fails
that share of generation requests with a 500 and delays each one by that latency before its first token. The
canary tests use it to build a bad candidate; never set it in production.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from llmops.errors import LlmopsError
from llmops.params import ServeParams
from serving.api import ApiError, ChatRequest, CompletionRequest, ResponsesRequest, parse, reject_unsupported
from serving.engines.base import Engine
from serving.metrics import Metrics
from serving.model_source import ResolvedModel
from serving.records import RequestHook, RequestRecord, run_hooks
from serving.sampling import SamplingParams
from serving.scheduler import QueueFull, Scheduler, Sequence
from serving.structured import Constraint, check_schema

log = logging.getLogger("llmops.serving")

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models", "/health", "/ready", "/metrics")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
FAULTS_ENV = "LLMOPS_SERVE_FAULTS"
__all__ = ["RequestHook", "RequestRecord", "create_app"]  # the records' old home: imports from here keep working


@dataclass(frozen=True)
class Faults:
    """Test-only fault injection (LLMOPS_SERVE_FAULTS): a share of generation requests fails with a 500, and
    every one waits `latency_s` before its first token."""

    error_rate: float = 0.0
    latency_s: float = 0.0

    @classmethod
    def from_env(cls) -> Faults:
        raw = os.environ.get(FAULTS_ENV, "").strip()
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in raw.split(","))):
            key, sep, value = item.partition("=")
            try:
                if not sep or key.strip() not in ("error_rate", "latency_s"):
                    raise ValueError
                values[key.strip()] = float(value)
            except ValueError:
                raise LlmopsError(f"bad {FAULTS_ENV} item {item!r}",
                                  'write it as "error_rate=0.5,latency_s=2.0" (test-only), or unset it') from None
        faults = cls(**values)
        if not 0 <= faults.error_rate <= 1 or faults.latency_s < 0:
            raise LlmopsError(f"{FAULTS_ENV}={raw!r} is out of range", "error_rate in [0, 1], latency_s >= 0")
        return faults


@dataclass
class _Job:
    """What a route hands the generation core: prompt, limits, constraint, and how to shape results."""

    route: str
    prompt_ids: list[int]
    prompt_repr: Any
    sampling: SamplingParams
    constraint: Constraint | None
    tool_name: str | None = None


class ServerState:
    def __init__(self, engine: Engine, model: ResolvedModel, params: ServeParams, api_key: str | None,
                 hooks: list[RequestHook]) -> None:
        self.engine, self.model, self.params, self.api_key, self.hooks = engine, model, params, api_key, hooks
        self.metrics = Metrics()
        self.scheduler = Scheduler(engine, self.metrics, queue_size=params.queue_size, model_label=model.label)
        self.ready = threading.Event()
        self.warmup_error: str | None = None
        self.created = int(time.time())
        self.vocab = int(engine.tokenizer.__len__())
        self.faults = Faults.from_env()
        if self.faults != Faults():
            log.warning("%s is set (%s): injecting faults, for tests only", FAULTS_ENV, self.faults)
        self.background: set[asyncio.Task] = set()  # hooks of disconnected streams, kept alive until done

    def model_ids(self) -> set[str]:
        ids = {self.model.name, self.model.ref, self.model.label}
        if self.model.version:
            ids.add(f"{self.model.name}/{self.model.version}")
        return ids

    def warmup(self) -> None:
        try:
            self.engine.warmup()
            # llguidance's first matcher builds its token trie and lexer caches (seconds); pay it here, so
            # the first structured-output request does not.
            import torch

            Constraint.json_object(self.engine.tokenizer, self.vocab).mask(torch.zeros(self.vocab))
            self.ready.set()
        except Exception as exc:
            log.exception("warmup failed")
            self.warmup_error = f"{type(exc).__name__}: {exc}"

    async def run_hooks(self, record: RequestRecord) -> None:
        await run_hooks(self.hooks, record)


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class _Context:
    """Pure ASGI middleware (streams stay unbuffered, disconnects reach the route): request id, auth on
    /v1, request metrics, and a JSON 500 for an unexpected fault without taking the server down."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        if not _REQUEST_ID.match(rid):
            rid = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = rid
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        t0 = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            key = self.state.api_key
            if key and path.startswith("/v1"):
                auth = headers.get("authorization", "")
                token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
                if not hmac.compare_digest(token.encode(), key.encode()):
                    err = ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                   code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                    await _error_response(err)(scope, receive, send_with_id)
                    return
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log.exception("unhandled fault on %s", path)
            if not started:
                err = ApiError(500, f"internal server error: {type(exc).__name__}", code="internal_error")
                await _error_response(err)(scope, receive, send_with_id)
        finally:
            self.state.metrics.requests.labels(route=route, status=str(status), model=self.state.model.label).inc()
            self.state.metrics.latency.labels(route=route, model=self.state.model.label).observe(
                time.perf_counter() - t0)


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None


def _sse(data: Any, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def create_app(engine: Engine, model: ResolvedModel, params: ServeParams, *, api_key: str | None = None,
               hooks: list[RequestHook] | None = None) -> FastAPI:
    """The app over a loaded engine; the scheduler thread starts and the engine warms up in its lifespan."""
    state = ServerState(engine, model, params, api_key, list(hooks or []))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=_warm_then_start, name="llmops-warmup", daemon=True).start()
        yield
        state.scheduler.stop()
        engine.close()

    def _warm_then_start() -> None:
        state.warmup()  # before the scheduler thread exists: one thread touches the engine at a time
        state.scheduler.start()

    app = FastAPI(title="llmops model server", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.llmops = state

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    # -- health, readiness, metrics ------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        body = {"ready": state.ready.is_set(), "model": model.name, "version": model.version,
                "engine": engine.info(), "scheduler": state.scheduler.snapshot()}
        if state.warmup_error:
            body["error"] = state.warmup_error
        return JSONResponse(body, status_code=200 if state.ready.is_set() else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": model.name, "object": "model", "created": state.created, "owned_by": "llmops",
            "version": model.version, "source": model.source, "engine": engine.info().get("kind"),
        }]}

    # -- shared request handling ---------------------------------------------------------------------
    def check_model(name: str) -> None:
        if name not in state.model_ids():
            raise ApiError(404, f"model {name!r} is not served here (serving {model.name!r})", "model",
                           "model_not_found")

    async def read_request(request: Request, schema: type[Any]) -> Any:
        """Body -> typed request: size limit, JSON, types, unsupported parameters, then the model name."""
        req = parse(schema, await _read_json(request, params.max_body_bytes))
        reject_unsupported(req)
        check_model(req.model)
        return req

    def check_ready() -> None:
        if not state.ready.is_set():
            raise ApiError(503, "the model is still loading; retry when /ready says ready",
                           headers={"Retry-After": "2"})

    def sampling_for(prompt_len: int, max_tokens: int | None, temperature: float | None, top_p: float | None,
                     seed: int | None, stop: str | list[str] | None, param: str = "max_tokens") -> SamplingParams:
        if prompt_len > params.max_prompt_tokens:
            raise ApiError(400, f"prompt of {prompt_len} tokens is over the limit of {params.max_prompt_tokens}",
                           "messages", "context_length_exceeded")
        room = engine.max_len - prompt_len
        if max_tokens is not None and max_tokens > params.max_tokens:
            raise ApiError(400, f"{param}={max_tokens} is over the server limit of {params.max_tokens}", param)
        if max_tokens is not None and max_tokens > room:
            raise ApiError(400, f"prompt ({prompt_len} tokens) + {param} ({max_tokens}) is over the context "
                           f"length {engine.max_len}", param, "context_length_exceeded")
        if room < 1:
            raise ApiError(400, f"prompt of {prompt_len} tokens leaves no room in context length {engine.max_len}",
                           "messages", "context_length_exceeded")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop takes up to 4 non-empty strings", "stop")
        return SamplingParams(max_tokens=max_tokens or min(params.default_max_tokens, room),
                              temperature=1.0 if temperature is None else temperature,
                              top_p=1.0 if top_p is None else top_p, seed=seed, stop=tuple(stops))

    def encode_chat(messages: list[dict[str, str]]) -> list[int]:
        tok = engine.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return tok.encode(text, add_special_tokens=False)

    def constraint_for(fmt: dict[str, Any] | None, param: str) -> Constraint | None:
        if fmt is None:
            return None
        kind = fmt.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return Constraint.json_object(engine.tokenizer, state.vocab)
        if kind == "json_schema":
            spec = fmt.get("json_schema", fmt)  # chat nests it; the Responses API puts it inline
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise ApiError(400, f"{param}.json_schema.schema must be a JSON Schema object", param)
            try:
                check_schema(schema)
            except LlmopsError as exc:
                raise ApiError(400, exc.cause, param) from None
            return Constraint.json_schema(engine.tokenizer, schema, state.vocab)
        raise ApiError(400, f"{param}.type must be text, json_object or json_schema (got {kind!r})", param)

    def submit(job: _Job, request: Request) -> Sequence:
        check_ready()
        loop = asyncio.get_running_loop()
        seq = Sequence(prompt_ids=job.prompt_ids, sampling=job.sampling, loop=loop, events=asyncio.Queue(),
                       constraint=job.constraint, deadline=time.perf_counter() + params.request_timeout_s,
                       model_label=model.label)
        try:
            state.scheduler.submit(seq)
        except QueueFull as full:
            raise ApiError(429, "the server is at capacity (request queue full); retry later",
                           code="queue_full", headers={"Retry-After": str(full.retry_after)}) from None
        state.metrics.prompt_tokens.labels(model=model.label).inc(len(job.prompt_ids))
        return seq

    async def events(seq: Sequence) -> AsyncIterator[tuple[str, str]]:
        """(kind, text) until done; a timeout or engine error raises ApiError."""
        while True:
            remaining = seq.deadline - time.perf_counter() + 5.0
            try:
                ev = await asyncio.wait_for(seq.events.get(), timeout=max(remaining, 0.1))
            except TimeoutError:
                seq.cancel()
                state.scheduler.wake()
                raise ApiError(504, f"request timed out after {params.request_timeout_s:g}s",
                               code="timeout") from None
            if ev.kind == "delta":
                yield "delta", ev.text
            elif ev.kind == "done":
                yield "done", ev.finish_reason or "stop"
                return
            else:
                if ev.finish_reason == "timeout":
                    raise ApiError(504, f"{ev.text} after {params.request_timeout_s:g}s", code="timeout")
                if ev.finish_reason == "cancelled":
                    raise ApiError(503, ev.text, code="cancelled")
                raise ApiError(500, ev.text, code="engine_error")

    async def record(job: _Job, request: Request, seq: Sequence | None, text: str, status: int, t0: float,
                     error: str | None = None) -> None:
        n = len(seq.generated) if seq else 0
        state.metrics.completion_tokens.labels(model=model.label).inc(n)
        extra: dict[str, Any] = {"tool": job.tool_name} if job.tool_name else {}
        if request.headers.get("x-llmops-shadow"):
            extra["shadow"] = True  # the router's mirrored copy, answered to no one: the inference log skips it
        if seq is not None and seq.logprob_count:
            extra["mean_logprob"] = seq.logprob_sum / seq.logprob_count
        latency = time.perf_counter() - t0
        await state.run_hooks(RequestRecord(
            request_id=request.state.request_id, route=job.route, model=model.name, model_version=model.version,
            prompt=job.prompt_repr, response=text, prompt_tokens=len(job.prompt_ids), completion_tokens=n,
            latency_s=latency, ttft_s=seq.ttft if seq else None, status=status,
            finish_reason=seq.finish_reason if seq else None, error=error, extra=extra,
            time=time.time() - latency))

    async def inject_faults(job: _Job, request: Request, t0: float) -> None:
        """LLMOPS_SERVE_FAULTS (tests only): fail this request with a 500 at the set rate, else delay it."""
        faults = state.faults
        if faults.error_rate and random.random() < faults.error_rate:
            err = ApiError(500, f"injected fault ({FAULTS_ENV} error_rate={faults.error_rate:g})",
                           code="injected_fault")
            await record(job, request, None, "", err.status, t0, err.message)
            raise err
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)

    async def client_gone(request: Request, seq: Sequence) -> bool:
        """Waits until the client of a non-streaming request disconnects, then cancels its sequence so the
        slot frees before the next decode step. The body is already read, so the next ASGI message is the
        disconnect (uvicorn); cancelled by `collect` once the answer is ready."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if seq.finish_reason is None:
            seq.cancel()
            state.scheduler.wake()
        return True

    async def collect(job: _Job, request: Request) -> tuple[Sequence, str, str]:
        t0 = time.perf_counter()
        await inject_faults(job, request, t0)
        seq = submit(job, request)
        watcher = asyncio.get_running_loop().create_task(client_gone(request, seq))
        parts: list[str] = []
        finish = "stop"
        try:
            async for kind, value in events(seq):
                if kind == "delta":
                    parts.append(value)
                else:
                    finish = value
        except ApiError as exc:
            err = exc
            if watcher.done() and not watcher.cancelled():  # cancelled because the client went away
                err = ApiError(499, "client disconnected", code="client_disconnected")
            await record(job, request, seq, "".join(parts), err.status, t0, err.message)
            raise err from None
        finally:
            watcher.cancel()
            if seq.finish_reason is None:
                seq.cancel()
                state.scheduler.wake()
        text = "".join(parts)
        await record(job, request, seq, text, 200, t0)
        return seq, text, finish

    def usage(seq: Sequence) -> dict[str, int]:
        return {"prompt_tokens": len(seq.prompt_ids), "completion_tokens": len(seq.generated),
                "total_tokens": len(seq.prompt_ids) + len(seq.generated)}

    def done_chunks(head: dict[str, Any], include_usage: bool) -> Callable[[Sequence], list[str]]:
        """The end of an OpenAI chat/completions stream: a usage chunk if asked for, then `data: [DONE]`."""
        def closing(seq: Sequence) -> list[str]:
            tail = [_sse({**head, "choices": [], "usage": usage(seq)})] if include_usage else []
            return [*tail, "data: [DONE]\n\n"]
        return closing

    async def stream(job: _Job, request: Request, shape: Callable[[str, str, Sequence], list[str]],
                     closing: Callable[[Sequence], list[str]]) -> StreamingResponse:
        """SSE over the sequence's events; `shape(kind, value, seq)` renders one event. The hooks are awaited
        before the last chunk (`data: [DONE]`, or the Responses API's terminal event). A client that goes away
        cancels the task running this generator, and `finally` frees the slot at once."""
        t0 = time.perf_counter()
        await inject_faults(job, request, t0)
        seq = submit(job, request)

        async def body() -> AsyncIterator[str]:
            parts: list[str] = []
            status, error, recorded = 200, None, False
            try:
                for chunk in shape("start", "", seq):
                    yield chunk
                final: list[str] = []
                async for kind, value in events(seq):
                    if kind == "delta":
                        parts.append(value)
                        for chunk in shape(kind, value, seq):
                            yield chunk
                    else:
                        final = [*shape(kind, value, seq), *closing(seq)]
                for chunk in final[:-1]:
                    yield chunk
                recorded = True
                await record(job, request, seq, "".join(parts), status, t0)
                for chunk in final[-1:]:
                    yield chunk
            except ApiError as err:
                status, error = err.status, err.message
                if not recorded:
                    recorded = True
                    await record(job, request, seq, "".join(parts), status, t0, error)
                yield _sse(err.body(), "error" if job.route == "/v1/responses" else None)
            except (asyncio.CancelledError, GeneratorExit):
                status, error = 499, "client disconnected"
                raise
            finally:
                if seq.finish_reason is None:
                    seq.cancel()
                    state.scheduler.wake()
                if not recorded:  # cancelled: no awaiting here, the hooks run in a task of their own
                    task = asyncio.get_running_loop().create_task(
                        record(job, request, seq, "".join(parts), status, t0, error))
                    state.background.add(task)
                    task.add_done_callback(state.background.discard)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- /v1/chat/completions ----------------------------------------------------------------------------
    def chat_job(req: ChatRequest) -> _Job:
        if not req.messages:
            raise ApiError(400, "messages must not be empty", "messages")
        msgs: list[dict[str, str]] = []
        for m in req.messages:
            role = "system" if m.role == "developer" else m.role
            content = m.text()
            if m.role == "assistant" and m.tool_calls:
                content = content or json.dumps([c.function.model_dump() for c in m.tool_calls])
            if m.role == "tool":
                role, content = "user", f"Tool result ({m.tool_call_id or 'call'}): {content}"
            msgs.append({"role": role, "content": content})
        constraint, tool_name = None, None
        if req.tools and req.tool_choice != "none":
            tool = forced_tool(req)
            tool_name = tool.function.name
            schema = tool.function.parameters or {"type": "object"}
            hint = (f"Call the function `{tool_name}`" + (f" ({tool.function.description})"
                    if tool.function.description else "") + ". Reply with only its JSON arguments, matching "
                    f"this JSON schema: {json.dumps(schema)}")
            if msgs and msgs[0]["role"] == "system":
                msgs[0] = {"role": "system", "content": msgs[0]["content"] + "\n\n" + hint}
            else:
                msgs.insert(0, {"role": "system", "content": hint})
            try:
                check_schema(schema)
            except LlmopsError as exc:
                raise ApiError(400, exc.cause, "tools") from None
            constraint = Constraint.json_schema(engine.tokenizer, schema, state.vocab)
            if req.response_format and req.response_format.get("type") != "text":
                raise ApiError(400, "response_format cannot be combined with a forced tool call", "response_format")
        elif req.tool_choice not in (None, "none"):
            raise ApiError(400, "tool_choice needs tools", "tool_choice")
        else:
            constraint = constraint_for(req.response_format, "response_format")
        ids = encode_chat(msgs)
        max_tokens = req.max_completion_tokens or req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        sampling = sampling_for(len(ids), max_tokens, req.temperature, req.top_p, req.seed, req.stop, param)
        return _Job("/v1/chat/completions", ids, msgs, sampling, constraint, tool_name)

    def forced_tool(req: ChatRequest) -> Any:
        tools = req.tools or []
        choice = req.tool_choice
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            match = [t for t in tools if t.function.name == name]
            if choice.get("type") != "function" or not match:
                raise ApiError(400, f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
            return match[0]
        if choice == "required" and len(tools) == 1:
            return tools[0]
        raise ApiError(400, "only a forced tool call is supported: set tool_choice to "
                       '{"type": "function", "function": {"name": ...}} (or "required" with one tool)',
                       "tool_choice", "unsupported_parameter")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = await read_request(request, ChatRequest)
        job = chat_job(req)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        call_id = f"call_{uuid.uuid4().hex[:24]}"

        def message_for(text: str) -> dict[str, Any]:
            if job.tool_name:
                return {"role": "assistant", "content": None, "tool_calls": [{
                    "id": call_id, "type": "function", "function": {"name": job.tool_name, "arguments": text}}]}
            return {"role": "assistant", "content": text, "refusal": None}

        if not req.stream:
            seq, text, finish = await collect(job, request)
            finish = "tool_calls" if job.tool_name and finish == "stop" else finish
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "message": message_for(text), "finish_reason": finish, "logprobs": None}],
                "usage": usage(seq), "system_fingerprint": model.label,
            })

        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                         "system_fingerprint": model.label,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

        def shape(kind: str, value: str, seq: Sequence) -> list[str]:
            if kind == "start":
                if job.tool_name:
                    return [chunk({"role": "assistant", "content": None, "tool_calls": [{
                        "index": 0, "id": call_id, "type": "function",
                        "function": {"name": job.tool_name, "arguments": ""}}]})]
                return [chunk({"role": "assistant", "content": ""})]
            if kind == "delta":
                if job.tool_name:
                    return [chunk({"tool_calls": [{"index": 0, "function": {"arguments": value}}]})]
                return [chunk({"content": value})]
            finish = "tool_calls" if job.tool_name and value == "stop" else value
            return [chunk({}, finish)]

        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model}
        return await stream(job, request, shape, done_chunks(head, include_usage))

    # -- /v1/completions -----------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = await read_request(request, CompletionRequest)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise ApiError(400, "one prompt per request (a list of several prompts is not supported)", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, "prompt must not be empty", "prompt")
            ids = engine.tokenizer.encode(prompt, add_special_tokens=False)
        else:
            ids = [int(t) for t in prompt]
            if not ids or any(t < 0 or t >= state.vocab for t in ids):
                raise ApiError(400, f"prompt token ids must be non-empty and in 0..{state.vocab - 1}", "prompt")
        sampling = sampling_for(len(ids), req.max_tokens, req.temperature, req.top_p, req.seed, req.stop)
        job = _Job("/v1/completions", ids, prompt, sampling, None)
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if not req.stream:
            seq, text, finish = await collect(job, request)
            return JSONResponse({"id": cid, "object": "text_completion", "created": created, "model": req.model,
                                 "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                                 "usage": usage(seq), "system_fingerprint": model.label})
        include_usage = bool((req.stream_options or {}).get("include_usage"))

        def shape(kind: str, value: str, seq: Sequence) -> list[str]:
            if kind == "start":
                return []
            text, finish = (value, None) if kind == "delta" else ("", value)
            return [_sse({"id": cid, "object": "text_completion", "created": created, "model": req.model,
                          "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]})]

        head = {"id": cid, "object": "text_completion", "created": created, "model": req.model}
        return await stream(job, request, shape, done_chunks(head, include_usage))

    # -- /v1/responses ---------------------------------------------------------------------------------------
    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        req = await read_request(request, ResponsesRequest)
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
                role, content = item.get("role"), item.get("content")
                if item.get("type", "message") != "message" or role not in ("user", "assistant", "system",
                                                                            "developer"):
                    raise ApiError(400, f"input[{i}] must be a message with role user/assistant/system/developer",
                                   f"input.{i}")
                if isinstance(content, list):
                    texts = [p.get("text") for p in content if isinstance(p, dict)]
                    if any(not isinstance(t, str) for t in texts) or len(texts) != len(content):
                        raise ApiError(400, f"input[{i}].content supports text parts only", f"input.{i}.content")
                    content = "".join(texts)
                if not isinstance(content, str):
                    raise ApiError(400, f"input[{i}].content must be a string or text parts", f"input.{i}.content")
                msgs.append({"role": "system" if role == "developer" else role, "content": content})
        if not any(m["role"] == "user" for m in msgs):
            raise ApiError(400, "input must contain at least one user message", "input")
        fmt = (req.text or {}).get("format")
        constraint = constraint_for(fmt, "text.format")
        ids = encode_chat(msgs)
        sampling = sampling_for(len(ids), req.max_output_tokens, req.temperature, req.top_p, None, None,
                                "max_output_tokens")
        job = _Job("/v1/responses", ids, msgs, sampling, constraint)
        rid, mid, created = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}", int(time.time())

        def item(text: str, status: str) -> dict[str, Any]:
            return {"id": mid, "type": "message", "status": status, "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}

        def response_obj(status: str, output: list[dict[str, Any]], seq: Sequence | None, finish: str | None):
            return {"id": rid, "object": "response", "created_at": created, "status": status, "model": req.model,
                    "output": output, "error": None,
                    "incomplete_details": {"reason": "max_output_tokens"} if finish == "length" else None,
                    "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
                    "metadata": req.metadata or {}, "parallel_tool_calls": False,
                    "temperature": sampling.temperature, "top_p": sampling.top_p, "tool_choice": "none",
                    "tools": [], "text": {"format": fmt or {"type": "text"}}, "truncation": "disabled",
                    "usage": None if seq is None else {
                        "input_tokens": len(seq.prompt_ids), "output_tokens": len(seq.generated),
                        "total_tokens": len(seq.prompt_ids) + len(seq.generated),
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens_details": {"reasoning_tokens": 0}}}

        def done_status(finish: str) -> str:
            return "incomplete" if finish == "length" else "completed"

        if not req.stream:
            seq, text, finish = await collect(job, request)
            return JSONResponse(response_obj(done_status(finish), [item(text, "completed")], seq, finish))

        counter = {"n": 0}
        full: list[str] = []

        def ev(kind: str, data: dict[str, Any]) -> str:
            data = {"type": kind, "sequence_number": counter["n"], **data}
            counter["n"] += 1
            return _sse(data, kind)

        where = {"item_id": mid, "output_index": 0, "content_index": 0}

        def shape(kind: str, value: str, seq: Sequence) -> list[str]:
            if kind == "start":
                return [ev("response.created", {"response": response_obj("in_progress", [], None, None)}),
                        ev("response.in_progress", {"response": response_obj("in_progress", [], None, None)}),
                        ev("response.output_item.added", {"output_index": 0, "item": {**item("", "in_progress"),
                                                                                       "content": []}}),
                        ev("response.content_part.added", {**where, "part": item("", "")["content"][0]})]
            if kind == "delta":
                full.append(value)
                return [ev("response.output_text.delta", {**where, "delta": value, "logprobs": []})]
            text = "".join(full)
            return [ev("response.output_text.done", {**where, "text": text, "logprobs": []}),
                    ev("response.content_part.done", {**where, "part": item(text, "")["content"][0]}),
                    ev("response.output_item.done", {"output_index": 0, "item": item(text, "completed")}),
                    ev(f"response.{done_status(value)}",
                       {"response": response_obj(done_status(value), [item(text, "completed")], seq, value)})]

        return await stream(job, request, shape, lambda seq: [])

    app.add_middleware(_Context, state=state)
    return app
