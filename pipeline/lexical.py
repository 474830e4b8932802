"""BM25 side of an index: bm25s scores built from a stream of (keys, texts) chunks, saved atomically, mmap-loaded."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import IndexCorruptError, UsageError
from pipeline.fsutil import fsync_dir, fsync_tree, remove_tree

LEXICAL_DIR = "lexical"
META_FILE = "lexical.json"
KEYS_FILE = "keys.npy"
FORMAT = 1
# bm25s' own default splitter: runs of two or more word characters.
TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")
BM25_FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json")


@dataclass(frozen=True)
class LexicalConfig:
    """BM25 parameters (Lucene variant, as bm25s scores it) and text analysis."""

    k1: float = 1.5
    b: float = 0.75
    stopwords: str = "en"  # en | none
    stemmer: str | None = "auto"  # auto: PyStemmer's English stemmer when installed; None: no stemming


@dataclass
class LexicalStats:
    """What a build wrote: counts and timings, for the manifest and the build summary."""

    docs: int = 0
    vocab: int = 0
    tokens: int = 0
    postings: int = 0
    empty_docs: int = 0
    stemmer: str | None = None
    tokenize_s: float = 0.0
    index_s: float = 0.0
    save_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stemmer_available() -> bool:
    try:
        import Stemmer  # noqa: F401
    except ImportError:
        return False
    return True


class _Analyzer:
    """Lowercase, split like bm25s, drop English stopwords, stem; one PyStemmer per thread (it is not thread-safe)."""

    def __init__(self, stopwords: str, stemmer: str | None) -> None:
        if stopwords == "en":
            from bm25s.stopwords import STOPWORDS_EN

            self.stopwords: frozenset[str] = frozenset(STOPWORDS_EN)
        elif stopwords in ("none", ""):
            self.stopwords = frozenset()
        else:
            raise UsageError(f"unknown stopwords {stopwords!r}: use en or none")
        self.stemmer = stemmer
        self._local = threading.local()

    def stem_fn(self) -> Callable[[str], str] | None:
        if self.stemmer is None:
            return None
        fn = getattr(self._local, "stem", None)
        if fn is None:
            try:
                import Stemmer
            except ImportError:
                raise UsageError(
                    "this lexical index was built with the PyStemmer stemmer; install PyStemmer to query it"
                ) from None
            fn = Stemmer.Stemmer(self.stemmer).stemWord
            self._local.stem = fn
        return fn

    def term(self, word: str) -> str | None:
        """The index term of one lowercased word, or None for a stopword."""
        if word in self.stopwords:
            return None
        stem = self.stem_fn()
        return stem(word) if stem else word

    def query_ids(self, text: str, vocab: dict[str, int]) -> list[int]:
        ids = []
        for word in TOKEN_RE.findall(text.lower()):
            term = self.term(word)
            if term is not None and (tid := vocab.get(term)) is not None:
                ids.append(tid)
        return ids


class _WordIds(dict[str, int]):
    """Surface word -> term id (-1 for stopwords); a miss analyses the word once and grows the vocabulary."""

    def __init__(self, analyzer: _Analyzer, vocab: dict[str, int]) -> None:
        super().__init__()
        self.analyzer, self.vocab = analyzer, vocab

    def __missing__(self, word: str) -> int:
        term = self.analyzer.term(word)
        tid = -1 if term is None else self.vocab.setdefault(term, len(self.vocab))
        self[word] = tid
        return tid


class LexicalIndex:
    """A BM25 index whose document positions map to int64 row keys."""

    def __init__(self, retriever: Any, keys: np.ndarray, config: LexicalConfig, stemmer: str | None) -> None:
        self.retriever = retriever
        self.keys = keys
        self.config = config
        self.analyzer = _Analyzer(config.stopwords, stemmer)
        self.vocab: dict[str, int] = retriever.vocab_dict
        self._sorted = bool(len(keys) < 2 or np.all(keys[1:] > keys[:-1]))
        self._order = None if self._sorted else np.argsort(keys, kind="stable")

    @property
    def num_docs(self) -> int:
        return len(self.keys)

    # --- building -------------------------------------------------------------------------------
    @classmethod
    def build(
        cls, chunks: Iterable[tuple[np.ndarray, Sequence[str | None]]], config: LexicalConfig | None = None
    ) -> tuple[LexicalIndex, LexicalStats]:
        """Tokenise chunk by chunk into compact (doc, term, tf) triples, then compute the BM25 matrix at once."""
        import bm25s

        config = config or LexicalConfig()
        stemmer = _resolve_stemmer(config.stemmer)
        analyzer = _Analyzer(config.stopwords, stemmer)
        vocab: dict[str, int] = {}
        word_ids = _WordIds(analyzer, vocab)
        stats = LexicalStats(stemmer=stemmer)
        t0 = time.monotonic()
        key_parts, doc_parts, term_parts, tf_parts, len_parts = [], [], [], [], []
        offset = 0
        for keys, texts in chunks:
            keys = np.asarray(keys, dtype=np.int64)
            if len(keys) != len(texts):
                raise UsageError(f"a lexical chunk has {len(keys)} keys and {len(texts)} texts")
            doc, term, tf, lengths = _tokenize_chunk(texts, word_ids)
            key_parts.append(keys)
            doc_parts.append(doc + offset)
            term_parts.append(term)
            tf_parts.append(tf)
            len_parts.append(lengths)
            offset += len(keys)
        stats.tokenize_s = time.monotonic() - t0
        t0 = time.monotonic()
        all_keys = np.concatenate(key_parts) if key_parts else np.empty(0, np.int64)
        if len(np.unique(all_keys)) != len(all_keys):
            raise UsageError("duplicate keys in the lexical stream")
        doc = np.concatenate(doc_parts) if doc_parts else np.empty(0, np.int32)
        term = np.concatenate(term_parts) if term_parts else np.empty(0, np.int32)
        tf = np.concatenate(tf_parts) if tf_parts else np.empty(0, np.float32)
        lengths = np.concatenate(len_parts) if len_parts else np.empty(0, np.float32)
        del key_parts, doc_parts, term_parts, tf_parts, len_parts
        data, indices, indptr = _bm25_csc(doc, term, tf, lengths, len(vocab), config.k1, config.b)
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method="lucene", backend="numpy")
        retriever.scores = {"data": data, "indices": indices, "indptr": indptr, "num_docs": len(all_keys)}
        retriever.vocab_dict = vocab
        retriever.unique_token_ids_set = set(vocab.values())
        retriever.nonoccurrence_array = None
        stats.index_s = time.monotonic() - t0
        stats.docs, stats.vocab, stats.postings = len(all_keys), len(vocab), len(data)
        stats.tokens = int(lengths.sum())
        stats.empty_docs = int((lengths == 0).sum())
        return cls(retriever, all_keys, config, stemmer), stats

    def save(self, path: Path | str) -> None:
        """Write to a temp sibling, fsync, then rename over `path`: readers see the old or the new, never half."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        remove_tree(tmp)
        try:
            self.retriever.save(str(tmp), show_progress=False)
            np.save(tmp / KEYS_FILE, self.keys)
            meta = {
                "format": FORMAT,
                "docs": self.num_docs,
                "vocab": len(self.vocab),
                "config": asdict(self.config),
                "stemmer": self.analyzer.stemmer,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            fsync_tree(tmp)
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            fsync_dir(path.parent)
            remove_tree(old)
        finally:
            remove_tree(tmp)

    @classmethod
    def load(cls, path: Path | str, mmap: bool = True) -> LexicalIndex:
        """Open a saved index; the score arrays and keys are memory-mapped unless mmap is False."""
        import bm25s

        path = Path(path)
        if not path.is_dir():
            raise IndexCorruptError(f"lexical index {path} is missing; rebuild the index with --overwrite")
        try:
            meta = json.loads((path / META_FILE).read_text())
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
            retriever = bm25s.BM25.load(str(path), mmap=mmap, show_progress=False)
            keys = np.load(path / KEYS_FILE, mmap_mode="r" if mmap else None)
            scores = retriever.scores
            n_docs, n_vocab = int(meta["docs"]), int(meta["vocab"])
            if keys.dtype != np.int64 or keys.shape != (n_docs,) or scores["num_docs"] != n_docs:
                raise ValueError(f"{len(keys)} keys for {n_docs} documents")
            if len(scores["indptr"]) != n_vocab + 1 or len(retriever.vocab_dict) != n_vocab:
                raise ValueError("vocabulary and score matrix disagree")
            if int(scores["indptr"][-1]) != len(scores["data"]) or len(scores["indices"]) != len(scores["data"]):
                raise ValueError("score matrix arrays are truncated")
            config = LexicalConfig(**meta["config"])
            return cls(retriever, keys, config, meta.get("stemmer"))
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise IndexCorruptError(
                f"lexical index {path} is corrupt ({first}); rebuild the index with --overwrite"
            ) from None

    # --- searching ------------------------------------------------------------------------------
    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Document positions of the given keys; keys the index does not hold are left out."""
        keys = np.asarray(keys, dtype=np.int64)
        if self._sorted:
            pos = np.searchsorted(self.keys, keys)
            pos = np.minimum(pos, max(self.num_docs - 1, 0))
            return pos[self.keys[pos] == keys] if self.num_docs else np.empty(0, np.int64)
        assert self._order is not None
        sorted_keys = self.keys[self._order]
        pos = np.minimum(np.searchsorted(sorted_keys, keys), max(self.num_docs - 1, 0))
        found = sorted_keys[pos] == keys if self.num_docs else np.zeros(len(keys), bool)
        return np.asarray(self._order[pos[found]])

    def search(
        self, queries: Sequence[str], k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k BM25 (scores, keys) per query, best first; only positive scores; keys padded with -1.

        With `allowed` (keys from a metadata filter) only those documents are scored.
        """
        n = len(queries)
        out_scores = np.zeros((n, k), np.float32)
        out_keys = np.full((n, k), -1, np.int64)
        if k <= 0 or self.num_docs == 0:
            return out_scores, out_keys
        mask = None
        if allowed is not None:
            mask = np.zeros(self.num_docs, np.float32)
            mask[self.positions(allowed)] = 1.0
        for i, query in enumerate(queries):
            ids = self.analyzer.query_ids(query, self.vocab)
            if not ids:
                continue
            scores = self.retriever.get_scores_from_ids(ids, weight_mask=mask)
            hits = _top_k(scores, k)
            out_scores[i, : len(hits)] = scores[hits]
            out_keys[i, : len(hits)] = self.keys[hits]
        return out_scores, out_keys

    def sole_matches(self, queries: Sequence[str], allowed: np.ndarray | None = None) -> np.ndarray:
        """Per query, the key of the only document (among `allowed`) that holds every indexed query term, or -1.

        -1 when no document or several do, or the query has no indexed term; words no document has are ignored,
        as BM25 ignores them. Each term's postings list documents in ascending order, so the rarest term's
        documents are narrowed by binary search in the others'.
        """
        out = np.full(len(queries), -1, np.int64)
        if self.num_docs == 0:
            return out
        postings = self.retriever.scores
        indices, indptr = postings["indices"], postings["indptr"]
        mask = None
        if allowed is not None:
            mask = np.zeros(self.num_docs, bool)
            mask[self.positions(allowed)] = True
        for i, query in enumerate(queries):
            terms = set(self.analyzer.query_ids(query, self.vocab))
            if not terms:
                continue
            docs = [indices[indptr[t] : indptr[t + 1]] for t in sorted(terms, key=lambda t: indptr[t + 1] - indptr[t])]
            found = np.asarray(docs[0])
            if mask is not None:
                found = found[mask[found]]
            for other in docs[1:]:
                if len(found) == 0:
                    break
                at = np.minimum(np.searchsorted(other, found), len(other) - 1)
                found = found[other[at] == found]
            if len(found) == 1:
                out[i] = self.keys[found[0]]
        return out


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best positive scores, best first, ties broken by position (the smaller first).

    Ties at the cut are settled by position too, so a smaller k's result is always a prefix of a larger k's.
    """
    hits = np.flatnonzero(scores > 0)  # ascending positions
    if len(hits) > k:
        values = scores[hits]
        kth = np.partition(values, len(values) - k)[len(values) - k]  # the k-th best score
        above = values > kth
        tied = np.flatnonzero(values == kth)[: k - int(above.sum())]
        hits = np.sort(np.concatenate([hits[above], hits[tied]]))
    return hits[np.lexsort((hits, -scores[hits]))]


def _resolve_stemmer(stemmer: str | None) -> str | None:
    if stemmer is None or stemmer == "none":
        return None
    if stemmer == "auto":
        return "english" if stemmer_available() else None
    if not stemmer_available():
        raise UsageError(f"stemmer {stemmer!r} needs PyStemmer, which is not installed")
    return stemmer


def _tokenize_chunk(
    texts: Sequence[str | None], word_ids: _WordIds
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Local doc, term and tf of each distinct (doc, term) pair, and each doc's token count."""
    flat: list[int] = []
    raw_lengths = np.empty(len(texts), np.int64)
    findall = TOKEN_RE.findall
    for i, text in enumerate(texts):
        words = findall(text.lower()) if text else []
        flat.extend([word_ids[w] for w in words])
        raw_lengths[i] = len(words)
    ids = np.asarray(flat, dtype=np.int64)
    doc = np.repeat(np.arange(len(texts), dtype=np.int64), raw_lengths)
    kept = ids >= 0
    ids, doc = ids[kept], doc[kept]
    lengths = np.bincount(doc, minlength=len(texts)).astype(np.float32)
    pairs, tf = np.unique((doc << 32) | ids, return_counts=True)
    return (
        (pairs >> 32).astype(np.int32),
        (pairs & 0xFFFFFFFF).astype(np.int32),
        tf.astype(np.float32),
        lengths,
    )


def _bm25_csc(
    doc: np.ndarray, term: np.ndarray, tf: np.ndarray, lengths: np.ndarray, n_vocab: int, k1: float, b: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The term-major (CSC) matrix of Lucene BM25 weights, as bm25s computes them in `index()`."""
    n_docs = len(lengths)
    df = np.bincount(term, minlength=n_vocab).astype(np.float64)
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
    avg = float(lengths.mean()) if n_docs and lengths.sum() > 0 else 1.0
    norm = (k1 * ((1.0 - b) + b * lengths / avg)).astype(np.float32)
    data = idf[term] * (tf / (norm[doc] + tf))
    # pairs arrive in doc order, so a stable sort by term keeps docs ascending within each column
    order = np.argsort(term, kind="stable")
    indptr = np.zeros(n_vocab + 1, np.int64)
    np.cumsum(np.bincount(term, minlength=n_vocab), out=indptr[1:])
    return data[order].astype(np.float32), doc[order].astype(np.int32), indptr


def build_lexical(
    chunks: Iterable[tuple[np.ndarray, Sequence[str | None]]], path: Path | str, config: LexicalConfig | None = None
) -> LexicalStats:
    """Build the BM25 index of every (keys, texts) chunk and save it atomically at `path`."""
    index, stats = LexicalIndex.build(chunks, config)
    t0 = time.monotonic()
    index.save(path)
    stats.save_s = time.monotonic() - t0
    return stats


def term_function(config: LexicalConfig | None = None) -> Callable[[str], str | None]:
    """The index term of one lowercased word under `config` (None for a stopword), as a build analyses it."""
    config = config or LexicalConfig()
    return _Analyzer(config.stopwords, _resolve_stemmer(config.stemmer)).term


def open_lexical(path: Path | str) -> LexicalIndex:
    return LexicalIndex.load(path, mmap=True)


def docs_chunks(
    con: Any, text_column: str, rows: int = 16_384, table: str = "docs"
) -> Iterator[tuple[np.ndarray, list[str | None]]]:
    """(keys, texts) chunks of a DuckDB docs table in key order, for `build_lexical`."""
    from pipeline.corpus import KEY
    from pipeline.store import arrow_reader, quote

    reader = arrow_reader(con.sql(f"SELECT {KEY}, {quote(text_column)} FROM {quote(table)} ORDER BY {KEY}"), rows)
    for batch in reader:
        if batch.num_rows:
            yield np.asarray(batch.column(0).to_numpy(), dtype=np.int64), batch.column(1).to_pylist()
