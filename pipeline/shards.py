"""Embedding shards: immutable Arrow IPC files of (key, vector), the durable output of encoding."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa

from pipeline.errors import IndexCorruptError
from pipeline.fsutil import atomic_open


def write_shard(path: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
    """Write atomically: the file exists under its final name only when complete."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1))
    table = pa.table(
        {"_key": pa.array(keys, pa.int64()), "vector": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}
    )
    with atomic_open(path) as fh, pa.ipc.new_file(fh, table.schema) as writer:
        writer.write_table(table)


class ShardWriter:
    """Writes shards on a background thread, in order, so the encoder's loop never waits on a disk flush.

    A shard of 16,384 rows of 512 floats is 32 MiB and takes tens of milliseconds to write and fsync: on a GPU
    that is as long as the forward passes of those rows, and the thread that would wait on it is the one that
    feeds the GPU. `submit` returns once the shard is queued (it blocks only when `depth` shards are already
    waiting, which bounds memory); `on_durable(path, rows)` runs on the writer thread after each shard is on
    disk, in submission order (the build journals it there). A write error is raised by the next `submit` or
    by `close`; shards queued behind a failed one are not written. Leaving the `with` block, normally or by an
    exception, writes what is queued first: those rows are encoded, and a resumed run keeps them.
    """

    def __init__(self, on_durable: Callable[[Path, int], None] | None = None, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.on_durable = on_durable
        self._queue: queue.Queue[tuple[Path, np.ndarray, np.ndarray] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def submit(self, path: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Queue one shard for writing; raises the error of an earlier shard, if any."""
        if self._closed:
            raise RuntimeError("the shard writer is closed")
        self._raise_error()
        self._queue.put((Path(path), keys, vectors))

    def close(self) -> None:
        """Write the queued shards, stop the thread, and raise the first write error."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
        self._raise_error()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the exception already leaving the block is the one to report
            self.close()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain without writing: shards must stay in order, and one is missing
            path, keys, vectors = item
            try:
                write_shard(path, keys, vectors)
                if self.on_durable is not None:
                    self.on_durable(path, len(keys))
            except BaseException as exc:  # handed to the submitting thread
                self._error = exc


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys int64 (n,), vectors float32 (n, dim)) of one shard, memory-mapped."""
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise IndexCorruptError(
            f"embedding shard {path} is missing or unreadable ({str(exc).splitlines()[0]})"
        ) from None
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    keys = table.column("_key").to_numpy()
    vectors = column.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return keys, vectors
