"""Continuous batching: iteration-level scheduling of sequences over an engine's KV-cache slots.

One scheduler thread owns the engine (engines are blocking and not thread-safe). Between two decode steps it
retires finished, cancelled and timed-out sequences (their slots are released at once), admits waiting
requests into free slots (prefill + first token), then decodes every running sequence in one batched step.
So a short request never waits for a long one, and a new one starts without the batch draining.
Prompts are prefilled within a token budget per iteration (`prefill_chunk`, chunked prefill as in vLLM and
llama-server): a long prompt is fed to an engine that can extend a slot in chunks, with a decode step of the
running sequences between two chunks, so one long prompt does not stall every running stream.
Requests come from the asyncio server through `submit`; results go back as events on an asyncio queue.
The wait queue is bounded: `submit` raises `QueueFull` (the server's 429) instead of letting callers hang.

A fault while admitting or sampling one request (a bad seed, a NaN) fails that request alone and frees its
slot; the loop's last-resort handler frees every slot it cannot account for. `health()` reports a dead
thread, leaked slots and a failing engine, so /health and /ready tell the truth.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from serving.engines.base import Engine, can_extend
from serving.metrics import Metrics
from serving.sampling import Sampler, SamplingParams, as_array, logsumexp
from serving.structured import Constraint

log = logging.getLogger("llmops.serving")


class QueueFull(Exception):
    """The wait queue is at its bound; the caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("queue full")
        self.retry_after = retry_after


class EventKind(enum.StrEnum):
    DELTA = "delta"  # text
    DONE = "done"  # finish_reason
    ERROR = "error"  # message in text, cause in finish_reason


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass
class Event:
    kind: EventKind
    text: str = ""
    finish_reason: FinishReason | None = None


class Detokenizer:
    """Incremental detokenization: each token's text once (tokenizers' DecodeStream), instead of decoding
    the whole answer again per token (quadratic in its length). A tokenizer without a Rust backend falls
    back to decoding the whole answer."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._stream = None
        if self._backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=True)
        self._ids: list[int] = []

    def step(self, token: int, text: str) -> str:
        """The answer's text after `token` (given the text before it)."""
        if self._stream is not None:
            return text + (self._stream.step(self._backend, token) or "")
        self._ids.append(token)
        return self._tokenizer.decode(self._ids, skip_special_tokens=True)


@dataclass
class Sequence:
    """A request's state inside the scheduler. Only the scheduler thread mutates it after `submit`."""

    prompt_ids: list[int]
    sampling: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    constraint: Constraint | None = None
    deadline: float = float("inf")
    model_label: str = ""
    seq_id: int = 0
    slot: int | None = None
    prefilled: int = 0  # prompt tokens already in the slot's cache (chunked prefill)
    sampler: Sampler | None = None
    detokenizer: Detokenizer | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded text of `generated` (stop strings cut)
    emitted: int = 0  # characters of `text` already sent
    finish_reason: FinishReason | None = None
    cancelled: bool = False
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    t_last: float | None = None
    logprob_sum: float = 0.0  # log-probabilities of the sampled tokens under the model (drift monitoring)
    logprob_count: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_submit

    def cancel(self) -> None:
        """Called from the server (client gone, timeout): the scheduler frees the slot before its next step."""
        self.cancelled = True


