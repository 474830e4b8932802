"""Fuse ranked lists from several search modes: weighted RRF or normalised score sums, and BM25's standout first."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import UsageError

METHODS = ("rrf", "minmax", "zscore")
# BM25's best hit leads hybrid results when it scores this fraction above BM25's second (docs/quality.md,
# "Choosing the hybrid default": the middle of the range 0.10-0.20 that keeps every tuning set within a point).
DEFAULT_LEAD_MARGIN = 0.15


def _default_weights() -> dict[str, float]:
    # Chosen on MS MARCO, DBpedia-entity and exact-token sets (docs/quality.md, "Retrieval"): the largest
    # lexical weight that stays within 1 nDCG@10 of dense on DBpedia, where BM25 is 14 points behind;
    # exact-token queries are served by the lead rule (lead_margin) instead.
    return {"dense": 1.0, "lexical": 0.2}


@dataclass(frozen=True)
class FusionConfig:
    """How hybrid search merges the modes' lists; `depth` is how many candidates each mode contributes.

    `lead_margin`: when BM25's top hit scores at least this fraction above its second hit (or is its only hit),
    it takes rank 1 of the fused list, the rest keeping the fused order. With `lead_sole_match`, so does BM25's
    top hit when it is the only document holding every query term. None turns both off.
    """

    method: str = "zscore"
    weights: Mapping[str, float] = field(default_factory=_default_weights)
    rrf_k: float = 60.0
    depth: int = 100
    lead_margin: float | None = DEFAULT_LEAD_MARGIN
    # off by default: on natural questions the sole full match was wrong 3 times of 5 (docs/quality.md)
    lead_sole_match: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown fusion method {self.method!r}: use {', '.join(METHODS)}")
        if self.rrf_k < 0:
            raise UsageError("the RRF constant must be >= 0")
        if not all(math.isfinite(w) and w >= 0 for w in self.weights.values()):
            raise UsageError("fusion weights must be finite numbers >= 0")
        if all(float(self.weights.get(mode, 1.0)) == 0 for mode in ("dense", "lexical")):
            raise UsageError(
                "the dense and lexical fusion weights are both 0, which leaves no results; give one a weight"
            )
        if self.lead_margin is not None and not 0 <= self.lead_margin <= 1:
            raise UsageError("the lead margin must be between 0 and 1")

    def lexical_leads(self, lexical: tuple[np.ndarray, np.ndarray], sole: np.ndarray | None = None) -> np.ndarray:
        """Per query, BM25's standout hit that takes rank 1, or -1.

        It stands out when (s1 - s2) / s1 >= lead_margin, s1 and s2 being the first two real (key >= 0) scores
        of the query's BM25 list (s2 = 0 for a one-hit list), or, with `lead_sole_match`, when it is the query's
        `sole` match (`LexicalIndex.sole_matches`: the only document holding every query term). No query
        leads when the rule is off or the lexical weight is 0.
        """
        scores, keys = lexical
        leads = np.full(len(keys), -1, np.int64)
        if self.lead_margin is None or float(self.weights.get("lexical", 1.0)) == 0:
            return leads
        for i, (row_scores, row_keys) in enumerate(zip(scores, keys, strict=True)):
            valid = np.asarray(row_keys) >= 0
            top = np.asarray(row_scores, dtype=np.float64)[valid][:2]
            if len(top) == 0 or top[0] <= 0:
                continue
            first = int(np.asarray(row_keys)[valid][0])
            second = top[1] if len(top) > 1 else 0.0
            if (top[0] - second) / top[0] >= self.lead_margin or (
                self.lead_sole_match and sole is not None and sole[i] == first
            ):
                leads[i] = first
        return leads


def fuse(
    lists: Sequence[tuple[np.ndarray, np.ndarray]],
    k: int,
    method: str = "rrf",
    weights: Sequence[float] | None = None,
    rrf_k: float = 60.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ranked (scores (n, d), keys (n, d)) lists, best first, keys < 0 being padding.

    rrf: sum over lists of weight / (rrf_k + rank), rank counted from 1 among each list's real hits.
    minmax / zscore: sum of weight * the list's scores scaled to [0, 1] / standardised; a key missing from a
    list gets that list's lowest scaled score. Returns (scores (n, k) float32, keys (n, k) int64 padded -1);
    ties go to the smaller key.
    """
    if method not in METHODS:
        raise UsageError(f"unknown fusion method {method!r}: use {', '.join(METHODS)}")
    if not lists:
        raise UsageError("nothing to fuse")
    weights = [1.0] * len(lists) if weights is None else list(weights)
    if len(weights) != len(lists):
        raise UsageError(f"{len(weights)} weights for {len(lists)} ranked lists")
    n = len(lists[0][1])
    if any(len(keys) != n or np.shape(scores) != np.shape(keys) for scores, keys in lists):
        raise UsageError("ranked lists to fuse must have the same number of queries and matching shapes")
    out_scores = np.zeros((n, k), np.float32)
    out_keys = np.full((n, k), -1, np.int64)
    for i in range(n):
        rows = []
        for (scores, keys), weight in zip(lists, weights, strict=True):
            valid = np.asarray(keys[i]) >= 0
            row_keys = np.asarray(keys[i], dtype=np.int64)[valid]
            if weight == 0 or len(row_keys) == 0:
                continue
            values, floor = _contributions(np.asarray(scores[i], dtype=np.float64)[valid], method, rrf_k)
            rows.append((row_keys, weight * values, weight * floor))
        if not rows:
            continue
        uniq, inverse = np.unique(np.concatenate([r[0] for r in rows]), return_inverse=True)
        fused = np.full(len(uniq), sum(r[2] for r in rows), np.float64)
        start = 0
        for row_keys, values, floor in rows:
            np.add.at(fused, inverse[start : start + len(row_keys)], values - floor)
            start += len(row_keys)
        order = np.lexsort((uniq, -fused))[:k]
        out_scores[i, : len(order)] = fused[order]
        out_keys[i, : len(order)] = uniq[order]
    return out_scores, out_keys


