"""Micro-batching: worker threads gather concurrent requests for a short window and process them at once."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
_STOP = object()


class BatcherClosedError(RuntimeError):
    """The batcher is stopped and accepts no more items."""


class QueueFullError(RuntimeError):
    """More items are waiting than the batcher accepts (back-pressure)."""


class MicroBatcher(Generic[T, R]):
    """Collects items submitted from any thread and hands them to `process` in batches.

    A worker takes the first waiting item, then keeps collecting until `max_batch` items or until
    `max_wait_ms` have passed since that first item, and calls `process(items)` once. `process`
    returns one result per item, in order; a result that is an exception fails only its own item,
    and an exception raised by `process` fails the whole batch. `on_batch(size, seconds)` is told
    about every batch (for metrics).

    With `workers` > 1, that many batches are processed at once (`process` must then be thread-safe):
    while one worker computes, the next collects the requests that arrive meanwhile. `thread_init` runs
    first in each worker thread (per-thread settings such as OpenMP's thread count).
    """

    def __init__(
        self,
        process: Callable[[list[T]], Sequence[R | BaseException]],
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 10_000,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "micro-batcher",
        workers: int = 1,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.process = process
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.thread_init = thread_init
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._last_size = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=name if workers == 1 else f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> list[threading.Thread]:
        """The worker threads."""
        return list(self._threads)

    @property
    def pending(self) -> int:
        """Items waiting for a batch (approximate)."""
        return self._queue.qsize()

    def submit(self, item: T) -> Future[R]:
        """Queue an item; the future resolves with its result once its batch is processed."""
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosedError("the batcher is closed")
            if self._queue.qsize() >= self.max_queue:
                raise QueueFullError(f"{self.max_queue} items are already waiting")
            self._queue.put((item, future))
        return future

    async def run(self, item: T) -> R:
        """Submit from a coroutine and await the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(item))

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop accepting items, finish those already queued, then stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:
                self._queue.put(_STOP)  # one per worker, behind every item already queued
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> MicroBatcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        if self.thread_init is not None:
            try:
                self.thread_init()
            except Exception:
                log.exception("thread_init failed")
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            # Wait for company only when requests have been arriving together: a lone client's request
            # goes straight to the encoder instead of paying the wait window every time.
            wait = self.max_wait_s if self._last_size > 1 or not self._queue.empty() else 0.0
            deadline = time.monotonic() + wait
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is _STOP:
                    stopping = True
                    break
                batch.append(entry)
            self._last_size = len(batch)
            self._run(batch)

    def _run(self, batch: list[tuple[T, Future[R]]]) -> None:
        # A future cancelled while waiting (client gone) is dropped here; the rest are marked running.
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        try:
            results = self.process([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"process returned {len(results)} results for {len(live)} items")
        except BaseException as exc:
            log.debug("batch of %d failed: %s", len(live), exc)
            for _, fut in live:
                fut.set_exception(exc)
        else:
            for (_, fut), result in zip(live, results, strict=True):
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        if self.on_batch is not None:
            try:
                self.on_batch(len(live), time.perf_counter() - started)
            except Exception:
                log.exception("on_batch callback failed")
