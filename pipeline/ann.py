"""Vector indexes: automatic FAISS index choice, chunked build, recall-tuned filtered search, atomic IO."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import IndexBuildError, IndexCorruptError, UsageError
from pipeline.fsutil import atomic_open
from pipeline.progress import NoProgress, Progress

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)


def _faiss() -> Any:
    """FAISS, imported on first use so the CLI starts fast (typed Any: its stubs lag its API)."""
    import faiss

    return faiss


# A function returning a fresh iterator of (ids int64 (b,), vectors float32 (b, d)) chunks; the build
# calls it twice (a sample pass for training and evaluation queries, then a full pass to add).
VectorSource = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]

DEFAULT_MEMORY_BUDGET = 4 * 1024**3
DEFAULT_RECALL_TARGET = 0.95
FLAT_MAX_VECTORS = 50_000  # exact search stays well under a few ms per query up to here
# Below this, HNSW32 when it fits the budget: at the same tuned recall its p50 on 200k IMDB sentence vectors
# was 0.79 ms against 3.25 for IVF-Flat (docs/benchmarks.md). Above, its build (and rebuild when ids are
# removed) takes minutes.
HNSW_MAX_VECTORS = 1_000_000
HNSW_M = 32
PQ_MIN_VECTORS = 10_000  # PQ codebooks need ~39 x 256 training points
MAX_TRAIN_VECTORS = 200_000
IDMAP_BYTES_PER_VECTOR = 48  # IndexIDMap2: id_map entry + unordered_map node of the reverse map
IVF_ID_BYTES = 8
EXACT_FILTER_FRACTION = 0.02  # HNSW: filters this selective go straight to exact scoring

_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class IndexChoice:
    """An index factory string with the estimated resident size that made it the choice."""

    factory: str
    estimated_bytes: int
    reason: str


@dataclass
class SearchParams:
    """Query-time parameters of an index; stored in the manifest and re-applied on load."""

    nprobe: int | None = None
    efSearch: int | None = None  # FAISS's own name

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SearchParams:
        data = data or {}
        return cls(nprobe=data.get("nprobe"), efSearch=data.get("efSearch"))


@dataclass
class BuildStats:
    """What a build measured; `to_dict()` goes into the manifest."""

    factory: str
    auto: bool
    reason: str
    n_vectors: int
    dim: int
    metric: str = "inner_product"
    estimated_bytes: int = 0
    train_vectors: int = 0
    train_seconds: float = 0.0
    add_seconds: float = 0.0
    tune_seconds: float = 0.0
    build_seconds: float = 0.0
    k: int = 10
    eval_queries: int = 0
    recall_target: float = DEFAULT_RECALL_TARGET
    recall: float | None = None
    target_met: bool | None = None
    search_params: dict[str, int] = field(default_factory=dict)
    tuning: list[tuple[int, float]] = field(default_factory=list)
    supports_remove: bool = True
    index_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- choice and estimates


def parse_memory(value: int | str | None) -> int:
    """Bytes from an int or a string like '4G', '512MB', '1.5GiB'; None gives the default budget."""
    if value is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(value, int):
        return value
    match = _MEMORY_RE.match(value)
    if not match:
        raise IndexBuildError(f"memory budget {value!r} is not a size like 4G or 512M")
    unit = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[match.group(2).lower()]
    return int(float(match.group(1)) * unit)


def default_nlist(n: int) -> int:
    """Inverted lists for n vectors: a power of two near 2*sqrt(n), at least ~39 training points per list."""
    nlist = 2 ** round(math.log2(max(2 * math.sqrt(max(n, 1)), 1)))
    return int(max(1, min(nlist, 65_536, n // 39)))


def _pq_sizes(d: int) -> list[int]:
    return [m for m in (128, 96, 64, 48, 32, 24, 16, 8) if 4 * m <= max(d, 32)]


def _opq_factory(m: int, d: int, nlist: int) -> str:
    dout = min(d - d % m, 4 * m)
    return f"OPQ{m}_{dout},IVF{nlist},PQ{m}"


def candidate_factories(n: int, d: int) -> list[str]:
    """Index factory strings for n vectors of dim d, best (most accurate, then fastest) first."""
    out: list[str] = []
    if n <= FLAT_MAX_VECTORS:
        out += ["Flat", "SQ8"]
    else:
        nlist = default_nlist(n)
        if n < HNSW_MAX_VECTORS:
            out.append(f"HNSW{HNSW_M}")
        out += [f"IVF{nlist},Flat", f"IVF{nlist},SQ8"]
    if n >= PQ_MIN_VECTORS:
        nlist = default_nlist(n)
        out += [_opq_factory(m, d, nlist) for m in _pq_sizes(d)]
    return out


def _make_index(factory: str, d: int) -> faiss.Index:
    faiss = _faiss()

    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(f"invalid index type {factory!r}: {_first_line(exc)}") from None
    if _ivf(index) is None and not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.IndexIDMap2(index)
    return index


def _ivf(index: faiss.Index) -> Any:
    faiss = _faiss()

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _unwrap(index: faiss.Index) -> Any:
    """The innermost index under IDMap and pre-transform wrappers."""
    faiss = _faiss()

    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
            index = faiss.downcast_index(index.index)
        else:
            return index


def _hnsw(index: faiss.Index) -> Any:
    faiss = _faiss()

    inner = _unwrap(index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def estimate_index_bytes(factory: str, n: int, d: int) -> int:
    """Approximate resident bytes of a FAISS index `factory` holding n vectors of dim d."""
    faiss = _faiss()

    index = _make_index(factory, d)
    total = 0
    node = faiss.downcast_index(index)
    if isinstance(node, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        total += n * (IDMAP_BYTES_PER_VECTOR if isinstance(node, faiss.IndexIDMap2) else 8)
        node = faiss.downcast_index(node.index)
    if isinstance(node, faiss.IndexPreTransform):
        for i in range(node.chain.size()):
            vt = faiss.downcast_VectorTransform(node.chain.at(i))
            total += vt.d_in * vt.d_out * 4
        node = faiss.downcast_index(node.index)
    ivf = _ivf(node)
    if ivf is not None:
        total += n * (ivf.code_size + IVF_ID_BYTES) + ivf.nlist * ivf.d * 4
        pq = getattr(ivf, "pq", None)
        if pq is not None:
            total += pq.M * pq.ksub * pq.dsub * 4
        return int(total)
    if isinstance(node, faiss.IndexHNSW):
        m = node.hnsw.nb_neighbors(1)
        # level 0 has 2M links, upper levels add ~1/(M-1) of that; plus levels, offsets
        total += n * (faiss.downcast_index(node.storage).code_size + int(4 * 2 * m * 1.1) + 13)
        return int(total)
    total += n * int(getattr(node, "code_size", 4 * d))
    pq = getattr(node, "pq", None)
    if pq is not None:
        total += pq.M * pq.ksub * pq.dsub * 4
    return int(total)


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def choose_index(n: int, d: int, memory_budget: int | str | None = None) -> IndexChoice:
    """The best index for n vectors of dim d whose estimated size fits the memory budget (autofaiss-style)."""
    budget = parse_memory(memory_budget)
    smallest: tuple[str, int] | None = None
    for factory in candidate_factories(n, d):
        est = estimate_index_bytes(factory, n, d)
        if est <= budget:
            kind = "exact search" if factory == "Flat" else "approximate search"
            return IndexChoice(factory, est, f"{kind}; {n} x {d} needs ~{_human(est)} of {_human(budget)}")
        if smallest is None or est < smallest[1]:
            smallest = (factory, est)
    assert smallest is not None
    raise IndexBuildError(
        f"memory budget {_human(budget)} is too small for {n} vectors of dim {d}: "
        f"the smallest index ({smallest[0]}) needs ~{_human(smallest[1])}"
    )


# ---------------------------------------------------------------- capabilities and parameters


def supports_remove(index: faiss.Index) -> bool:
    """Whether `remove_ids` works on this index; when False (HNSW, ...) the caller rebuilds instead."""
    faiss = _faiss()

    inner = _unwrap(index)
    return _ivf(index) is not None or isinstance(inner, faiss.IndexFlatCodes)


def _check_chunk(ids: np.ndarray, vectors: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != d or vectors.shape[0] != ids.shape[0]:
        raise IndexBuildError(
            f"vector chunk of shape {vectors.shape} with {ids.shape[0]} ids does not match dimension {d}"
        )
    return ids, vectors


def apply_search_params(index: faiss.Index, params: SearchParams | dict[str, Any] | None) -> None:
    """Set stored query-time parameters (nprobe, efSearch) on an index, e.g. right after loading it."""
    if params is None:
        return
    if isinstance(params, dict):
        params = SearchParams.from_dict(params)
    ivf = _ivf(index)
    if params.nprobe is not None and ivf is not None:
        ivf.nprobe = int(min(params.nprobe, ivf.nlist))
    hnsw = _hnsw(index)
    if params.efSearch is not None and hnsw is not None:
        hnsw.hnsw.efSearch = int(params.efSearch)


def current_search_params(index: faiss.Index) -> SearchParams:
    ivf = _ivf(index)
    hnsw = _hnsw(index)
    return SearchParams(
        nprobe=int(ivf.nprobe) if ivf is not None else None,
        efSearch=int(hnsw.hnsw.efSearch) if hnsw is not None else None,
    )


def _faiss_params(index: faiss.Index, params: SearchParams, sel: Any = None) -> Any:
    faiss = _faiss()

    if _ivf(index) is not None:
        return faiss.SearchParametersIVF(nprobe=int(params.nprobe or _ivf(index).nprobe), sel=sel)
    hnsw = _hnsw(index)
    if hnsw is not None:
        return faiss.SearchParametersHNSW(efSearch=int(params.efSearch or hnsw.hnsw.efSearch), sel=sel)
    return faiss.SearchParameters(sel=sel) if sel is not None else None


# ---------------------------------------------------------------- search


class IdFilter:
    """A FAISS id selector built once from allowed ids and reusable across searches.

    Dense non-negative ids get a bitmap (cheap to build, fast to test); others a hashed batch.
    """

    def __init__(self, allowed_ids: np.ndarray) -> None:
        faiss = _faiss()
        ids = np.asarray(allowed_ids, dtype=np.int64).reshape(-1)
        if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            ids = np.unique(ids)
        self.ids = ids
        self.size = int(ids.size)
        self._bitmap: np.ndarray | None = None
        if self.size and ids[0] >= 0 and ids[-1] < max(1 << 23, 64 * self.size):
            mask = np.zeros(int(ids[-1]) + 1, dtype=bool)
            mask[ids] = True
            self._bitmap = np.packbits(mask, bitorder="little")
            self.selector = faiss.IDSelectorBitmap(self._bitmap.size, faiss.swig_ptr(self._bitmap))
        else:
            self.selector = faiss.IDSelectorBatch(ids)


def _rows(scores: np.ndarray, ids: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    keep = ids >= 0
    return [s[m] for s, m in zip(scores, keep, strict=True)], [i[m] for i, m in zip(ids, keep, strict=True)]


def _as_queries(queries: np.ndarray) -> np.ndarray:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return q.reshape(1, -1) if q.ndim == 1 else q


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    params: SearchParams | dict[str, Any] | None = None,
    allowed_ids: np.ndarray | IdFilter | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Top-k (scores, ids) per query row, -1 padding removed; with allowed_ids only those ids are returned
    (pass an IdFilter to reuse one filter across calls).

    A filtered search returns min(k, number of allowed ids in the index) results per row: IVF scales
    nprobe by 1/selectivity and raises it (up to all lists) for rows that came back short; HNSW scales
    efSearch, and scores selective filters (and short rows) exactly over its stored vectors.
    """
    q = _as_queries(queries)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise UsageError(f"query vectors of shape {q.shape} do not match the index dimension {index.d}")
    if isinstance(params, dict) or params is None:
        params = SearchParams.from_dict(params) if isinstance(params, dict) else current_search_params(index)
    if q.shape[0] == 0 or index.ntotal == 0 or k <= 0:
        empty_f, empty_i = np.empty(0, np.float32), np.empty(0, np.int64)
        return [empty_f] * q.shape[0], [empty_i] * q.shape[0]
    k = int(min(k, index.ntotal))
    if allowed_ids is None:
        scores, ids = index.search(q, k, params=_faiss_params(index, params))
        return _rows(scores, ids)
    filt = allowed_ids if isinstance(allowed_ids, IdFilter) else IdFilter(allowed_ids)
    if filt.size == 0:
        return [np.empty(0, np.float32)] * q.shape[0], [np.empty(0, np.int64)] * q.shape[0]
    want = min(k, filt.size)
    sel = filt.selector
    frac = min(1.0, filt.size / index.ntotal)
    ivf = _ivf(index)
    hnsw = _hnsw(index)
    if ivf is not None:
        # the filtered top-k sit about as deep as the unfiltered top-(k/frac): scale the tuned nprobe
        per_list = max(frac * index.ntotal / ivf.nlist, 1e-9)
        base = params.nprobe or ivf.nprobe
        nprobe = int(min(ivf.nlist, max(math.ceil(base / frac), math.ceil(2 * want / per_list))))
        scores, ids = index.search(q, k, params=_faiss_params(index, SearchParams(nprobe=nprobe), sel))
        while nprobe < ivf.nlist:
            short = np.flatnonzero((ids >= 0).sum(axis=1) < want)
            if short.size == 0:
                break
            nprobe = min(ivf.nlist, nprobe * 4)
            s2, i2 = index.search(q[short], k, params=_faiss_params(index, SearchParams(nprobe=nprobe), sel))
            scores[short], ids[short] = s2, i2
        return _rows(scores, ids)
    if hnsw is not None:
        if frac <= EXACT_FILTER_FRACTION:
            return _rows(*_exact_hnsw(index, hnsw, q, k, sel))
        ef = int(min(4096, math.ceil((params.efSearch or hnsw.hnsw.efSearch) / frac)))
        scores, ids = index.search(q, k, params=_faiss_params(index, SearchParams(efSearch=ef), sel))
        short = np.flatnonzero((ids >= 0).sum(axis=1) < want)
        if short.size:
            scores[short], ids[short] = _exact_hnsw(index, hnsw, q[short], k, sel)
        return _rows(scores, ids)
    # flat-coded indexes scan everything: a selector search is already exact and complete
    scores, ids = index.search(q, k, params=_faiss_params(index, params, sel))
    return _rows(scores, ids)


