"""Embedding shards: immutable Arrow IPC files of (key, vector), the durable output of encoding."""

from __future__ import annotations

from pathlib import Path

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
