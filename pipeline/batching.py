"""Token-budget batches: length-sorted within one chunk, or width buckets streamed across chunks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pipeline.tokenize_pool import TokenBatch

# Rows are bucketed by length rounded up to this: a bucket's batch pads each row by at most 7 tokens.
BUCKET_WIDTH = 8
# A partial bucket holding a row queued this many rows before the newest is launched even when not full,
# so a rare long length cannot hold its chunks (and their results) in memory for the whole corpus.
MAX_AGE_ROWS = 32_768
# A partial bucket goes out early to keep a device busy only if it fills this much of a batch: a forward
# pass has a fixed cost (kernel launches) that a small batch does not amortise.
MIN_FILL_FRACTION = 0.25


def plan_batches(lengths: np.ndarray, token_budget: int, max_rows: int | None) -> list[np.ndarray]:
    """Group row positions, longest first, into batches whose padded size fits the token budget."""
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        rows = max(token_budget // longest, 1)
        if max_rows:
            rows = min(rows, max_rows)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray], multiple: int = 1) -> int:
    """Tokens the forward passes of `batches` compute: rows x longest row, rounded up to `multiple`."""
    total = 0
    for rows in batches:
        if len(rows):
            longest = max(int(lengths[rows].max()), 1)
            total += len(rows) * (-(-longest // multiple) * multiple)
    return total


# (a number, row positions): inside the stream the number is a piece's; in a Launch, a chunk's
Part = tuple[int, np.ndarray]


@dataclass
class Launch:
    """Rows from one or more chunks, gathered into one TokenBatch, and the forward passes over them."""

    tokens: TokenBatch
    batches: list[np.ndarray]  # positions in `tokens`, one array per forward pass
    parts: list[Part]  # (chunk, rows of that chunk) that `tokens`' rows come from, in their order


@dataclass
class _Piece:
    """A tokenised piece of a chunk, kept until every row of it has been taken."""

    tokens: TokenBatch
    offsets: np.ndarray  # tokens.offsets, computed once
    chunk: int
    offset: int  # the piece's first row in its chunk
    queued_at: int  # rows queued before it
    left: int  # rows not yet taken


@dataclass
class _Bucket:
    parts: list[Part] = field(default_factory=list)
    rows: int = 0

    @property
    def oldest(self) -> int:
        return self.parts[0][0]

    def pop(self, count: int) -> list[Part]:
        """The first `count` rows, oldest first."""
        taken: list[Part] = []
        while count:
            seq, rows = self.parts[0]
            if len(rows) <= count:
                taken.append(self.parts.pop(0))
                count -= len(rows)
            else:
                taken.append((seq, rows[:count]))
                self.parts[0] = (seq, rows[count:])
                count = 0
        self.rows -= sum(len(r) for _, r in taken)
        return taken


class BucketStream:
    """Batches rows of a stream of tokenised pieces by padded width, across piece and chunk boundaries.

    Length-sorting each launch on its own pads badly when a batch holds thousands of rows: with a GPU's
    token budget, the first batch of every launch spans the longest rows down to much shorter ones.
    Here each row joins the bucket of its width (length rounded up to BUCKET_WIDTH); a bucket that holds a
    full batch (token_budget // width rows) is ready at once, and a partial bucket is launched as one
    batch when it holds a row queued MAX_AGE_ROWS rows before the newest, or at the end, or to fill a
    launch when the device would otherwise wait (`take(fill=...)`).
    """

    def __init__(self, token_budget: int, max_rows: int | None = None, max_age_rows: int = MAX_AGE_ROWS) -> None:
        self.token_budget = token_budget
        self.max_rows = max_rows
        self.max_age_rows = max_age_rows
        self.ready_tokens = 0  # padded tokens of the full batches waiting for take()
        self._ready: list[list[Part]] = []
        self._buckets: dict[int, _Bucket] = {}
        self._pieces: dict[int, _Piece] = {}
        self._queued = 0
        self._next = 0

    def add(self, tokens: TokenBatch, chunk: int, offset: int = 0) -> None:
        """Queue a piece's rows: rows offset, offset + 1, ... of chunk `chunk`."""
        if not len(tokens):
            return
        seq = self._next
        self._next += 1
        self._pieces[seq] = _Piece(tokens, tokens.offsets, chunk, offset, self._queued, len(tokens))
        self._queued += len(tokens)
        widths = -(-np.maximum(tokens.lengths, 1) // BUCKET_WIDTH) * BUCKET_WIDTH
        order = np.argsort(-widths, kind="stable")
        bounds = np.flatnonzero(np.diff(widths[order])) + 1
        for rows in np.split(order, bounds):
            width = int(widths[rows[0]])
            bucket = self._buckets.setdefault(width, _Bucket())
            bucket.parts.append((seq, np.sort(rows)))
            bucket.rows += len(rows)
            full = self._capacity(width)
            while bucket.rows >= full:
                self._ready.append(bucket.pop(full))
                self.ready_tokens += full * width

    def aged(self) -> bool:
        """Whether a partial bucket holds a row old enough to be launched now."""
        return any(self._aged(b) for b in self._buckets.values())

    def take(self, flush: bool = False, fill: int = 0) -> Launch | None:
        """One launch: the full batches and the partial buckets that have aged (every bucket with flush);
        then, while it holds fewer than `fill` padded tokens, the fullest partial buckets that hold at least
        MIN_FILL_FRACTION of a batch."""
        batches = self._ready
        tokens = self.ready_tokens
        self._ready, self.ready_tokens = [], 0
        for width in sorted(self._buckets, reverse=True):
            bucket = self._buckets[width]
            if bucket.parts and (flush or self._aged(bucket)):
                tokens += bucket.rows * width
                batches.append(bucket.pop(bucket.rows))
        by_size = sorted(((b.rows * w, w) for w, b in self._buckets.items() if b.rows), reverse=True)
        for size, width in by_size:
            if tokens >= fill or size < self.token_budget * MIN_FILL_FRACTION:
                break
            tokens += size
            batches.append(self._buckets[width].pop(self._buckets[width].rows))
        if not batches:
            return None
        return self._gather(batches)

    def __len__(self) -> int:
        """Rows queued and not yet taken."""
        return sum(p.left for p in self._pieces.values())

    def _aged(self, bucket: _Bucket) -> bool:
        return bool(bucket.parts) and self._pieces[bucket.oldest].queued_at <= self._queued - self.max_age_rows

    def _capacity(self, width: int) -> int:
        rows = max(self.token_budget // width, 1)
        return min(rows, self.max_rows) if self.max_rows else rows

    def _gather(self, batches: list[list[Part]]) -> Launch:
        taken: list[TokenBatch] = []
        parts: list[Part] = []
        positions: list[np.ndarray] = []
        start = 0
        for batch in batches:
            size = 0
            for seq, rows in batch:
                piece = self._pieces[seq]
                taken.append(piece.tokens.take(rows, piece.offsets))
                parts.append((piece.chunk, piece.offset + rows))
                size += len(rows)
                piece.left -= len(rows)
                if not piece.left:
                    del self._pieces[seq]
            positions.append(np.arange(start, start + size))
            start += size
        return Launch(TokenBatch.concat(taken), positions, parts)


class ChunkResults:
    """Each chunk's embeddings as launches fill them in; hands chunks back complete and in order."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._out: dict[int, np.ndarray] = {}
        self._left: dict[int, int] = {}
        self._chunks = 0
        self._next = 0

    def open(self, rows: int) -> int:
        """A new chunk of `rows` rows; returns its number (0, 1, ...)."""
        chunk = self._chunks
        self._chunks += 1
        self._out[chunk] = np.empty((rows, self.dim), dtype=np.float32)
        self._left[chunk] = rows
        return chunk

    def fill(self, parts: list[Part], vectors: np.ndarray) -> None:
        """Put `vectors` (one per row of `parts`, (chunk, rows) in order) in their chunks."""
        start = 0
        for chunk, rows in parts:
            self._out[chunk][rows] = vectors[start : start + len(rows)]
            self._left[chunk] -= len(rows)
            start += len(rows)

    def completed(self) -> Iterator[np.ndarray]:
        while self._left.get(self._next) == 0:
            del self._left[self._next]
            yield self._out.pop(self._next)
            self._next += 1
