"""Embedding shards: the background writer keeps order, reports durable shards, bounds its queue, surfaces errors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.shards import ShardWriter, read_shard


def _shard(i: int, rows: int = 5, dim: int = 4) -> tuple[np.ndarray, np.ndarray]:
    keys = np.arange(i * rows, (i + 1) * rows, dtype=np.int64)
    return keys, np.full((rows, dim), float(i), dtype=np.float32)


def test_shards_are_written_in_order_and_reported_once_on_disk(tmp_path: Path) -> None:
    seen: list[tuple[str, int, bool]] = []
    with ShardWriter(lambda path, rows: seen.append((path.name, rows, path.exists()))) as writer:
        for i in range(6):
            writer.submit(tmp_path / f"{i:03d}.arrow", *_shard(i))
    assert seen == [(f"{i:03d}.arrow", 5, True) for i in range(6)]
    for i in range(6):
        keys, vectors = read_shard(tmp_path / f"{i:03d}.arrow")
        assert np.array_equal(keys, _shard(i)[0]) and np.array_equal(vectors, _shard(i)[1])


def test_a_write_error_is_raised_and_later_shards_are_not_written(tmp_path: Path) -> None:
    writer = ShardWriter()
    with pytest.raises(FileNotFoundError):  # by the second submit, if the first failed by then, else by close
        writer.submit(tmp_path / "missing-dir" / "000.arrow", *_shard(0))
        writer.submit(tmp_path / "001.arrow", *_shard(1))
        writer.close()
    with pytest.raises(FileNotFoundError):
        writer.close()
    assert not (tmp_path / "001.arrow").exists()


def test_submit_raises_the_error_of_an_earlier_shard(tmp_path: Path) -> None:
    failed = threading.Event()

    def journal(path: Path, rows: int) -> None:
        failed.set()
        raise OSError("journal disk full")

    writer = ShardWriter(journal)
    writer.submit(tmp_path / "000.arrow", *_shard(0))
    assert failed.wait(10)
    with pytest.raises(OSError, match="journal disk full"):
        # the writer takes shard 1 only after recording shard 0's error, so by the fourth submit it is raised
        for i in range(1, 5):
            writer.submit(tmp_path / f"{i:03d}.arrow", *_shard(i))
    with pytest.raises(OSError, match="journal disk full"):
        writer.close()


def test_leaving_by_an_exception_writes_the_queued_shards_and_keeps_that_exception(tmp_path: Path) -> None:
    written: list[str] = []
    with pytest.raises(KeyError, match="encoder failed"), ShardWriter(lambda p, r: written.append(p.name)) as writer:
        for i in range(3):
            writer.submit(tmp_path / f"{i:03d}.arrow", *_shard(i))
        raise KeyError("encoder failed")
    assert written == ["000.arrow", "001.arrow", "002.arrow"]


def test_submit_waits_when_depth_shards_are_queued(tmp_path: Path) -> None:
    release = threading.Event()
    writer = ShardWriter(lambda path, rows: release.wait(10), depth=2)
    for i in range(3):  # one being written (held in the callback), two queued
        writer.submit(tmp_path / f"{i:03d}.arrow", *_shard(i))
    fourth = threading.Thread(target=writer.submit, args=(tmp_path / "003.arrow", *_shard(3)))
    fourth.start()
    fourth.join(0.3)
    assert fourth.is_alive(), "a fourth shard was accepted while two were queued"
    release.set()
    fourth.join(10)
    writer.close()
    assert sorted(p.name for p in tmp_path.glob("*.arrow")) == [f"{i:03d}.arrow" for i in range(4)]
