"""The generation service: request in, token events out. It owns admission (readiness, queue bounds),
sampling parameters and their limits, prompt encoding and structured-output setup (both off the event loop,
bounded), submission to the scheduler, cancellation, and the per-request hooks. The OpenAI endpoint modules
(serving/openai/) only translate wire formats over it; it knows no HTTP beyond ApiError.

Test-only fault injection: `LLMOPS_SERVE_FAULTS="error_rate=0.5,latency_s=2.0"` (read at start) fails that
share of generation requests with a 500 and delays each one by that latency before its first token. The
canary tests use it to build a bad candidate; never set it in production.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llmops.errors import LlmopsError
from llmops.params import ServeParams
from serving.api import ApiError
from serving.engines.base import Engine
from serving.metrics import Metrics
from serving.model_source import ResolvedModel
from serving.records import RequestHook, RequestRecord, run_hooks
from serving.sampling import SamplingParams
from serving.scheduler import Event, EventKind, FinishReason, QueueFull, Scheduler, Sequence
from serving.structured import Constraint, compile_schema

log = logging.getLogger("llmops.serving")
FAULTS_ENV = "LLMOPS_SERVE_FAULTS"
CPU_WORKERS = 2  # threads that tokenize and compile schemas; the tokenizer releases the GIL while it works
T = TypeVar("T")
_STALLED = Event(EventKind.ERROR, "no answer from the scheduler", FinishReason.TIMEOUT)  # the watchdog's event


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
class Job:
    """One generation request as the service runs it: prompt, limits, constraint, and where it came from."""

    route: str
    prompt_ids: list[int]
    prompt_repr: Any
    sampling: SamplingParams
    constraint: Constraint | None = None
    tool_name: str | None = None
    request_id: str = ""
    shadow: bool = False  # the router's mirrored copy (its signed x-llmops-internal marker), answered to no one
    t0: float = field(default_factory=time.perf_counter)


class GenerationService:
    """Everything between a validated request and its token events; one per server."""

    def __init__(self, engine: Engine, model: ResolvedModel, params: ServeParams, metrics: Metrics,
                 hooks: list[RequestHook]) -> None:
        self.engine, self.model, self.params, self.metrics, self.hooks = engine, model, params, metrics, hooks
        self.scheduler = Scheduler(engine, metrics, queue_size=params.queue_size, model_label=model.label,
                                   stall_s=max(60.0, float(params.request_timeout_s)),
                                   prefill_chunk=params.prefill_chunk)
        self.ready = threading.Event()
        self.warmup_error: str | None = None
        self.vocab = int(engine.tokenizer.__len__())
        self.faults = Faults.from_env()
        if self.faults != Faults():
            log.warning("%s is set (%s): injecting faults, for tests only", FAULTS_ENV, self.faults)
        self.background: set[asyncio.Task] = set()  # hooks of disconnected streams, kept alive until done
        self._cpu = concurrent.futures.ThreadPoolExecutor(CPU_WORKERS, thread_name_prefix="llmops-prepare")
        self._cpu_pending = 0
        self.cpu_limit = params.queue_size + params.max_concurrent  # prepared requests in flight at most

    # -- lifecycle ---------------------------------------------------------------------------------------
    def warmup(self) -> None:
        try:
            self.engine.warmup()
            # llguidance's first matcher builds its token trie and lexer caches (seconds); pay it here, so
            # the first structured-output request does not.
            import numpy as np

            Constraint.json_object(self.engine.tokenizer, self.vocab).mask(np.zeros(self.vocab, dtype=np.float32))
            self.ready.set()
        except Exception as exc:
            log.exception("warmup failed")
            self.warmup_error = f"{type(exc).__name__}: {exc}"

    def start(self) -> None:
        self.warmup()  # before the scheduler thread exists: one thread touches the engine at a time
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.stop()
        self._cpu.shutdown(wait=False, cancel_futures=True)

    # -- request preparation (runs in the CPU pool) ------------------------------------------------------
    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work (JSON, templating, tokenizing, schema compiling) off the event loop, with at most
        `cpu_limit` requests waiting for it; beyond that the request is a 429, never a stalled loop."""
        if self._cpu_pending >= self.cpu_limit:
            self.metrics.rejected.labels(reason="prepare_full").inc()
            raise ApiError(429, "the server is busy preparing requests; retry later", code="queue_full",
                           headers={"Retry-After": "1"})
        self._cpu_pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._cpu, lambda: fn(*args))
        finally:
            self._cpu_pending -= 1

    def check_model(self, name: str) -> None:
        if name not in self.model_ids():
            raise ApiError(404, f"model {name!r} is not served here (serving {self.model.name!r})", "model",
                           "model_not_found")

    def model_ids(self) -> set[str]:
        ids = {self.model.name, self.model.ref, self.model.label}
        if self.model.version:
            ids.add(f"{self.model.name}/{self.model.version}")
        return ids

    def sampling_for(self, prompt_len: int, max_tokens: int | None, temperature: float | None,
                     top_p: float | None, seed: int | None, stop: str | list[str] | None,
                     param: str = "max_tokens") -> SamplingParams:
        """The request's sampling parameters, checked against the server's limits and the context length."""
        params, max_len = self.params, self.engine.max_len
        if prompt_len > params.max_prompt_tokens:
            raise ApiError(400, f"prompt of {prompt_len} tokens is over the limit of {params.max_prompt_tokens}",
                           "messages", "context_length_exceeded")
        room = max_len - prompt_len
        if max_tokens is not None and max_tokens > params.max_tokens:
            raise ApiError(400, f"{param}={max_tokens} is over the server limit of {params.max_tokens}", param)
        if max_tokens is not None and max_tokens > room:
            raise ApiError(400, f"prompt ({prompt_len} tokens) + {param} ({max_tokens}) is over the context "
                           f"length {max_len}", param, "context_length_exceeded")
        if room < 1:
            raise ApiError(400, f"prompt of {prompt_len} tokens leaves no room in context length {max_len}",
                           "messages", "context_length_exceeded")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop takes up to 4 non-empty strings", "stop")
        return SamplingParams(max_tokens=max_tokens or min(params.default_max_tokens, room),
                              temperature=1.0 if temperature is None else temperature,
                              top_p=1.0 if top_p is None else top_p, seed=seed, stop=tuple(stops))

    def constraint_for_schema(self, schema: Any, param: str) -> Constraint:
        """A JSON-schema constraint, compiled once (serving.structured caches grammars by schema)."""
        try:
            grammar = compile_schema(schema)
            return Constraint(self.engine.tokenizer, grammar, self.vocab)
        except LlmopsError as exc:
            raise ApiError(400, exc.cause, param) from None

    # -- running a job (on the event loop) ---------------------------------------------------------------
    def check_ready(self) -> None:
        if not self.ready.is_set():
            raise ApiError(503, "the model is still loading; retry when /ready says ready",
                           headers={"Retry-After": "2"})

    def submit(self, job: Job) -> Sequence:
        self.check_ready()
        loop = asyncio.get_running_loop()
        seq = Sequence(prompt_ids=job.prompt_ids, sampling=job.sampling, loop=loop, events=asyncio.Queue(),
                       constraint=job.constraint, deadline=time.perf_counter() + self.params.request_timeout_s,
                       model_label=self.model.label)
        try:
            self.scheduler.submit(seq)
        except QueueFull as full:
            raise ApiError(429, "the server is at capacity (request queue full); retry later",
                           code="queue_full", headers={"Retry-After": str(full.retry_after)}) from None
        self.metrics.prompt_tokens.labels(model=self.model.label).inc(len(job.prompt_ids))
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence that is still running; its slot frees before the scheduler's next step."""
        if seq.finish_reason is None:
            seq.cancel()
            self.scheduler.wake()

    async def events(self, seq: Sequence) -> AsyncIterator[tuple[EventKind, str]]:
        """(DELTA, text)... then (DONE, finish_reason); a timeout or engine error raises ApiError.

        The scheduler times a sequence out itself; a watchdog 5 s past the deadline (one timer per request,
        not a `wait_for` task per token) covers a scheduler that never answers."""
        timeout_s = self.params.request_timeout_s
        loop = asyncio.get_running_loop()
        grace = max(seq.deadline - time.perf_counter() + 5.0, 0.1)
        watchdog = loop.call_later(grace, seq.events.put_nowait, _STALLED)
        try:
            while True:
                ev = await seq.events.get()
                if ev is _STALLED:
                    self.cancel(seq)
                    raise ApiError(504, f"request timed out after {timeout_s:g}s", code="timeout")
                if ev.kind is EventKind.DELTA:
                    yield ev.kind, ev.text
                elif ev.kind is EventKind.DONE:
                    yield ev.kind, str(ev.finish_reason or FinishReason.STOP)
                    return
                elif ev.finish_reason is FinishReason.TIMEOUT:
                    raise ApiError(504, f"{ev.text} after {timeout_s:g}s", code="timeout")
                elif ev.finish_reason is FinishReason.CANCELLED:
                    raise ApiError(503, ev.text, code="cancelled")
                else:
                    raise ApiError(500, ev.text, code="engine_error")
        finally:
            watchdog.cancel()

    async def inject_faults(self, job: Job) -> None:
        """LLMOPS_SERVE_FAULTS (tests only): fail this request with a 500 at the set rate, else delay it."""
        faults = self.faults
        if faults.error_rate and random.random() < faults.error_rate:
            err = ApiError(500, f"injected fault ({FAULTS_ENV} error_rate={faults.error_rate:g})",
                           code="injected_fault")
            await self.record(job, None, "", err.status, err.message)
            raise err
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)

    async def record(self, job: Job, seq: Sequence | None, text: str, status: int,
                     error: str | None = None) -> None:
        """Count the tokens and call the request hooks with the answered request's record."""
        n = len(seq.generated) if seq else 0
        self.metrics.completion_tokens.labels(model=self.model.label).inc(n)
        extra: dict[str, Any] = {"tool": job.tool_name} if job.tool_name else {}
        if job.shadow:
            extra["shadow"] = True  # the router's mirrored copy, answered to no one: the inference log skips it
        if seq is not None and seq.logprob_count:
            extra["mean_logprob"] = seq.logprob_sum / seq.logprob_count
        latency = time.perf_counter() - job.t0
        await run_hooks(self.hooks, RequestRecord(
            request_id=job.request_id, route=job.route, model=self.model.name, model_version=self.model.version,
            prompt=job.prompt_repr, response=text, prompt_tokens=len(job.prompt_ids), completion_tokens=n,
            latency_s=latency, ttft_s=seq.ttft if seq else None, status=status,
            finish_reason=str(seq.finish_reason) if seq and seq.finish_reason else None, error=error, extra=extra,
            time=time.time() - latency))

    def record_later(self, job: Job, seq: Sequence | None, text: str, status: int, error: str | None) -> None:
        """Record from a cancelled context (no awaiting there): the hooks run in a task of their own."""
        task = asyncio.get_running_loop().create_task(self.record(job, seq, text, status, error))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
