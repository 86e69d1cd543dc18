"""Continuous batching: iteration-level scheduling of sequences over an engine's KV-cache slots.

One scheduler thread owns the engine (engines are blocking and not thread-safe). Between two decode steps it
retires finished, cancelled and timed-out sequences (their slots are released at once), admits waiting
requests into free slots (prefill + first token), then decodes every running sequence in one batched step.
So a short request never waits for a long one, and a new one starts without the batch draining.
Requests come from the asyncio server through `submit`; results go back as events on an asyncio queue.
The wait queue is bounded: `submit` raises `QueueFull` (the server's 429) instead of letting callers hang.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from serving.engines.base import Engine
from serving.metrics import Metrics
from serving.sampling import Sampler, SamplingParams
from serving.structured import Constraint

log = logging.getLogger("llmops.serving")


class QueueFull(Exception):
    """The wait queue is at its bound; the caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("queue full")
        self.retry_after = retry_after


@dataclass
class Event:
    kind: str  # "delta" (text), "done" (finish_reason), "error" (message)
    text: str = ""
    finish_reason: str | None = None


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
    sampler: Sampler | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded text of `generated` (stop strings cut)
    emitted: int = 0  # characters of `text` already sent
    finish_reason: str | None = None
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
    def __init__(self, engine: Engine, metrics: Metrics, *, queue_size: int, model_label: str = "") -> None:
        self.engine = engine
        self.metrics = metrics
        self.queue_size = queue_size
        self.model_label = model_label
        self.eos = engine.eos_token_ids
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._free = list(range(engine.max_slots))
        self._cv = threading.Condition()
        self._stop = False
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._loop, name="llmops-scheduler", daemon=True)
        self.steps = 0
        self.fault: str | None = None

    # -- called from the server (any thread) -----------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
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
            return {"running": len(self._running), "waiting": len(self._waiting), "free_slots": len(self._free),
                    "max_slots": self.engine.max_slots, "queue_size": self.queue_size, "steps": self.steps}

    def _retry_after(self) -> int:
        """Seconds until a queue place is likely free: one sequence's expected remaining time, at least 1."""
        return max(1, min(30, len(self._waiting) // max(1, self.engine.max_slots) + 1))

    # -- the scheduler thread --------------------------------------------------------------------------
    def _emit(self, seq: Sequence, event: Event) -> None:
        seq.loop.call_soon_threadsafe(seq.events.put_nowait, event)

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.slot is not None:
            self.engine.release(seq.slot)
            self._free.append(seq.slot)
            seq.slot = None
        seq.finish_reason = reason
        if error is not None:
            self._emit(seq, Event("error", text=error, finish_reason=reason))
        else:
            self._flush_text(seq, final=True)
            self._emit(seq, Event("done", finish_reason=reason))

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
            self._emit(seq, Event("delta", text=text[seq.emitted:upto]))
            seq.emitted = upto

    def _accept(self, seq: Sequence, logits: torch.Tensor, now: float) -> None:
        """Mask, sample and record one token for `seq`; decide whether it is finished."""
        raw = logits
        if seq.constraint is not None:
            logits = seq.constraint.mask(logits)
        assert seq.sampler is not None
        token = seq.sampler(logits)
        # the model's own log-probability of the token (unmasked, temperature 1): one logsumexp over the vocab
        seq.logprob_sum += float(raw[token] - torch.logsumexp(raw.float(), dim=-1))
        seq.logprob_count += 1
        if seq.t_first is None:
            seq.t_first = now
            self.metrics.ttft.labels(model=seq.model_label).observe(now - seq.t_submit)
        elif seq.t_last is not None:
            self.metrics.itl.labels(model=seq.model_label).observe(now - seq.t_last)
        seq.t_last = now
        if seq.constraint is not None:
            seq.constraint.advance(token)
        if token in self.eos:
            self._finish(seq, "stop")
            return
        seq.generated.append(token)
        seq.text = self.engine.tokenizer.decode(seq.generated, skip_special_tokens=True)
        for stop in seq.sampling.stop:
            at = seq.text.find(stop)
            if at >= 0:
                seq.text = seq.text[:at]
                self._finish(seq, "stop")
                return
        if seq.constraint is not None and seq.constraint.done:
            self._finish(seq, "stop")
        elif (len(seq.generated) >= seq.sampling.max_tokens
              or len(seq.prompt_ids) + len(seq.generated) >= self.engine.max_len):
            self._finish(seq, "length")
        else:
            self._flush_text(seq)

    def _retire(self) -> None:
        """Drop cancelled and timed-out sequences (running or waiting) and free their slots."""
        now = time.perf_counter()
        for seq in list(self._running):
            if seq.cancelled:
                self._finish(seq, "cancelled", error="cancelled")
            elif now > seq.deadline:
                self._finish(seq, "timeout", error="request timed out")
        self._running = [s for s in self._running if s.finish_reason is None]
        with self._cv:
            kept = collections.deque()
            for seq in self._waiting:
                if seq.cancelled:
                    self._finish(seq, "cancelled", error="cancelled")
                elif now > seq.deadline:
                    self._finish(seq, "timeout", error="request timed out in the queue")
                else:
                    kept.append(seq)
            self._waiting = kept

    def _admit(self) -> None:
        """Move waiting requests into free slots; those admitted together are prefilled as one batch."""
        with self._cv:
            admitted: list[Sequence] = []
            while self._free and self._waiting:
                seq = self._waiting.popleft()
                seq.slot = self._free.pop()
                admitted.append(seq)
            self.metrics.queue_depth.set(len(self._waiting))
        if not admitted:
            return
        for seq in admitted:
            seq.sampler = Sampler(seq.sampling)
        try:
            rows = list(self.engine.prefill_many([s.slot for s in admitted], [s.prompt_ids for s in admitted]))
        except Exception:  # find the request at fault: prefill one by one, so only it fails
            log.exception("batched prefill of %d sequences failed; retrying one at a time", len(admitted))
            rows = []
            for seq in admitted:
                try:
                    rows.append(self.engine.prefill(seq.slot, seq.prompt_ids))
                except Exception as exc:  # a fault in one request fails that request, never the server
                    log.exception("prefill failed for sequence %s", seq.seq_id)
                    self._finish(seq, "error", error=f"engine error: {type(exc).__name__}: {exc}")
                    rows.append(None)
        now = time.perf_counter()
        for seq, logits in zip(admitted, rows, strict=True):
            if logits is None:
                continue
            self._running.append(seq)
            try:
                self._accept(seq, logits, now)
            except Exception as exc:
                log.exception("sampling failed for sequence %s", seq.seq_id)
                self._finish(seq, "error", error=f"{type(exc).__name__}: {exc}")
        self._running = [s for s in self._running if s.finish_reason is None]
        self.metrics.running.set(len(self._running))

    def _step(self) -> None:
        batch = list(self._running)
        slots = [s.slot for s in batch]
        tokens = [s.generated[-1] if s.generated else s.prompt_ids[-1] for s in batch]
        try:
            logits = self.engine.decode(slots, tokens)  # type: ignore[arg-type]
        except Exception as exc:
            log.exception("decode step failed; failing its %d sequences", len(batch))
            for seq in batch:
                self._finish(seq, "error", error=f"engine error: {type(exc).__name__}: {exc}")
            self._running = []
            return
        self.steps += 1
        self.metrics.batch_size.observe(len(batch))
        now = time.perf_counter()
        for i, seq in enumerate(batch):
            try:
                self._accept(seq, logits[i], now)
            except Exception as exc:
                log.exception("sampling failed for sequence %s", seq.seq_id)
                self._finish(seq, "error", error=f"{type(exc).__name__}: {exc}")
        self._running = [s for s in self._running if s.finish_reason is None]

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cv:
                while not self._stop and not self._running and not self._waiting:
                    self._cv.wait(timeout=1.0)
                if self._stop:
                    break
            try:
                self._retire()
                self._admit()
                if self._running:
                    self._step()
                self.metrics.running.set(len(self._running))
            except Exception:  # never let the loop die: the server would hang every later request
                log.exception("scheduler iteration failed")
                for seq in self._running:
                    self._finish(seq, "error", error="scheduler fault")
                self._running = []
        for seq in list(self._running) + list(self._waiting):
            self._finish(seq, "cancelled", error="server shutting down")
