"""Tokenisation to compact numpy arrays, in a pool of worker processes or one background thread."""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import ModelError

_WORKER_TOKENIZER: Any = None
_WORKER_CUT: int | None = None
# Below this many texts a chunk is not split across workers: pickling overhead would dominate.
_MIN_SPLIT = 256
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# How often a worker checks that its parent is alive (the fallback where prctl is not available).
_PARENT_POLL_S = 0.5


@dataclass(frozen=True)
class TokenBatch:
    """Token ids of many texts: one flat int32 array plus each row's length (no padding)."""

    ids: np.ndarray  # int32, all rows concatenated
    lengths: np.ndarray  # int32, tokens per row

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.lengths, dtype=np.int64)))

    def padded(
        self, rows: np.ndarray, offsets: np.ndarray | None = None, multiple: int = 1, cap: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) int64 for the given rows, right-padded with 0 to their longest.

        The width is rounded up to a multiple of `multiple` (never past `cap`): fewer distinct shapes for
        compiled models and tensor-core friendly sizes on GPUs.
        """
        offsets = self.offsets if offsets is None else offsets
        lengths = self.lengths[rows].astype(np.int64)
        longest = max(int(lengths.max()), 1) if len(rows) else 1
        width = -(-longest // multiple) * multiple
        if cap is not None:
            width = max(min(width, cap), longest)
        cols = np.arange(width)
        mask = cols[None, :] < lengths[:, None]
        if self.ids.size == 0:
            return np.zeros(mask.shape, dtype=np.int64), mask.astype(np.int64)
        # One gather for the whole batch: a Python loop over rows costs more than the forward pass feeds.
        positions = np.where(mask, offsets[rows][:, None] + cols[None, :], 0)
        ids = self.ids[positions].astype(np.int64)
        ids[~mask] = 0
        return ids, mask.astype(np.int64)

    def take(self, rows: np.ndarray, offsets: np.ndarray | None = None) -> TokenBatch:
        """The given rows, in that order, as a TokenBatch of their own."""
        offsets = self.offsets if offsets is None else offsets
        lengths = self.lengths[rows]
        wide = lengths.astype(np.int64)
        # Each output position minus its row's start in the output, plus the row's start in the input.
        shift = np.repeat(offsets[rows] - (np.cumsum(wide) - wide), wide)
        return TokenBatch(self.ids[shift + np.arange(int(wide.sum()))], lengths)

    @staticmethod
    def concat(parts: Sequence[TokenBatch]) -> TokenBatch:
        if len(parts) == 1:
            return parts[0]
        return TokenBatch(np.concatenate([p.ids for p in parts]), np.concatenate([p.lengths for p in parts]))


def fast_tokenizer_json(tokenizer: Any) -> str | None:
    """The Rust tokenizer's serialised form, or None for a slow (pure Python) tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return None if backend is None else str(backend.to_str())


# Pre-tokenisers that never join characters across a space: a text cut at a space tokenises to a prefix
# of the whole text's tokens.
_SPACE_SPLITTING = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
# Cut texts at about this many characters per allowed token before tokenising (see encode_texts).
CUT_CHARS_PER_TOKEN = 6


