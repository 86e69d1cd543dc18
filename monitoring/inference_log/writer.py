"""Group commit off the request path: one writer thread turns queued records into one transaction per batch.

The request path only enqueues (microseconds) and gets a future that resolves once the record's batch is
committed; the server awaits it before completing the response, so an acknowledged request is always on disk,
yet no request ever does disk I/O itself and N concurrent requests cost one commit, not N. While a commit runs,
the next batch fills up, so batches grow with the load by themselves; `flush_interval_ms` only bounds how long
a record waits for company when the queue is quiet. The same thread prunes the log at start and every
`prune_interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from monitoring.inference_log.store import LogStore

log = logging.getLogger("llmops.inference_log")
_STOP = object()
_RETRIES = 3


class BatchWriter:
    def __init__(self, store: LogStore, *, batch_size: int = 256, flush_interval_ms: float = 2.0,
                 max_queue: int = 20000, prune: Callable[[], Any] | None = None,
                 prune_interval_s: float = 3600.0) -> None:
        self.store = store
        self.batch_size, self.linger = max(1, batch_size), max(0.0, flush_interval_ms) / 1000
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, max_queue))
        self.prune, self.prune_interval_s = prune, prune_interval_s
        self.committed = self.failed = self.batches = 0
        self._thread = threading.Thread(target=self._run, name="llmops-inference-log", daemon=True)
        self._closed = False
        self._inflight: list[tuple[dict[str, Any], Any, Any]] = []
        self._thread.start()

    def submit(self, row: dict[str, Any]) -> Future[None]:
        """Queue one row; the future resolves when it is committed (raises if the write failed).
        Raises queue.Full when the queue is full (the caller decides whether to wait)."""
        fut: Future[None] = Future()
        self._put(row, fut, None)
        return fut

    def submit_async(self, row: dict[str, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """As `submit`, for a caller in `loop`: an asyncio future, settled with ONE loop callback per batch
        (not one cross-thread wake-up per record)."""
        fut = loop.create_future()
        self._put(row, fut, loop)
        return fut

    def _put(self, row: dict[str, Any], fut: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        if self._closed:
            raise RuntimeError("the inference log writer is closed")
        self.queue.put_nowait((row, fut, loop))

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not leave requests awaiting forever
            log.exception("inference log writer died")
            self._closed = True
            pending = list(self._inflight)
            while True:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    pending.append(item)
            self._settle_all(pending, exc)

    def _loop(self) -> None:
        # once at start, before any queued record (a server that was down past the retention), then periodically
        next_prune = time.monotonic() + self.prune_interval_s
        self._prune()
        stopping = False
        while not stopping:
            timeout = max(0.05, next_prune - time.monotonic()) if self.prune else None
            try:
                first = self.queue.get(timeout=timeout)
            except queue.Empty:
                first = None
            batch: list[tuple[dict[str, Any], Any, Any]] = []
            if first is _STOP:
                stopping = True
            elif first is not None:
                batch.append(first)
                stopping = self._fill(batch)
            if batch:
                self._inflight = batch
                self._commit(batch)
                self._inflight = []
            if self.prune and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_interval_s
                self._prune()
        rest = []  # a submit that raced close(): commit it too, so no future is left waiting
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)
        if rest:
            self._commit(rest)

    def _prune(self) -> None:
        if self.prune is None:
            return
        try:
            self.prune()
        except Exception:
            log.exception("inference log: periodic prune failed")

    def _fill(self, batch: list[tuple[dict[str, Any], Any, Any]]) -> bool:
        """Take what is queued (up to batch_size), lingering at most `linger` for more; True on stop."""
        deadline = time.monotonic() + self.linger
        while len(batch) < self.batch_size:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                try:
                    item = self.queue.get(timeout=left)
                except queue.Empty:
                    return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _commit(self, batch: list[tuple[dict[str, Any], Any, Any]]) -> None:
        rows = [row for row, _, _ in batch]
        error: BaseException | None = None
        for attempt in range(_RETRIES):
            try:
                self.store.write_batch(rows)
                error = None
                break
            except Exception as exc:  # a locked or briefly unreachable database: retry, then report
                error = exc
                log.warning("inference log: writing %d records failed (attempt %d): %s", len(rows), attempt + 1, exc)
                time.sleep(0.2 * (attempt + 1))
        self.batches += 1
        if error is None:
            self.committed += len(rows)
        else:
            self.failed += len(rows)
        self._settle_all(batch, error)

    def _settle_all(self, batch: list[tuple[dict[str, Any], Any, Any]], error: BaseException | None) -> None:
        by_loop: dict[Any, list[asyncio.Future[None]]] = {}
        for _, fut, loop in batch:
            if loop is not None:
                by_loop.setdefault(loop, []).append(fut)
            elif not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
        for loop, futs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, futs, error)

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self.queue.put(_STOP)
        self._thread.join(timeout)


def _settle(futs: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futs:
        if fut.done():  # the request was cancelled meanwhile
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