def _exact_hnsw(index: faiss.Index, hnsw: Any, q: np.ndarray, k: int, sel: Any) -> tuple[np.ndarray, np.ndarray]:
    """Exact scoring of the allowed vectors: scan the HNSW's flat storage through a position selector."""
    faiss = _faiss()

    idmap = faiss.downcast_index(index)
    storage = faiss.downcast_index(hnsw.storage)
    if isinstance(idmap, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        translated = faiss.IDSelectorTranslated(idmap.id_map, sel)
        scores, pos = storage.search(q, k, params=faiss.SearchParameters(sel=translated))
        id_map = faiss.rev_swig_ptr(idmap.id_map.data(), idmap.id_map.size())  # a view, no copy
        ids = np.where(pos >= 0, id_map[np.maximum(pos, 0)], -1)
        return scores, ids
    scores, ids = storage.search(q, k, params=faiss.SearchParameters(sel=sel))
    return scores, ids


# ---------------------------------------------------------------- build


def _count(source: VectorSource) -> int:
    return sum(int(np.asarray(ids).shape[0]) for ids, _ in source())


def _sample_pass(
    source: VectorSource, n: int, d: int, train_n: int, eval_n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random training rows and evaluation queries (with their ids) from one pass over the source."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(n, size=min(n, train_n + eval_n), replace=False)
    is_eval = np.zeros(picks.size, dtype=bool)
    is_eval[rng.choice(picks.size, size=min(eval_n, picks.size), replace=False)] = True
    order = np.argsort(picks)
    picks, is_eval = picks[order], is_eval[order]
    rows = np.empty((picks.size, d), dtype=np.float32)
    row_ids = np.empty(picks.size, dtype=np.int64)
    pos, j = 0, 0
    for ids, vecs in source():
        ids, vecs = _check_chunk(ids, vecs, d)
        end = pos + ids.shape[0]
        hi = int(np.searchsorted(picks, end))
        if hi > j:
            local = picks[j:hi] - pos
            rows[j:hi], row_ids[j:hi] = vecs[local], ids[local]
            j = hi
        pos = end
    if j < picks.size:
        raise IndexBuildError(f"the vector source yielded {pos} vectors, {n} expected")
    train = rows[~is_eval] if (~is_eval).any() else rows
    return train, rows[is_eval], row_ids[is_eval]


class _ExactTopK:
    """Running exact top-k of fixed queries over streamed chunks (the ground truth)."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.q, self.k = queries, k
        self.scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
        self.ids = np.full((queries.shape[0], k), -1, dtype=np.int64)

    def update(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        faiss = _faiss()
        kk = min(self.k, ids.shape[0])
        scores, pos = faiss.knn(self.q, vecs, kk, metric=faiss.METRIC_INNER_PRODUCT)
        allscores = np.concatenate([self.scores, scores], axis=1)
        allids = np.concatenate([self.ids, np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)], axis=1)
        top = np.argpartition(-allscores, self.k - 1, axis=1)[:, : self.k]
        self.scores = np.take_along_axis(allscores, top, axis=1)
        self.ids = np.take_along_axis(allids, top, axis=1)

    def sorted_ids(self) -> np.ndarray:
        order = np.argsort(-self.scores, axis=1, kind="stable")
        return np.take_along_axis(self.ids, order, axis=1)


@dataclass
class EvalSet:
    """Corpus vectors used as recall queries, their ids, and their exact top-(k+1) ids (best first)."""

    queries: np.ndarray
    query_ids: np.ndarray
    truth: np.ndarray
    k: int


def make_eval_set(source: VectorSource, dim: int, n: int, queries: int = 1000, k: int = 10, seed: int = 0) -> EvalSet:
    """Sample `queries` corpus vectors and find their exact neighbours among the other, non-query vectors
    by brute force (two passes); `build_index` holds the queries out of the index while it measures.

    Pass it to several `build_index` calls over the same vectors to measure them on the same ground truth.
    """
    n_eval = int(min(queries, max(n // 10, 1)))
    _, q, qids = _sample_pass(source, n, dim, 0, n_eval, seed)
    top = _ExactTopK(q, k)
    held = np.sort(qids)
    for ids, vecs in source():
        ids, vecs = _check_chunk(ids, vecs, dim)
        keep = ~np.isin(ids, held)
        top.update(ids[keep], vecs[keep])
    return EvalSet(q, qids, top.sorted_ids(), k)


def exact_neighbors(source: VectorSource, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids (best first) of each query by brute force over every vector of the source."""
    q = _as_queries(queries)
    top = _ExactTopK(q, k)
    d = q.shape[1]
    for ids, vecs in source():
        top.update(*_check_chunk(ids, vecs, d))
    return top.sorted_ids()


def recall_at_k(
    index: faiss.Index,
    queries: np.ndarray,
    query_ids: np.ndarray,
    truth: np.ndarray,
    k: int,
    params: SearchParams | None = None,
) -> float:
    """Mean |found ∩ true| / k over queries, each query's own id excluded from both sides."""
    _, found = search(index, queries, k + 1, params)
    hits, total = 0, 0
    for qid, got, true in zip(query_ids, found, truth, strict=True):
        # truth holds the exact top k+1 (best first, the query itself among them when it is in the index) or
        # the top k of the other vectors: without the query itself that leaves k
        true_set = {t for t in true.tolist() if t != qid and t >= 0}
        if len(true_set) > k:
            true_set = set([t for t in true.tolist() if t != qid][:k])
        got_k = [g for g in got.tolist() if g != qid][:k]
        hits += len(true_set.intersection(got_k))
        total += len(true_set)
    # no true neighbours at all (an index of one vector): nothing was missed
    return hits / total if total else 1.0


def _param_grid(kind: str, upper: int) -> list[int]:
    if kind == "nprobe":
        grid = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
    else:
        grid = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]
    out = [g for g in grid if g < upper] + [upper]
    return sorted(set(out))


def tune_search_params(
    index: faiss.Index,
    queries: np.ndarray,
    query_ids: np.ndarray,
    truth: np.ndarray,
    k: int = 10,
    target: float = DEFAULT_RECALL_TARGET,
) -> tuple[SearchParams, float, list[tuple[int, float]]]:
    """The smallest nprobe / efSearch whose measured recall@k reaches target (or the largest tried)."""
    ivf, hnsw = _ivf(index), _hnsw(index)
    if ivf is None and hnsw is None:
        r = recall_at_k(index, queries, query_ids, truth, k)
        return SearchParams(), r, []
    kind = "nprobe" if ivf is not None else "efSearch"
    grid = _param_grid(kind, int(ivf.nlist) if ivf is not None else 2048)
    if kind == "efSearch":
        grid = [g for g in grid if g >= k + 1] or [k + 1]

    def make(value: int) -> SearchParams:
        return SearchParams(nprobe=value) if kind == "nprobe" else SearchParams(efSearch=value)

    curve: list[tuple[int, float]] = []

    def measure(value: int) -> float:
        r = recall_at_k(index, queries, query_ids, truth, k, make(value))
        curve.append((value, r))
        log.debug("%s=%d recall@%d=%.4f", kind, value, k, r)
        return r

    lo_fail = 0
    for value in grid:
        r = measure(value)
        if r >= target:
            hi, hi_r = value, r
            break
        lo_fail = value
    else:
        return make(grid[-1]), curve[-1][1], sorted(curve)
    # the grid is coarse: bisect between the last value that missed and the first that reached the target
    lo = max(lo_fail, k) if kind == "efSearch" else lo_fail  # HNSW never searches with efSearch < k
    while hi - lo > max(1, hi // 16):
        mid = (lo + hi) // 2
        r = measure(mid)
        if r >= target:
            hi, hi_r = mid, r
        else:
            lo = mid
    return make(hi), hi_r, sorted(curve)


def build_index(
    source: VectorSource,
    dim: int,
    n: int | None = None,
    *,
    index_type: str | None = None,
    memory_budget: int | str | None = None,
    recall_target: float = DEFAULT_RECALL_TARGET,
    k: int = 10,
    eval_queries: int = 1000,
    max_train: int = MAX_TRAIN_VECTORS,
    seed: int = 0,
    progress: Progress | None = None,
    eval_set: EvalSet | None = None,
) -> tuple[faiss.Index, BuildStats]:
    """Build, train, fill and recall-tune an inner-product index over the vectors `source()` yields.

    index_type is a FAISS factory string ("Flat", "IVF4096,Flat", "HNSW32", "OPQ64,IVF4096,PQ64"); None
    picks one by size and memory budget. Vectors must be L2-normalised (cosine = inner product).
    Recall is measured on `eval_queries` corpus vectors sampled here, or on `eval_set`'s (its k wins): they
    are held out of training and of the index until tuning is done (then added), their exact neighbours
    among the other vectors found while adding (or given by the eval set).
    """
    progress = progress or NoProgress()
    started = time.perf_counter()
    if n is None:
        n = _count(source)
    if n <= 0:
        raise IndexBuildError("no vectors to index")
    if index_type is None:
        choice = choose_index(n, dim, memory_budget)
        auto = True
    else:
        est = estimate_index_bytes(index_type, n, dim)
        if memory_budget is not None and est > parse_memory(memory_budget):
            raise IndexBuildError(
                f"index type {index_type!r} needs ~{_human(est)} for {n} vectors, "
                f"over the memory budget of {_human(parse_memory(memory_budget))}"
            )
        choice = IndexChoice(index_type, est, "given by --index-type")
        auto = False
    index = _make_index(choice.factory, dim)
    stats = BuildStats(
        factory=choice.factory,
        auto=auto,
        reason=choice.reason,
        n_vectors=n,
        dim=dim,
        estimated_bytes=choice.estimated_bytes,
        k=k,
        recall_target=recall_target,
        supports_remove=supports_remove(index),
    )
    ivf = _ivf(index)
    needs_train = not index.is_trained
    train_n = 0
    if needs_train:
        nlist = int(ivf.nlist) if ivf is not None else 1
        train_n = int(min(n, max(64 * nlist, 16_384), max(max_train, 39 * nlist)))
        if ivf is not None and n < nlist:
            raise IndexBuildError(f"index type {choice.factory!r} has {nlist} lists but only {n} vectors")
    if eval_set is not None:
        k = eval_set.k
        stats.k = k
    n_eval = 0 if eval_set is not None else int(min(eval_queries, max(n // 10, 1)))
    progress.stage("sample vectors", total=n)
    train, queries, query_ids = _sample_pass(source, n, dim, train_n, n_eval, seed)
    progress.advance(n)
    if needs_train:
        t0 = time.perf_counter()
        progress.stage("train index", total=train.shape[0])
        try:
            index.train(train)
        except RuntimeError as exc:
            raise IndexBuildError(f"training {choice.factory!r} failed: {_first_line(exc)}") from None
        progress.advance(train.shape[0])
        stats.train_seconds = time.perf_counter() - t0
        stats.train_vectors = int(train.shape[0])
    del train
    t0 = time.perf_counter()
    progress.stage("add vectors", total=n)
    # The evaluation queries are held out of the index until tuning is done: a query that is itself in the
    # index leads an HNSW search (and its IVF list) straight to its own neighbourhood, which overstates the
    # recall that real queries get. Their exact neighbours are found among the other vectors.
    truth = _ExactTopK(queries, k) if eval_set is None else None
    if eval_set is not None:
        queries, query_ids = eval_set.queries, eval_set.query_ids
    held = np.sort(query_ids)
    added, held_seen = 0, 0
    for ids, vecs in source():
        ids, vecs = _check_chunk(ids, vecs, dim)
        rows = ids.shape[0]
        if held.size:
            keep = ~np.isin(ids, held)
            held_seen += int(rows - keep.sum())
            ids, vecs = ids[keep], vecs[keep]
        index.add_with_ids(vecs, ids)
        if truth is not None:
            truth.update(ids, vecs)
        added += ids.shape[0]
        progress.advance(rows)
    if added + held_seen != n:
        raise IndexBuildError(f"the vector source yielded {added + held_seen} vectors on its second pass, {n} expected")
    if held_seen != held.size:
        raise IndexBuildError("the vector source yields an id more than once; ids must be unique")
    stats.add_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    progress.stage("tune recall", total=None)
    if eval_set is not None:
        truth_ids = eval_set.truth
    else:
        assert truth is not None
        truth_ids = truth.sorted_ids()
    params, recall, curve = tune_search_params(index, queries, query_ids, truth_ids, k, recall_target)
    apply_search_params(index, params)
    stats.tune_seconds = time.perf_counter() - t0
    if held.size:
        t0 = time.perf_counter()
        index.add_with_ids(queries, query_ids)
        stats.add_seconds += time.perf_counter() - t0
    progress.close()
    stats.eval_queries = int(queries.shape[0])
    stats.recall = float(recall)
    stats.target_met = bool(recall >= recall_target)
    stats.search_params = params.to_dict()
    stats.tuning = curve
    stats.build_seconds = time.perf_counter() - started
    return index, stats


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else type(exc).__name__
    # FAISS prefixes the C++ signature and source location; keep only the message
    line = re.sub(r"^Error in .*? at \S+:\d+: ", "", line)
    return line.rsplit("Error: ", 1)[-1][:200]


# ---------------------------------------------------------------- incremental updates


def add_vectors(index: faiss.Index, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> int:
    """Add (ids, vectors) chunks to a trained index, reusing its quantizer; returns how many were added."""
    if not index.is_trained:
        raise IndexBuildError("the index is not trained; build it first")
    added = 0
    for ids, vecs in chunks:
        ids, vecs = _check_chunk(ids, vecs, index.d)
        try:
            index.add_with_ids(vecs, ids)
        except RuntimeError as exc:
            raise IndexBuildError(f"cannot add to this index: {_first_line(exc)}") from None
        added += ids.shape[0]
    return added


def remove_ids(index: faiss.Index, ids: np.ndarray) -> int:
    """Remove ids from the index; returns how many were removed. Raises IndexBuildError when the index
    type cannot remove (check `supports_remove` first and rebuild from vectors instead)."""
    faiss = _faiss()

    if not supports_remove(index):
        raise IndexBuildError("this index type cannot remove vectors; rebuild it from the vectors")
    arr = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if arr.size == 0:
        return 0
    removed: int = index.remove_ids(faiss.IDSelectorBatch(arr))
    return int(removed)


def update_index(
    index: faiss.Index, remove: np.ndarray | None, add: Iterable[tuple[np.ndarray, np.ndarray]] | None
) -> bool:
    """Remove then add in place; False (index untouched) when removal is needed but unsupported: rebuild."""
    if remove is not None and len(remove) and not supports_remove(index):
        return False
    if remove is not None and len(remove):
        remove_ids(index, remove)
    if add is not None:
        add_vectors(index, add)
    return True


# ---------------------------------------------------------------- persistence


def save_index(index: faiss.Index, path: str | os.PathLike[str]) -> int:
    """Write atomically (temp file in the same folder, fsync, rename, fsync folder); returns bytes."""
    faiss = _faiss()

    path = Path(path)
    with atomic_open(path) as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
    return path.stat().st_size


def load_index(
    path: str | os.PathLike[str],
    mmap: bool = False,
    params: SearchParams | dict[str, Any] | None = None,
    expected_bytes: int | None = None,
) -> faiss.Index:
    """Read an index (memory-mapped when mmap; then read-only) and re-apply its stored search params.

    A missing, truncated or unreadable file raises IndexCorruptError.
    """
    faiss = _faiss()

    path = Path(path)
    if not path.is_file():
        raise IndexCorruptError(f"index file {path} is missing")
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise IndexCorruptError(f"index file {path} has {size} bytes, {expected_bytes} expected (truncated?)")
    flags = 0
    if mmap:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        # IVF lists map with IO_FLAG_MMAP, flat codes (under IDMap) with IO_FLAG_MMAP_IFC; FAISS refuses both
        flags = faiss.IO_FLAG_MMAP_IFC if magic.startswith(b"IxM") else faiss.IO_FLAG_MMAP
        flags |= faiss.IO_FLAG_READ_ONLY
    try:
        index = faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError) as exc:
        raise IndexCorruptError(f"index file {path} is corrupt or truncated: {_first_line(exc)}") from None
    apply_search_params(index, params)
    return index


def index_bytes(index: faiss.Index) -> int:
    """The serialized size of an index."""
    faiss = _faiss()

    return int(faiss.serialize_index(index).nbytes)


def iter_array_chunks(
    ids: np.ndarray, vectors: np.ndarray, chunk: int = 65_536
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) chunks over in-memory arrays: `lambda: iter_array_chunks(ids, x)` is a VectorSource."""
    for start in range(0, ids.shape[0], chunk):
        yield ids[start : start + chunk], vectors[start : start + chunk]