class Scheduler:
    def __init__(self, engine: Engine, metrics: Metrics, *, queue_size: int, model_label: str = "",
                 stall_s: float = 300.0, prefill_chunk: int = 0) -> None:
        self.engine = engine
        # prompt tokens prefilled per iteration, between decode steps (0, or an engine that cannot extend a
        # slot: every admitted prompt whole)
        self.prefill_chunk = prefill_chunk if can_extend(engine) else 0
        self.metrics = metrics
        self.queue_size = queue_size
        self.model_label = model_label
        self.stall_s = stall_s  # an iteration with work running longer than this is a hung engine
        self.eos = engine.eos_token_ids
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._admitting: list[Sequence] = []  # holding slots, prompt not (wholly) in the cache yet
        self._free = list(range(engine.max_slots))
        self._cv = threading.Condition()
        self._stop = False
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._loop, name="llmops-scheduler", daemon=True)
        self.steps = 0
        self.fault: str | None = None  # the engine's last error, cleared by its next successful step
        self.loop_faults = 0  # iterations that hit the last-resort handler
        self.leaked_slots = 0  # slots neither free nor held by a sequence, at the last idle check
        self._busy_since: float | None = None  # start of the iteration in progress (stall detection)
        self._children: dict[tuple[int, str], Any] = {}  # (histogram, model label) -> its labelled child

    # -- called from the server (any thread) -----------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def submit(self, seq: Sequence) -> Sequence:
        with self._cv:
            if len(self._waiting) >= self.queue_size:
                self.metrics.rejected.labels(reason="queue_full").inc()
                raise QueueFull(retry_after=self._retry_after())
            seq.seq_id = next(self._ids)
            self._waiting.append(seq)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cv.notify_all()
        return seq

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self._cv:
            return {"running": len(self._running), "waiting": len(self._waiting),
                    "prefilling": len(self._admitting), "free_slots": len(self._free),
                    "max_slots": self.engine.max_slots, "queue_size": self.queue_size, "steps": self.steps,
                    "leaked_slots": self.leaked_slots, "loop_faults": self.loop_faults}

    def health(self) -> dict[str, str]:
        """Liveness problems by check name (empty = healthy): thread dead, slots leaked, an iteration hung."""
        problems: dict[str, str] = {}
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stop:
            problems["scheduler"] = "the scheduler thread has died: no request can be answered"
        if self.leaked_slots:
            problems["slots"] = f"{self.leaked_slots} of {self.engine.max_slots} KV-cache slots leaked"
        busy = self._busy_since
        if busy is not None and time.perf_counter() - busy > self.stall_s:
            problems["engine"] = f"one scheduler iteration has run for over {self.stall_s:g}s"
        return problems

    def _retry_after(self) -> int:
        """Seconds until a queue place is likely free: one sequence's expected remaining time, at least 1."""
        return max(1, min(30, len(self._waiting) // max(1, self.engine.max_slots) + 1))

    # -- the scheduler thread --------------------------------------------------------------------------
    def _emit(self, seq: Sequence, event: Event) -> None:
        seq.loop.call_soon_threadsafe(seq.events.put_nowait, event)

    def _free_slot(self, seq: Sequence) -> None:
        if seq.slot is None:
            return
        slot, seq.slot = seq.slot, None
        try:
            self.engine.release(slot)
        except Exception:  # the slot goes back to the pool regardless: the next prefill overwrites it
            log.exception("engine.release(%s) failed", slot)
        with self._cv:
            if slot not in self._free:
                self._free.append(slot)

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        self._free_slot(seq)
        seq.finish_reason = reason
        if error is not None:
            self._emit(seq, Event(EventKind.ERROR, text=error, finish_reason=reason))
        else:
            self._flush_text(seq, final=True)
            self._emit(seq, Event(EventKind.DONE, finish_reason=reason))

    def _fail(self, seq: Sequence, what: str, exc: BaseException) -> None:
        """One request's fault: log it, answer it, free its slot; nobody else is touched."""
        log.error("%s failed for sequence %s: %s: %s", what, seq.seq_id, type(exc).__name__, exc,
                  exc_info=not isinstance(exc, (ValueError, OverflowError)))
        self._finish(seq, FinishReason.ERROR, error=f"{what} failed: {type(exc).__name__}: {exc}")

    def _flush_text(self, seq: Sequence, final: bool = False) -> None:
        """Send the text that can no longer change: hold back a partial UTF-8 char or a possible stop prefix."""
        text = seq.text
        upto = len(text)
        if not final:
            if text.endswith("\ufffd"):
                upto = len(text.rstrip("\ufffd"))
            hold = max((len(s) - 1 for s in seq.sampling.stop), default=0)
            upto = min(upto, len(text) - hold) if hold else upto
        if upto > seq.emitted:
            self._emit(seq, Event(EventKind.DELTA, text=text[seq.emitted:upto]))
            seq.emitted = upto

    def _sample(self, seq: Sequence, row: np.ndarray, lse: float, now: float) -> int:
        """Mask, sample and account one token for `seq` (log-probability, TTFT/ITL metrics)."""
        if seq.constraint is not None:
            row = seq.constraint.mask(row)  # in place: an allowed token keeps its raw logit
        assert seq.sampler is not None
        token = seq.sampler(row)
        # the model's own log-probability of the token (unmasked, temperature 1); `lse` is the row's
        # log-sum-exp taken before any mask
        seq.logprob_sum += float(row[token]) - lse
        seq.logprob_count += 1
        if seq.t_first is None:
            seq.t_first = now
            self._observe(self.metrics.ttft, seq.model_label, now - seq.t_submit)
        elif seq.t_last is not None:
            self._observe(self.metrics.itl, seq.model_label, now - seq.t_last)
        seq.t_last = now
        if seq.constraint is not None:
            seq.constraint.advance(token)
        return token

    def _observe(self, histogram: Any, label: str, value: float) -> None:
        """Observe into the histogram's child for `label` (looked up once, not per token)."""
        key = (id(histogram), label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = histogram.labels(model=label)
        child.observe(value)

    def _accept_all(self, batch: list[Sequence], logits: Any, now: float) -> None:
        """One token for each sequence of `batch` from its row of `logits` [B, vocab]; a fault fails that
        sequence alone. The log-sum-exps for the log-probabilities are taken for the batch at once."""
        rows = as_array(logits)
        lse = logsumexp(rows).tolist()
        for i, seq in enumerate(batch):
            try:
                self._accept(seq, rows[i], lse[i], now)
            except Exception as exc:
                self._fail(seq, "sampling", exc)

    def _accept(self, seq: Sequence, row: np.ndarray, lse: float, now: float) -> None:
        """Sample one token for `seq`, extend its text, and decide whether it is finished."""
        token = self._sample(seq, row, lse, now)
        if token in self.eos:
            self._finish(seq, FinishReason.STOP)
            return
        seq.generated.append(token)
        before = len(seq.text)
        assert seq.detokenizer is not None
        seq.text = seq.detokenizer.step(token, seq.text)
        for stop in seq.sampling.stop:  # only where the new text can complete a stop string
            at = seq.text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                seq.text = seq.text[:at]
                self._finish(seq, FinishReason.STOP)
                return
        if seq.constraint is not None and seq.constraint.done:
            self._finish(seq, FinishReason.STOP)
        elif (len(seq.generated) >= seq.sampling.max_tokens
              or len(seq.prompt_ids) + len(seq.generated) >= self.engine.max_len):
            self._finish(seq, FinishReason.LENGTH)
        else:
            self._flush_text(seq)

    def _retire(self) -> None:
        """Drop cancelled and timed-out sequences (running or waiting) and free their slots."""
        now = time.perf_counter()
        for seq in [*self._running, *self._admitting]:
            if seq.cancelled:
                self._finish(seq, FinishReason.CANCELLED, error="cancelled")
            elif now > seq.deadline:
                self._finish(seq, FinishReason.TIMEOUT, error="request timed out")
        self._running = [s for s in self._running if s.finish_reason is None]
        self._admitting = [s for s in self._admitting if s.finish_reason is None]
        with self._cv:
            kept: collections.deque[Sequence] = collections.deque()
            gone: list[tuple[Sequence, FinishReason, str]] = []
            for seq in self._waiting:
                if seq.cancelled:
                    gone.append((seq, FinishReason.CANCELLED, "cancelled"))
                elif now > seq.deadline:
                    gone.append((seq, FinishReason.TIMEOUT, "request timed out in the queue"))
                else:
                    kept.append(seq)
            self._waiting = kept
        for seq, reason, why in gone:
            self._finish(seq, reason, error=why)

    def _prepare(self, seq: Sequence) -> bool:
        """Per-request setup inside the request's own error boundary: a bad parameter fails it alone."""
        try:
            seq.sampler = Sampler(seq.sampling)
            seq.detokenizer = Detokenizer(self.engine.tokenizer)
            return True
        except Exception as exc:
            self._fail(seq, "request setup", exc)
            return False

    def _prefill(self, admitted: list[Sequence]) -> list[torch.Tensor | None]:
        """Prefill the admitted batch; on a fault, one by one so only the request at fault fails."""
        try:
            rows = list(self.engine.prefill_many([s.slot for s in admitted], [s.prompt_ids for s in admitted]))
            self.fault = None
            return rows
        except Exception:
            log.exception("batched prefill of %d sequences failed; retrying one at a time", len(admitted))
        out: list[torch.Tensor | None] = []
        for seq in admitted:
            try:
                out.append(self.engine.prefill(seq.slot, seq.prompt_ids))  # type: ignore[arg-type]
                self.fault = None
            except Exception as exc:
                self._prefill_failed(seq, exc)
                out.append(None)
        return out

    def _prefill_failed(self, seq: Sequence, exc: Exception) -> None:
        """The engine failed `seq`'s prompt: remembered as the engine's fault (/ready), the request fails alone."""
        self.fault = f"prefill: {type(exc).__name__}: {exc}"
        self._fail(seq, "engine prefill", exc)

    def _chunk(self, seq: Sequence, take: int) -> np.ndarray | None:
        """Prefill the next `take` tokens of `seq`'s prompt; its last logits once the prompt is complete."""
        ids = seq.prompt_ids[seq.prefilled:seq.prefilled + take]
        try:
            run = self.engine.prefill if seq.prefilled == 0 else self.engine.extend
            row = run(seq.slot, ids)  # type: ignore[arg-type]
            self.fault = None
        except Exception as exc:
            self._prefill_failed(seq, exc)
            return None
        seq.prefilled += take
        return as_array(row) if seq.prefilled == len(seq.prompt_ids) else None

    def _prefill_step(self) -> list[tuple[Sequence, np.ndarray]]:
        """This iteration's prefill work within the token budget, in arrival order: fresh prompts that fit it
        whole as one batch, then one chunk of the next prompt. (sequence, last logits) per completed prompt.
        With nothing running there is no stream to keep moving: every prompt goes whole (chunks cost ~10%)."""
        unbounded = not self.prefill_chunk or not self._running
        budget = len(self._admitting) * self.engine.max_len if unbounded else self.prefill_chunk
        whole: list[Sequence] = []
        chunk: tuple[Sequence, int] | None = None
        for seq in self._admitting:
            left = len(seq.prompt_ids) - seq.prefilled
            if seq.prefilled == 0 and left <= budget:
                whole.append(seq)
                budget -= left
                continue
            if budget > 0:
                chunk = (seq, min(left, budget))
            break
        done = []
        if whole:
            for seq, row in zip(whole, self._prefill(whole), strict=True):
                if row is not None:
                    seq.prefilled = len(seq.prompt_ids)
                    done.append((seq, as_array(row)))
        if chunk is not None and (last := self._chunk(*chunk)) is not None:
            done.append((chunk[0], last))
        return done

    def _admit(self) -> None:
        """Move waiting requests into free slots, then prefill within the budget; a sequence whose prompt is
        complete gets its first token and joins the running set."""
        fresh = []
        with self._cv:
            while self._free and self._waiting:
                seq = self._waiting.popleft()
                seq.slot = self._free.pop()
                fresh.append(seq)
            self.metrics.queue_depth.set(len(self._waiting))
        self._admitting.extend(seq for seq in fresh if self._prepare(seq))
        if self._admitting:
            done = self._prefill_step()
            if done:
                self._running.extend(seq for seq, _ in done)
                self._accept_all([seq for seq, _ in done], np.stack([row for _, row in done]),
                                 time.perf_counter())
        self._admitting = [s for s in self._admitting
                           if s.finish_reason is None and s.prefilled < len(s.prompt_ids)]
        self._running = [s for s in self._running if s.finish_reason is None]
        self.metrics.running.set(len(self._running))

    def _step(self) -> None:
        batch = list(self._running)
        slots = [s.slot for s in batch]
        tokens = [s.generated[-1] if s.generated else s.prompt_ids[-1] for s in batch]
        try:
            logits = self.engine.decode(slots, tokens)  # type: ignore[arg-type]
            self.fault = None
        except Exception as exc:
            log.exception("decode step failed; failing its %d sequences", len(batch))
            self.fault = f"decode: {type(exc).__name__}: {exc}"
            for seq in batch:
                self._finish(seq, FinishReason.ERROR, error=f"engine error: {type(exc).__name__}: {exc}")
            self._running = []
            return
        self.steps += 1
        self.metrics.batch_size.observe(len(batch))
        self._accept_all(batch, logits, time.perf_counter())
        self._running = [s for s in self._running if s.finish_reason is None]

    def _recover(self) -> None:
        """Last resort after an unexpected fault in an iteration: fail what was in flight, free every slot."""
        self.loop_faults += 1
        for seq in [*self._running, *self._admitting]:
            if seq.finish_reason is None:
                self._finish(seq, FinishReason.ERROR, error="scheduler fault")
            self._free_slot(seq)
        self._running, self._admitting = [], []
        self._check_slots()

    def _check_slots(self) -> None:
        """Slot accounting at an iteration's end: every slot is free or held by a running sequence."""
        with self._cv:
            held = sum(1 for s in [*self._running, *self._admitting] if s.slot is not None)
            self.leaked_slots = self.engine.max_slots - len(self._free) - held

    def _iterate(self) -> None:
        self._busy_since = time.perf_counter()
        try:
            self._retire()
            self._admit()
            if self._running:
                self._step()
            self.metrics.running.set(len(self._running))
            self._check_slots()
        except Exception:  # never let the loop die: the server would hang every later request
            log.exception("scheduler iteration failed")
            self._recover()
        finally:
            self._busy_since = None

    def _probe_engine(self) -> None:
        """While idle after an engine fault: one tiny prefill on a free slot; success clears the fault (so
        /ready recovers without traffic), failure keeps it; at most once a second."""
        with self._cv:
            if not self._free:
                return
            slot = self._free.pop()
        try:
            self.engine.prefill(slot, [next(iter(self.eos), 0)])
            self.fault = None
        except Exception as exc:
            self.fault = f"probe: {type(exc).__name__}: {exc}"
            time.sleep(1.0)
        finally:
            probe = Sequence([], SamplingParams(max_tokens=1), None, None, slot=slot)  # type: ignore[arg-type]
            self._free_slot(probe)

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cv:
                while not self._stop and not self._running and not self._waiting and not self._admitting:
                    self._cv.wait(timeout=1.0)
                    if self.fault and not self._waiting:
                        break
                if self._stop:
                    break
            if self.fault and not self._running and not self._waiting and not self._admitting:
                self._probe_engine()
            else:
                self._iterate()
        for seq in [*self._running, *self._admitting, *self._waiting]:
            self._finish(seq, FinishReason.CANCELLED, error="server shutting down")
