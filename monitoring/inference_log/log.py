"""The inference log (contract C6): every request the model server or the router answers, and its feedback.

`open_log(settings)` opens the store named by `settings.inference_log_uri` (SQLite in WAL mode under the state
dir locally, PostgreSQL on a cluster) with a group-committing writer (writer.py) and a pruning thread. `log.hook`
is a request hook (contract C1): it enqueues the record and returns an awaitable that resolves once the record is
committed -- or after `write_timeout_s` at the latest: a locked, full or hung database never holds a response
hostage. A request answered without a committed record is counted (`not_logged`, exported by `log.metrics` as
llmops_inference_log_write_failures_total{reason}), never raised to the client.
Feedback ratings are -1 (bad), 0 (neutral) or 1 (good); a correction is the answer the model should have given.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Awaitable
from concurrent.futures import Future
from typing import Any

from llmops.errors import LlmopsError
from llmops.params import InferenceLogParams, Params
from llmops.settings import Settings
from monitoring.inference_log.metrics import LogCollector
from monitoring.inference_log.store import (
    FeedbackEntry,
    LoggedRequest,
    LogStore,
    RejectedRecord,
    open_store,
    rows_from,
)
from monitoring.inference_log.writer import BatchWriter, Pruner, WriterClosed

log = logging.getLogger("llmops.inference_log")
RATINGS = (-1, 0, 1)
# Why an answered request has no committed record (the `reason` label of the failures counter):
NOT_LOGGED_REASONS = (
    "timeout",  # not committed within write_timeout_s: answered anyway; the record stays queued and may land late
    "stalled",  # the writer was already stuck in one commit longer than write_timeout_s: not waited for at all
    "queue_full",  # no room in max_queue within write_timeout_s: the record is dropped
    "error",  # the database refused it (full disk, lost connection, a value it cannot hold): the record is lost
    "writer_down",  # the writer thread is closed or died: the record is dropped
    "rejected",  # a record no column can hold (store.RejectedRecord): the record is dropped
)


class UnknownRequest(LlmopsError):
    """Feedback (or a lookup) for a request id the log does not hold."""


class InferenceLog:
    def __init__(self, store: LogStore, params: InferenceLogParams, *, start_writer: bool = True) -> None:
        self.store, self.params = store, params
        self.writer: BatchWriter | None = None
        self.pruner: Pruner | None = None
        self.not_logged = dict.fromkeys(NOT_LOGGED_REASONS, 0)
        self._count_lock = threading.Lock()
        if start_writer:
            self.writer = BatchWriter(store, batch_size=params.batch_size, flush_interval_ms=params.flush_interval_ms,
                                      max_queue=params.max_queue)
            self.pruner = Pruner(self._periodic_prune, params.prune_interval_s)

    @property
    def metrics(self) -> LogCollector:
        """A Prometheus collector of this log's failures and writer health: register it on the /metrics
        registry of the server or router this log is plugged into (serving's `collectors=`)."""
        return LogCollector(self)

    # -- writing ------------------------------------------------------------------------------------------
    def submit(self, record: Any) -> Future[None]:
        """Queue a RequestRecord for the writer; the future resolves when it is committed. Thread-safe.
        Raises queue.Full when `max_queue` records are already waiting, RejectedRecord for an unstorable one."""
        return self._writer().submit(rows_from([record])[0])

    def hook(self, record: Any) -> Awaitable[None] | None:
        """The C1 hook: never writes on the caller's thread and never waits longer than `write_timeout_s`. In an
        event loop it returns an awaitable (the caller awaits it before completing the response); called from a
        plain thread it blocks until committed or timed out. Not logged: a record marked `extra["shadow"]` (a
        router's mirrored copy, answered to no one), and an unauthenticated request (401/403): its prompt is
        nobody's traffic and must not reach drift or training."""
        if (record.extra or {}).get("shadow") or record.status in (401, 403):
            return None
        writer = self._writer()
        try:
            row = rows_from([record])[0]
        except RejectedRecord as exc:
            log.warning("inference log: %s", exc)
            self._not_logged("rejected")
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._log_from_thread(writer, row)
            return None
        deadline = loop.time() + self.params.write_timeout_s
        try:
            fut = writer.submit_async(row, loop)  # queued now, even by a caller that never awaits
        except WriterClosed:
            self._not_logged("writer_down")
            return None
        except queue.Full:
            return self._when_room(writer, row, loop, deadline)
        return self._committed(writer, fut, loop, deadline)

    async def _when_room(self, writer: BatchWriter, row: dict[str, Any], loop: asyncio.AbstractEventLoop,
                         deadline: float) -> None:
        """Backpressure: the queue is full, so this request waits for room -- within the same bound."""
        while True:
            await asyncio.sleep(0.005)
            try:
                fut = writer.submit_async(row, loop)
                break
            except WriterClosed:
                return self._not_logged("writer_down")
            except queue.Full:
                if loop.time() >= deadline:
                    return self._not_logged("queue_full")
        await self._committed(writer, fut, loop, deadline)

    async def _committed(self, writer: BatchWriter, fut: asyncio.Future[None], loop: asyncio.AbstractEventLoop,
                         deadline: float) -> None:
        if writer.busy_for() > self.params.write_timeout_s:
            fut.cancel()  # nobody waits for it; the writer still writes the row when the database comes back
            return self._not_logged("stalled")
        try:
            await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))  # cancels `fut` on timeout
        except TimeoutError:
            self._not_logged("timeout")
        except WriterClosed:  # it died with this record queued
            self._not_logged("writer_down")
        except Exception:  # the writer reported the failure once per batch; count this request
            self._not_logged("error")

    def _log_from_thread(self, writer: BatchWriter, row: dict[str, Any]) -> None:
        deadline = time.monotonic() + self.params.write_timeout_s
        while True:
            try:
                fut = writer.submit(row)
                break
            except WriterClosed:
                return self._not_logged("writer_down")
            except queue.Full:
                if time.monotonic() >= deadline:
                    return self._not_logged("queue_full")
                time.sleep(0.005)
        if writer.busy_for() > self.params.write_timeout_s:
            return self._not_logged("stalled")
        try:
            fut.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._not_logged("timeout")
        except WriterClosed:
            self._not_logged("writer_down")
        except Exception:
            self._not_logged("error")

    def _not_logged(self, reason: str) -> None:
        with self._count_lock:
            self.not_logged[reason] += 1

    def _writer(self) -> BatchWriter:
        if self.writer is None:
            raise LlmopsError("this inference log was opened read-only", "open it with start_writer=True")
        return self.writer

    def feedback(self, request_id: str, rating: int | None, correction: str | None = None,
                 comment: str | None = None, *, key_id: str | None = None) -> FeedbackEntry:
        """Record feedback on a logged request (committed when this returns); UnknownRequest if not logged, or
        logged for another key than `key_id`'s (a caller rates and corrects only its own key's answers)."""
        if rating is not None and rating not in RATINGS:
            raise LlmopsError(f"rating must be -1, 0 or 1 (got {rating!r})", "send -1 (bad), 0 or 1 (good)")
        if rating is None and correction is None and not comment:
            raise LlmopsError("feedback needs a rating, a correction or a comment", "send at least one of them")
        entry = FeedbackEntry(request_id, time.time(), rating, correction, comment)
        if not self.store.add_feedback(entry, key_id):
            raise UnknownRequest(f"no logged request with id {request_id!r}",
                                 "use the x-request-id of a response from this server (pruned requests are gone)")
        return entry

    # -- reading ------------------------------------------------------------------------------------------
    def get(self, request_id: str) -> LoggedRequest | None:
        return self.store.get(request_id)

    async def exists_async(self, request_id: str) -> bool:
        """Whether `request_id` is logged, off the event loop (the router refuses a client's reused id with 409).
        Bounded like the hook: a database that does not answer within `write_timeout_s` (or fails) reads as
        "not logged" -- the request goes on, and the store still never overwrites a row (a reused id is stored
        under a `.dup-` id)."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.store.exists, request_id),
                                          self.params.write_timeout_s)
        except Exception as exc:  # TimeoutError, or the database's error
            log.warning("inference log: could not check request id %s (%s): taken as new", request_id[:64],
                        type(exc).__name__)
            return False

    def query(self, since: float | None = None, until: float | None = None, limit: int | None = None,
              newest_first: bool = False) -> list[LoggedRequest]:
        """Requests that started in [since, until): the latest `limit` of them, oldest first."""
        return self.store.query(since, until, limit, newest_first)

    def count(self) -> int:
        return self.store.count()

    # -- retention ----------------------------------------------------------------------------------------
    def prune(self, max_age_days: float | None = None, max_rows: int | None = None) -> dict[str, int]:
        """Delete requests older than `max_age_days` and the oldest beyond `max_rows` (default: params)."""
        age = self.params.retention_days if max_age_days is None else max_age_days
        rows = self.params.max_rows if max_rows is None else max_rows
        return self.store.prune(age, rows)

    def _periodic_prune(self) -> None:
        done = self.prune()
        if any(done.values()):
            log.info("inference log pruned: %s", done)

    def close(self) -> None:
        """Commit what is queued, stop the writer and the pruner, release the database."""
        if self.pruner is not None:
            self.pruner.close()
        if self.writer is not None:
            self.writer.close()
        self.store.close()

    def __enter__(self) -> InferenceLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_log(settings: Settings, params: Params | InferenceLogParams | None = None, *,
             start_writer: bool = True) -> InferenceLog:
    """The inference log at `settings.inference_log_uri`, with params.yaml `inference_log:` unless given."""
    if params is None:
        params = settings.params()
    store = open_store(str(settings.inference_log_uri))
    if isinstance(params, Params):
        if params.monitoring.log.redact:  # PII scrubbed before it is stored (llmops/privacy)
            from monitoring.inference_log.privacy import RedactingStore

            store = RedactingStore(store, params.privacy)
        params = params.inference_log
    return InferenceLog(store, params, start_writer=start_writer)
