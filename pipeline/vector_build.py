"""The vector-index step of a build: a full build from the shards, or an in-place update of the last one."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import ann
from pipeline.errors import IndexBuildError, IndexCorruptError
from pipeline.progress import Progress
from pipeline.shards import read_shard

log = logging.getLogger(__name__)
VECTORS_FILE = "vectors.faiss"


@dataclass(frozen=True)
class ShardGroup:
    """The rows of one shard that belong to a generation: positions in the shard and their keys."""

    shard: str
    positions: np.ndarray
    keys: np.ndarray


def shard_groups(rows: Sequence[tuple[str, Sequence[int], Sequence[int]]]) -> list[ShardGroup]:
    return [ShardGroup(s, np.asarray(p, dtype=np.int64), np.asarray(k, dtype=np.int64)) for s, p, k in rows]


def shard_source(shard_dir: Path, groups: Sequence[ShardGroup]) -> ann.VectorSource:
    """A re-iterable source of (keys, vectors) chunks, one shard in memory at a time."""

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for group in groups:
            _, vectors = read_shard(shard_dir / group.shard)
            yield group.keys, np.ascontiguousarray(vectors[group.positions])

    return chunks


def check_index_options(n: int, dim: int, index_type: str | None, memory_budget: str | None) -> str:
    """The factory string a build will use; raises IndexBuildError before any encoding when none fits."""
    if index_type is None:
        return ann.choose_index(n, dim, memory_budget).factory
    needed = ann.estimate_index_bytes(index_type, n, dim)
    if memory_budget is not None and needed > ann.parse_memory(memory_budget):
        raise IndexBuildError(
            f"index type {index_type!r} needs ~{needed / 2**20:.1f} MiB for {n} vectors, over the memory budget "
            f"{memory_budget}"
        )
    return index_type


def build_vectors(
    out: Path,
    shard_dir: Path,
    groups: Sequence[ShardGroup],
    dim: int,
    *,
    index_type: str | None,
    memory_budget: str | None,
    target_recall: float,
    previous: dict[str, Any] | None,
    remove: np.ndarray,
    new_groups: Sequence[ShardGroup],
    progress: Progress,
) -> dict[str, Any]:
    """Write the generation's FAISS index to `out`; returns what the manifest records about it.

    With `previous` (the last generation's path and index record), the trained index is reused when it
    is still the right choice and either can remove ids or has none to remove (HNSW takes additions only):
    `remove` keys are dropped and `new_groups` added, keeping the recall-tuned search parameters.
    Otherwise the index is built and tuned from all shards.
    """
    n = int(sum(len(g.keys) for g in groups))
    wanted = index_type or ann.choose_index(n, dim, memory_budget).factory
    if previous is not None and _reusable(previous["index"], wanted, remove):
        record = _update_in_place(out, shard_dir, previous, remove, new_groups, n)
        if record is not None:
            return record
    index, stats = ann.build_index(
        shard_source(shard_dir, groups),
        dim,
        n,
        index_type=index_type,
        memory_budget=memory_budget,
        recall_target=target_recall,
        progress=progress,
    )
    size = ann.save_index(index, out)
    stats.index_bytes = size
    record = stats.to_dict()
    record.update(type=stats.factory, ntotal=int(index.ntotal), dimension=dim, updated_in_place=False)
    return record


def _update_in_place(
    out: Path,
    shard_dir: Path,
    previous: dict[str, Any],
    remove: np.ndarray,
    new_groups: Sequence[ShardGroup],
    n: int,
) -> dict[str, Any] | None:
    """The previous index with `remove` dropped and `new_groups` added, saved to `out`; None when it must be
    rebuilt instead (it cannot remove ids, it is unreadable, or its count disagrees with the rows)."""
    record = dict(previous["index"])
    try:
        index = ann.load_index(previous["path"], params=record.get("search_params"))
    except IndexCorruptError as exc:
        # the stored embeddings are intact: a scheduled run rebuilds rather than fail on every retry
        log.warning("previous vector index unreadable (%s); rebuilding it from the embeddings", exc)
        return None
    if not ann.update_index(index, remove, shard_source(shard_dir, new_groups)()):
        log.info("index %s cannot remove ids; rebuilding it", record.get("factory"))
        return None
    if index.ntotal != n:
        # the update and the rows disagree: a generation committed so would be refused at load time
        log.warning("index updated in place holds %d vectors for %d rows; rebuilding it", index.ntotal, n)
        return None
    size = ann.save_index(index, out)
    record.update(
        ntotal=int(index.ntotal),
        n_vectors=int(index.ntotal),
        index_bytes=size,
        updated_in_place=True,
        removed=len(remove),
        added=int(sum(len(g.keys) for g in new_groups)),
    )
    return record


def _reusable(record: dict[str, Any], wanted: str, remove: np.ndarray) -> bool:
    """Whether the last generation's index can be updated in place instead of rebuilt."""
    return record.get("factory") == wanted and (bool(record.get("supports_remove")) or not len(remove))
