"""Group commit off the request path: one writer thread turns queued records into one transaction per batch.

The request path only enqueues (microseconds) and gets a future that resolves once the record's batch is
committed; the log's hook waits for it at most `write_timeout_s` (log.py), so no request does disk I/O itself,
N concurrent requests cost one commit, not N, and a stalled database never holds a response. While a commit runs,
the next batch fills up, so batches grow with the load by themselves; `flush_interval_ms` only bounds how long
a record waits for company when the queue is quiet.

A batch the database refuses is written again row by row, so one row it cannot hold costs that row, not the
up to `batch_size` requests that shared its commit; a transient failure (locked, unreachable, disk full) is
retried as a batch and then fails the batch. This thread only writes: pruning runs in its own thread (Pruner).
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
Item = tuple[dict[str, Any], Any, Any]  # (row, future, loop or None)


class WriterClosed(RuntimeError):
    """The writer is closed or died: nothing submitted now can be written."""


class BatchWriter:
    def __init__(self, store: LogStore, *, batch_size: int = 256, flush_interval_ms: float = 2.0,
                 max_queue: int = 20000) -> None:
        self.store = store
        self.batch_size, self.linger = max(1, batch_size), max(0.0, flush_interval_ms) / 1000
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, max_queue))
        self.committed = self.failed = self.batches = 0
        self.last_commit: float | None = None  # unix time of the latest successful commit
        self._busy_since: float | None = None  # monotonic start of the commit in progress
        self._thread = threading.Thread(target=self._run, name="llmops-inference-log", daemon=True)
        self._closed = False
        self._inflight: list[Item] = []
        self._thread.start()

    # -- health, read by the metrics collector and the hook ----------------------------------------------
    @property
    def alive(self) -> bool:
        """The thread runs and accepts records (False once closed or dead)."""
        return not self._closed and self._thread.is_alive()

    def busy_for(self) -> float:
        """Seconds the commit in progress has been running (0 when idle): a stalled database shows here."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def depth(self) -> int:
        return self.queue.qsize()

    # -- submitting ----------------------------------------------------------------------------------------
    def submit(self, row: dict[str, Any]) -> Future[None]:
        """Queue one row; the future resolves when it is committed (raises if the write failed).
        Raises queue.Full when the queue is full, WriterClosed when nothing can be written any more."""
        fut: Future[None] = Future()
        self._put(row, fut, None)
        return fut

    def submit_async(self, row: dict[str, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """As `submit`, for a caller in `loop`: an asyncio future, settled with ONE loop callback per batch
        (not one cross-thread wake-up per record). A cancelled future's row is still written."""
        fut = loop.create_future()
        self._put(row, fut, loop)
        return fut

    def _put(self, row: dict[str, Any], fut: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        if not self.alive:
            raise WriterClosed("the inference log writer is closed" if self._closed else
                               "the inference log writer thread died (see the log above)")
        self.queue.put_nowait((row, fut, loop))

    # -- the thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not leave requests awaiting forever
            log.exception("inference log writer died")
            self._closed = True
            died = WriterClosed(f"the inference log writer thread died: {exc!r}")  # never re-raise a SystemExit
            self._settle_all(list(self._inflight) + self._drain(), died)

    def _drain(self) -> list[Item]:
        rest = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return rest
            if item is not _STOP:
                rest.append(item)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self.queue.get()
            batch: list[Item] = []
            if first is _STOP:
                stopping = True
            else:
                batch.append(first)
                stopping = self._fill(batch)
            if batch:
                self._commit(batch)
        rest = self._drain()  # a submit that raced close(): commit it too, so no future is left waiting
        if rest:
            self._commit(rest)

    def _fill(self, batch: list[Item]) -> bool:
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

    def _commit(self, batch: list[Item]) -> None:
        self._inflight, self._busy_since = batch, time.monotonic()
        try:
            errors = self._write([row for row, _, _ in batch])
        finally:
            self._inflight, self._busy_since = [], None
        self.batches += 1
        failed = sum(e is not None for e in errors)
        self.committed += len(batch) - failed
        self.failed += failed
        if failed < len(batch):
            self.last_commit = time.time()
        by_error: dict[int, tuple[BaseException | None, list[Item]]] = {}
        for item, err in zip(batch, errors, strict=True):
            by_error.setdefault(id(err), (err, []))[1].append(item)
        for err, items in by_error.values():
            self._settle_all(items, err)

    def _write(self, rows: list[dict[str, Any]]) -> list[BaseException | None]:
        """Each row's outcome: the batch in one transaction; if the database refuses it for a row's sake, row by
        row (one transaction each), so only the rows it cannot hold fail."""
        error = self._attempt(rows, retries=_RETRIES)
        if error is None:
            return [None] * len(rows)
        if len(rows) == 1 or self.store.transient(error):
            log.error("inference log: %d records not written: %s", len(rows), _first_line(error))
            return [error] * len(rows)
        out: list[BaseException | None] = []
        for i, row in enumerate(rows):
            err = self._attempt([row], retries=1)
            if err is not None and self.store.transient(err):  # the database itself went away meanwhile
                out += [err] * (len(rows) - i)
                break
            if err is not None:
                log.error("inference log: request %s not written: %s", row.get("request_id"), _first_line(err))
            out.append(err)
        return out

    def _attempt(self, rows: list[dict[str, Any]], retries: int) -> BaseException | None:
        for attempt in range(retries):
            try:
                self.store.write_batch(rows)
                return None
            except Exception as exc:
                if not self.store.transient(exc):
                    return exc
                if attempt + 1 == retries:
                    return exc
                log.warning("inference log: writing %d records failed (attempt %d): %s", len(rows), attempt + 1,
                            _first_line(exc))
                time.sleep(0.2 * (attempt + 1))
        return None

    def _settle_all(self, batch: list[Item], error: BaseException | None) -> None:
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


class Pruner:
    """Applies the retention policy at start and every `interval_s`, in a thread of its own: a prune deletes in
    chunks (store.py) and never delays the writer's commits behind it in one thread."""

    def __init__(self, prune: Callable[[], Any], interval_s: float) -> None:
        self.prune, self.interval_s = prune, max(1.0, interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llmops-inference-log-prune", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # once at start (a server that was down past the retention), then periodically
        while True:
            try:
                self.prune()
            except Exception:
                log.exception("inference log: periodic prune failed")
            if self._stop.wait(self.interval_s):
                return

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _settle(futs: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futs:
        if fut.done():  # the request was cancelled or stopped waiting meanwhile
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
