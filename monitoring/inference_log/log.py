"""The inference log (contract C6): every request the model server or the router answers, and its feedback.

`open_log(settings)` opens the store named by `settings.inference_log_uri` (SQLite in WAL mode under the state
dir locally, PostgreSQL on a cluster) with a group-committing writer (writer.py). `log.hook` is a request hook
(contract C1): it enqueues the record and returns an awaitable that resolves once the record is committed.
Feedback ratings are -1 (bad), 0 (neutral) or 1 (good); a correction is the answer the model should have given.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Awaitable
from concurrent.futures import Future
from typing import Any

from llmops.errors import LlmopsError
from llmops.params import InferenceLogParams, Params
from llmops.settings import Settings
from monitoring.inference_log.store import FeedbackEntry, LoggedRequest, LogStore, open_store, rows_from
from monitoring.inference_log.writer import BatchWriter

log = logging.getLogger("llmops.inference_log")
RATINGS = (-1, 0, 1)


class UnknownRequest(LlmopsError):
    """Feedback (or a lookup) for a request id the log does not hold."""


class InferenceLog:
    def __init__(self, store: LogStore, params: InferenceLogParams, *, start_writer: bool = True) -> None:
        self.store, self.params = store, params
        self.writer: BatchWriter | None = None
        if start_writer:
            self.writer = BatchWriter(store, batch_size=params.batch_size, flush_interval_ms=params.flush_interval_ms,
                                      max_queue=params.max_queue, prune=self._periodic_prune,
                                      prune_interval_s=params.prune_interval_s)

    # -- writing ------------------------------------------------------------------------------------------
    def submit(self, record: Any) -> Future[None]:
        """Queue a RequestRecord for the writer; the future resolves when it is committed. Thread-safe.
        Raises queue.Full when `max_queue` records are already waiting."""
        if self.writer is None:
            raise LlmopsError("this inference log was opened read-only", "open it with start_writer=True")
        return self.writer.submit(rows_from([record])[0])

    def hook(self, record: Any) -> Awaitable[None] | None:
        """The C1 hook: never writes on the caller's thread. In an event loop it returns an awaitable (the
        caller awaits it before completing the response); called from a plain thread it blocks until committed.
        Not logged: a record marked `extra["shadow"]` (a router's mirrored copy, answered to no one), and an
        unauthenticated request (401/403): its prompt is nobody's traffic and must not reach drift or training."""
        if (record.extra or {}).get("shadow") or record.status in (401, 403):
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._wait_for_room(record).result()
            return None
        if self.writer is None:
            raise LlmopsError("this inference log was opened read-only", "open it with start_writer=True")
        row = rows_from([record])[0]
        try:
            return self.writer.submit_async(row, loop)
        except queue.Full:
            return self._when_room(row, loop)

    async def _when_room(self, row: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        """Backpressure: the queue is full, so this request waits for room rather than be dropped."""
        assert self.writer is not None
        while True:
            await asyncio.sleep(0.005)
            try:
                fut = self.writer.submit_async(row, loop)
            except queue.Full:
                continue
            await fut
            return

    def _wait_for_room(self, record: Any) -> Future[None]:
        while True:
            try:
                return self.submit(record)
            except queue.Full:
                time.sleep(0.005)

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
        """Whether `request_id` is logged, off the event loop (the router refuses a client's reused id)."""
        return await asyncio.to_thread(self.store.exists, request_id)

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
        """Commit what is queued, stop the writer, release the database."""
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
    if isinstance(params, Params):
        params = params.inference_log
    return InferenceLog(open_store(str(settings.inference_log_uri)), params, start_writer=start_writer)