def _contributions(scores: np.ndarray, method: str, rrf_k: float) -> tuple[np.ndarray, float]:
    """Each hit's contribution and what a key absent from the list gets."""
    if method == "rrf":
        return 1.0 / (rrf_k + np.arange(1, len(scores) + 1)), 0.0
    if method == "minmax":
        low, high = scores.min(), scores.max()
        scaled = (scores - low) / (high - low) if high > low else np.ones_like(scores)
        return scaled, 0.0
    std = scores.std()
    if std == 0:
        # one hit (or all tied): nothing to standardise, but being in the list still beats being absent
        return np.ones_like(scores), 0.0
    z = (scores - scores.mean()) / std
    return z, float(z.min())


def fuse_modes(
    results: Mapping[str, tuple[np.ndarray, np.ndarray]],
    k: int,
    config: FusionConfig | None = None,
    sole: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse the (scores, keys) of named modes with the config's per-mode weights (1.0 for modes it omits);
    a standout BM25 hit (`FusionConfig.lexical_leads`, `sole` being each query's sole full match or -1) of the
    "lexical" mode then takes rank 1."""
    config = config or FusionConfig()
    names = list(results)
    fused = fuse(
        [results[m] for m in names],
        k,
        method=config.method,
        weights=[float(config.weights.get(m, 1.0)) for m in names],
        rrf_k=config.rrf_k,
    )
    if "lexical" not in results:
        return fused
    return put_first(*fused, config.lexical_leads(results["lexical"], sole))


def put_first(scores: np.ndarray, keys: np.ndarray, leads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each row's lead key (>= 0) to rank 1, scored just above the row's best; the row keeps its length.

    A lead absent from the row pushes its last hit out. Rows with lead -1 are left as they are.
    """
    scores, keys = scores.copy(), keys.copy()
    k = keys.shape[1]
    for i in np.flatnonzero(leads >= 0):
        lead = leads[i]
        if keys[i, 0] == lead:
            continue
        rest = (keys[i] >= 0) & (keys[i] != lead)
        rest_keys, rest_scores = keys[i][rest][: k - 1], scores[i][rest][: k - 1]
        best = scores[i, 0] if keys[i, 0] >= 0 else np.float32(0)
        n = len(rest_keys) + 1
        keys[i, :n] = [lead, *rest_keys]
        scores[i, :n] = [np.nextafter(np.float32(best), np.float32(np.inf)), *rest_scores]
        keys[i, n:], scores[i, n:] = -1, 0
    return scores, keys


def padded(scores: Sequence[np.ndarray], keys: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ranked (scores, keys), ragged or padded, as (n, k) arrays padded with key -1."""
    n = len(keys)
    out_scores = np.zeros((n, k), np.float32)
    out_keys = np.full((n, k), -1, np.int64)
    for i, (row_scores, row_keys) in enumerate(zip(scores, keys, strict=True)):
        row_keys = np.asarray(row_keys, dtype=np.int64)[:k]
        kept = row_keys >= 0
        m = int(kept.sum())
        out_keys[i, :m] = row_keys[kept]
        out_scores[i, :m] = np.asarray(row_scores, dtype=np.float32)[:k][kept]
    return out_scores, out_keys
