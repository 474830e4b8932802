"""MicroBatcher: concurrent items are processed together, in order, with per-item errors and back-pressure."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.batcher import BatcherClosedError, MicroBatcher, QueueFullError


def test_concurrent_items_share_a_batch_and_keep_their_results() -> None:
    batches: list[list[int]] = []

    def process(items: list[int]) -> list[int]:
        batches.append(list(items))
        time.sleep(0.02)  # while one batch runs, the next one fills up
        return [x * 10 for x in items]

    with MicroBatcher(process, max_batch=8, max_wait_ms=20) as batcher, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda x: batcher.submit(x).result(timeout=10), range(40)))
    assert results == [x * 10 for x in range(40)]
    assert sorted(x for b in batches for x in b) == list(range(40))
    assert max(len(b) for b in batches) > 1
    assert all(len(b) <= 8 for b in batches)
    assert len(batches) < 40


def test_max_batch_one_never_batches() -> None:
    sizes: list[int] = []
    with MicroBatcher(lambda items: sizes.append(len(items)) or items, max_batch=1, max_wait_ms=50) as batcher:
        futures = [batcher.submit(i) for i in range(10)]
        assert [f.result(timeout=10) for f in futures] == list(range(10))
    assert sizes == [1] * 10


def test_a_lone_request_does_not_pay_the_wait_window() -> None:
    with MicroBatcher(lambda items: items, max_batch=64, max_wait_ms=3000) as batcher:
        for _ in range(3):
            started = time.perf_counter()
            assert batcher.submit("x").result(timeout=10) == "x"
            assert time.perf_counter() - started < 1.5  # the 3 s window would have been waited out


def test_errors_fail_only_their_items_or_the_whole_batch() -> None:
    def process(items: list[int]) -> list[int | BaseException]:
        if -1 in items:
            raise RuntimeError("batch broke")
        return [ValueError(f"bad {x}") if x % 2 else x for x in items]

    with MicroBatcher(process, max_batch=4, max_wait_ms=1) as batcher:
        assert batcher.submit(2).result(timeout=10) == 2
        with pytest.raises(ValueError, match="bad 3"):
            batcher.submit(3).result(timeout=10)
        with pytest.raises(RuntimeError, match="batch broke"):
            batcher.submit(-1).result(timeout=10)
        assert batcher.submit(4).result(timeout=10) == 4  # the worker survived


def test_on_batch_reports_sizes() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def process(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    with MicroBatcher(process, max_batch=16, max_wait_ms=0, on_batch=lambda n, s: seen.append(n)) as batcher:
        first = batcher.submit(0)
        time.sleep(0.05)  # the worker now blocks on the first batch; the rest queue up behind it
        rest = [batcher.submit(i) for i in range(1, 6)]
        gate.set()
        assert [f.result(timeout=10) for f in [first, *rest]] == list(range(6))
    assert seen == [1, 5]


def test_back_pressure_and_close() -> None:
    gate = threading.Event()
    batcher = MicroBatcher(lambda items: (gate.wait(5), items)[1], max_batch=1, max_wait_ms=0, max_queue=2)
    running = batcher.submit(0)
    time.sleep(0.05)
    queued = [batcher.submit(1), batcher.submit(2)]
    with pytest.raises(QueueFullError):
        batcher.submit(3)
    gate.set()
    assert [f.result(timeout=10) for f in [running, *queued]] == [0, 1, 2]
    batcher.close()
    with pytest.raises(BatcherClosedError):
        batcher.submit(4)


def test_async_run_and_cancelled_items_are_skipped() -> None:
    processed: list[int] = []
    gate = threading.Event()

    def process(items: list[int]) -> list[int]:
        gate.wait(5)
        processed.extend(items)
        return items

    async def main(batcher: MicroBatcher[int, int]) -> list[int]:
        blocker = asyncio.ensure_future(batcher.run(0))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(batcher.run(99))
        await asyncio.sleep(0.01)
        doomed.cancel()
        kept = asyncio.ensure_future(batcher.run(1))
        await asyncio.sleep(0.01)
        gate.set()
        return [await blocker, await kept]

    with MicroBatcher(process, max_batch=8, max_wait_ms=0) as batcher:
        assert asyncio.run(main(batcher)) == [0, 1]
    assert 99 not in processed


def test_several_workers_process_batches_side_by_side_and_close_drains_them() -> None:
    both_running = threading.Barrier(2, timeout=5)
    threads: set[str] = set()
    done: list[int] = []
    lock = threading.Lock()

    def process(items: list[int]) -> list[int]:
        if items[0] < 2:
            both_running.wait()  # fails unless two batches are in process at once
        with lock:
            threads.add(threading.current_thread().name)
            done.extend(items)
        return [x + 100 for x in items]

    initialised: list[str] = []
    batcher = MicroBatcher(
        process,
        max_batch=1,
        max_wait_ms=0,
        workers=2,
        name="pair",
        thread_init=lambda: initialised.append(threading.current_thread().name),
    )
    assert [t.name for t in batcher.workers] == ["pair-0", "pair-1"]
    first = [batcher.submit(0), batcher.submit(1)]
    assert [f.result(timeout=10) for f in first] == [100, 101]
    rest = [batcher.submit(i) for i in range(2, 30)]
    batcher.close()  # returns once every queued item is processed
    assert all(f.done() for f in rest)
    assert [f.result() for f in rest] == [i + 100 for i in range(2, 30)]
    assert sorted(done) == list(range(30))
    assert threads == {"pair-0", "pair-1"}
    assert sorted(initialised) == ["pair-0", "pair-1"]  # once in each worker
    with pytest.raises(BatcherClosedError):
        batcher.submit(99)


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, workers=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_wait_ms=-1)