def make_tokenizer(spec: str, max_length: int) -> Any:
    """A `tokenizers.Tokenizer` that truncates to max_length (special tokens included) and never pads."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(spec)
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def cut_length(tok: Any) -> int | None:
    """Characters a text may be cut to before `tok` tokenises it without changing its truncated ids, if safe."""
    if type(tok.pre_tokenizer).__name__ not in _SPACE_SPLITTING or not tok.truncation:
        return None
    return int(tok.truncation["max_length"]) * CUT_CHARS_PER_TOKEN


def encode_texts(tok: Any, texts: Sequence[str], cut: int | None = None) -> TokenBatch:
    """Tokenise with a `tokenizers.Tokenizer` into a TokenBatch.

    With `cut`, a long text is first cut at its last space before `cut` characters: the tokenizer then
    skips the tail that truncation would drop anyway (and its overflow encodings). A cut text that
    comes out shorter than the truncation length is tokenised again whole, so the ids never change.
    """
    originals = texts
    texts = list(texts)
    cut_rows: list[int] = []
    if cut:
        for i, text in enumerate(texts):
            if len(text) > cut:
                space = text.rfind(" ", 0, cut)
                if space > 0:
                    texts[i] = text[:space]
                    cut_rows.append(i)
    rows = [e.ids for e in tok.encode_batch(texts)]
    if cut_rows:
        short = [i for i in cut_rows if len(rows[i]) < tok.truncation["max_length"]]
        for i, e in zip(short, tok.encode_batch([originals[i] for i in short]), strict=True):
            rows[i] = e.ids
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int32, count=len(rows))
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
    return TokenBatch(ids, lengths)


def _init_worker(spec: str, max_length: int, parent: int) -> None:
    global _WORKER_TOKENIZER, _WORKER_CUT
    _die_with_parent(parent)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_TOKENIZER = make_tokenizer(spec, max_length)
    _WORKER_CUT = cut_length(_WORKER_TOKENIZER)


def _die_with_parent(parent: int, poll_s: float = _PARENT_POLL_S) -> None:
    """Make this process exit once process `parent` is gone, even if it died by SIGKILL.

    A worker left behind would wait on its task queue forever. On Linux the kernel signals the worker
    at once (prctl PR_SET_PDEATHSIG); everywhere, a daemon thread notices the new parent pid within poll_s.
    """
    if sys.platform.startswith("linux"):
        _signal_on_parent_death(parent)
    threading.Thread(target=_watch_parent, args=(parent, poll_s), name="bmsearch-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # it died before the watch began
        os._exit(1)


def _signal_on_parent_death(parent: int) -> None:
    """Have Linux signal this process when its parent dies.

    Not with SIGTERM: the kernel sends the signal as well when the parent *thread* that spawned the worker
    exits, and ProcessPoolExecutor spawns from whichever thread submits. SIGUSR1's handler tells the two
    apart by the parent pid, which changes only when the process died; SIGTERM stays the executor's way
    to stop a worker.
    """

    def on_signal(signum: int, frame: object) -> None:
        if os.getppid() != parent:
            os._exit(1)

    try:
        signal.signal(signal.SIGUSR1, on_signal)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGUSR1), 0, 0, 0)
    except (OSError, AttributeError, ValueError):
        pass  # the watching thread still notices


def _watch_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(1)


def _encode_in_worker(texts: Sequence[str]) -> TokenBatch:
    return encode_texts(_WORKER_TOKENIZER, texts, _WORKER_CUT)


class PendingTokens:
    """Tokenisation under way, possibly split over several workers; result() joins the parts in order."""

    def __init__(self, futures: list[Future[TokenBatch]]) -> None:
        self._futures = futures

    def result(self) -> TokenBatch:
        return TokenBatch.concat(list(self.pieces()))

    def pieces(self) -> Iterator[TokenBatch]:
        """The parts in order, each as soon as it and those before it are done."""
        for future in self._futures:
            yield future.result()


class TokenizerPool:
    """Tokenises off the calling thread: `workers` processes, or one thread when workers is 0.

    The Rust tokenizer releases the GIL, so the thread overlaps with a forward pass too; processes are
    for machines whose spare cores outnumber what one tokenizer thread can use.
    """

    def __init__(self, tokenizer: Any, max_length: int, workers: int = 0) -> None:
        spec = fast_tokenizer_json(tokenizer)
        self.max_length = max_length
        self.workers = workers if spec is not None else 0
        self._hf = tokenizer
        self._local: Any = make_tokenizer(spec, max_length) if spec is not None else None
        self._cut = cut_length(self._local) if self._local is not None else None
        self._executor: Executor
        if self.workers > 0:
            assert spec is not None
            # spawn, not fork: the parent may hold torch/ORT thread pools that do not survive a fork.
            self._executor = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(spec, max_length, os.getpid()),
            )
        else:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="bmsearch-tokenize")

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise in the calling thread."""
        if self._local is not None:
            return encode_texts(self._local, texts, self._cut)
        return self._slow_tokenize(texts)

    def submit(self, texts: Sequence[str], piece_rows: int | None = None) -> PendingTokens:
        """Start tokenising texts in the background: split over the workers, and in pieces of at most
        piece_rows texts if given (a consumer can then start on the first piece early)."""
        texts = list(texts)
        pieces = max(1, min(self.workers, len(texts) // _MIN_SPLIT))
        if piece_rows:
            pieces = max(pieces, -(-len(texts) // piece_rows))
        step = -(-len(texts) // pieces) if texts else 1
        work = self.tokenize if self.workers == 0 else _encode_in_worker
        futures = [self._executor.submit(work, texts[i : i + step]) for i in range(0, len(texts), step)]
        if not futures:
            futures = [self._executor.submit(work, [])]
        return PendingTokens(futures)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _slow_tokenize(self, texts: Sequence[str]) -> TokenBatch:
        try:
            out = self._hf(
                list(texts),
                truncation=True,
                max_length=self.max_length,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        except Exception as exc:
            raise ModelError(f"tokenizer failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        rows = list(out["input_ids"])
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int32, count=len(rows))
        ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
        return TokenBatch(ids, lengths)
