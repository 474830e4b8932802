"""Ranking and correlation metrics: nDCG@k, recall@k, MRR@k, Spearman, Pearson (numpy/scipy only)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.errors import DataError

Ranking = Sequence[Any]  # document ids, best first
Qrels = Mapping[Any, float]  # document id -> graded relevance (0 or missing: not relevant)


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain: sum of gain / log2(rank + 1), ranks from 1."""
    return float(sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, 1)))


def ndcg_at_k(ranking: Ranking, qrels: Qrels, k: int) -> float:
    """nDCG@k with graded gains; the ideal DCG sorts all judged grades. 0.0 when nothing is relevant."""
    _check_k(k)
    ideal = dcg(sorted((g for g in qrels.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    gains = [max(float(qrels.get(doc, 0.0)), 0.0) for doc in _dedup(ranking)[:k]]
    return dcg(gains) / ideal


def recall_at_k(ranking: Ranking, qrels: Qrels, k: int) -> float:
    """Share of the relevant documents (grade > 0) found in the top k. 0.0 when none are relevant."""
    _check_k(k)
    relevant = {doc for doc, g in qrels.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(_dedup(ranking)[:k])) / len(relevant)


def mrr_at_k(ranking: Ranking, qrels: Qrels, k: int) -> float:
    """Reciprocal rank of the first relevant document in the top k; 0.0 if there is none."""
    _check_k(k)
    for rank, doc in enumerate(_dedup(ranking)[:k], 1):
        if qrels.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def mean_metric(metric: str, rankings: Mapping[Any, Ranking], qrels: Mapping[Any, Qrels], k: int) -> float:
    """Mean of ndcg/recall/mrr@k over the queries that have at least one relevant document."""
    fn = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k}.get(metric)
    if fn is None:
        raise ValueError(f"unknown metric {metric!r}: use ndcg, recall or mrr")
    judged = [q for q, rel in qrels.items() if any(g > 0 for g in rel.values())]
    if not judged:
        raise DataError("no query has a relevant document")
    return float(np.mean([fn(rankings.get(q, []), qrels[q], k) for q in judged]))


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (ties get average ranks)."""
    from scipy.stats import spearmanr

    a, b = _pair(x, y)
    return float(spearmanr(a, b).statistic)


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson linear correlation."""
    from scipy.stats import pearsonr

    a, b = _pair(x, y)
    return float(pearsonr(a, b).statistic)


def _pair(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(f"correlation needs two equal-length 1-d sequences, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise DataError("correlation needs at least 2 pairs")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise DataError("correlation is undefined when one side is constant")
    return a, b


def _dedup(ranking: Ranking) -> list[Any]:
    """Keep each document's first position: a repeated id must not earn gain twice."""
    seen: set[Any] = set()
    out = []
    for doc in ranking:
        if doc not in seen:
            seen.add(doc)
            out.append(doc)
    return out


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
