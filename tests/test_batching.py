"""Token-budget batching: width buckets streamed across chunks, and chunk results handed back in order."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.batching import (
    BUCKET_WIDTH,
    BucketStream,
    ChunkResults,
    Launch,
    padded_tokens,
    plan_batches,
)
from pipeline.tokenize_pool import TokenBatch


def _chunk(lengths: list[int] | np.ndarray, first_id: int = 0) -> TokenBatch:
    """A TokenBatch whose row i holds ids first_id + i, repeated: every row is recognisable."""
    lengths = np.asarray(lengths, dtype=np.int32)
    ids = np.repeat(np.arange(first_id, first_id + len(lengths), dtype=np.int32), lengths)
    return TokenBatch(ids, lengths)


def _run(stream: BucketStream, chunks: list[TokenBatch], group_tokens: int) -> list[Launch]:
    launches = []
    for i, chunk in enumerate(chunks):
        stream.add(chunk, i)
        if stream.ready_tokens >= group_tokens or stream.aged():
            launch = stream.take()
            if launch is not None:
                launches.append(launch)
    last = stream.take(flush=True)
    return launches + ([last] if last is not None else [])


@pytest.mark.parametrize("seed", range(6))
def test_every_row_goes_out_once_in_one_width_per_batch(seed: int) -> None:
    rng = np.random.default_rng(seed)
    budget = int(rng.integers(64, 4096))
    max_rows = [None, 9][seed % 2]
    chunks, first = [], 0
    for _ in range(int(rng.integers(1, 12))):
        lengths = np.clip(rng.lognormal(3, 0.8, size=int(rng.integers(0, 300))), 1, 300).astype(int)
        chunks.append(_chunk(lengths, first))
        first += len(lengths)
    stream = BucketStream(budget, max_rows)
    launches = _run(stream, chunks, group_tokens=4 * budget)
    seen = []
    for launch in launches:
        assert sum(len(rows) for _, rows in launch.parts) == len(launch.tokens)
        flat = np.concatenate(launch.batches)
        assert flat.tolist() == list(range(len(launch.tokens)))
        offsets = launch.tokens.offsets
        start = 0
        for seq, rows in launch.parts:
            for k, row in enumerate(rows):
                # The gathered row holds the ids of (chunk seq, row): the same token, its length times.
                got = launch.tokens.ids[offsets[start + k] : offsets[start + k + 1]]
                want = chunks[seq].ids[chunks[seq].offsets[row] : chunks[seq].offsets[row + 1]]
                assert got.tolist() == want.tolist()
                seen.append((seq, int(row)))
            start += len(rows)
        for batch in launch.batches:
            widths = -(-launch.tokens.lengths[batch] // BUCKET_WIDTH) * BUCKET_WIDTH
            assert widths.min() == widths.max()  # one bucket: each row padded by less than BUCKET_WIDTH
            assert len(batch) * int(widths[0]) <= budget or len(batch) == 1
            assert max_rows is None or len(batch) <= max_rows
    assert sorted(seen) == sorted((s, r) for s, c in enumerate(chunks) for r in range(len(c)))
    assert len(stream) == 0


def test_a_rare_width_waits_only_max_age_rows() -> None:
    stream = BucketStream(token_budget=128, max_age_rows=9)  # a full batch: 3 rows of width 40, 16 of width 8
    stream.add(_chunk([40, 3, 3, 3]), 0)  # the 40-token row is alone in its bucket for good
    for i in range(2):
        stream.add(_chunk([3, 3]), 1 + i)
        assert not stream.aged()
    stream.add(_chunk([3]), 3)  # 9 rows queued after the 40-token one
    assert stream.aged()
    launch = stream.take()
    assert launch is not None and (0, 0) in [(s, int(r)) for s, rows in launch.parts for r in rows]
    assert not stream.aged()


def test_fill_takes_the_fullest_partial_buckets() -> None:
    stream = BucketStream(token_budget=300)
    stream.add(_chunk([3] * 8 + [20] * 4 + [50] * 3), 0)  # partial buckets: 64, 96 and 168 padded tokens
    assert stream.ready_tokens == 0 and stream.take() is None
    launch = stream.take(fill=200)
    assert launch is not None
    assert sorted(launch.tokens.lengths.tolist()) == [20] * 4 + [50] * 3  # 168 + 96 tokens reach 200
    assert len(stream) == 8
    assert stream.take(fill=200) is None  # 64 tokens: under a quarter of a batch, not worth a forward pass


def test_streamed_buckets_pad_less_than_sorting_each_launch() -> None:
    # Short sentences with a long tail, a GPU-sized budget: sorting each launch of ~20k rows on its own puts
    # the longest rows and much shorter ones in the same first batch.
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(3.1, 0.5, size=100_000), 4, 128).astype(np.int32)
    budget, chunk = 131_072, 8192
    chunks = [_chunk(lengths[i : i + chunk]) for i in range(0, len(lengths), chunk)]
    streamed = 0
    for launch in _run(BucketStream(budget), chunks, group_tokens=4 * budget):
        streamed += padded_tokens(launch.tokens.lengths, launch.batches, BUCKET_WIDTH)
    group = 3 * chunk  # the launches the per-launch sort made: whole chunks up to four budgets
    sorted_each = sum(
        padded_tokens(lengths[i : i + group], plan_batches(lengths[i : i + group], budget, None), BUCKET_WIDTH)
        for i in range(0, len(lengths), group)
    )
    real = int(lengths.sum())
    assert streamed <= real + (BUCKET_WIDTH - 1) * len(lengths)
    assert streamed < 0.9 * sorted_each


def test_chunk_results_come_back_in_order_when_filled_out_of_order() -> None:
    results = ChunkResults(dim=2)
    assert [results.open(2), results.open(0), results.open(1)] == [0, 1, 2]
    results.fill([(2, np.array([0])), (0, np.array([1]))], np.array([[2, 2], [0, 1]], np.float32))
    assert list(results.completed()) == []  # chunk 0 still misses a row
    results.fill([(0, np.array([0]))], np.array([[0, 0]], np.float32))
    done = list(results.completed())
    assert [d.tolist() for d in done] == [[[0, 0], [0, 1]], [], [[2, 2]]]


def test_pieces_of_a_chunk_come_out_in_chunk_rows() -> None:
    chunk = _chunk([5, 9, 3, 12, 7])
    stream = BucketStream(token_budget=10_000)
    stream.add(chunk.take(np.arange(2)), 0)  # a chunk tokenised in two pieces: rows 0-1, then 2-4
    stream.add(chunk.take(np.arange(2, 5)), 0, offset=2)
    launch = stream.take(flush=True)
    assert launch is not None
    rows = np.concatenate([r for c, r in launch.parts])
    assert all(c == 0 for c, _ in launch.parts) and sorted(rows.tolist()) == [0, 1, 2, 3, 4]
    assert launch.tokens.lengths.tolist() == chunk.lengths[rows].tolist()
    assert launch.tokens.ids.tolist() == chunk.take(rows).ids.tolist()


def test_padded_tokens_rounds_each_batch_to_its_longest() -> None:
    lengths = np.array([5, 9, 1, 16])
    assert padded_tokens(lengths, [np.array([0, 1]), np.array([2]), np.array([], int)]) == 2 * 9 + 1
    assert padded_tokens(lengths, [np.array([0, 1, 3])], multiple=8) == 3 * 16
