"""Ranking, correlation and pair-classification metrics: nDCG@k, recall@k, MRR@k, Spearman, Pearson, AP (numpy/scipy)."""

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


def average_precision(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> float:
    """Area under the precision-recall curve of ranking positives first by score, one step per distinct
    score (tied pairs share a threshold), as scikit-learn's average_precision_score computes it."""
    s, pos, order = _binary(scores, positive)
    tp = np.cumsum(pos[order])
    last = _threshold_ends(s[order])
    tp, seen = tp[last], last + 1
    recall_step = np.diff(np.concatenate([[0], tp])) / tp[-1]
    return float(np.sum(recall_step * tp / seen))


def best_accuracy(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> tuple[float, float]:
    """The highest accuracy of "positive when score >= t" over all thresholds t, and the t (midway between
    neighbouring scores) that gives it."""
    s, pos, order = _binary(scores, positive)
    ranked = s[order]
    last = _threshold_ends(ranked)
    tp = np.cumsum(pos[order])[last]
    fp = (last + 1) - tp
    negatives = len(s) - int(pos.sum())
    correct = np.concatenate([[negatives], tp + (negatives - fp)])  # none positive, then each cut
    best = int(np.argmax(correct))
    if best == 0:
        threshold = float(ranked[0]) + 1.0
    elif best == len(last):
        threshold = float(ranked[-1])
    else:
        threshold = float((ranked[last[best - 1]] + ranked[last[best - 1] + 1]) / 2)
    return float(correct[best] / len(s)), threshold


def _binary(
    scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    if s.shape != pos.shape or s.ndim != 1:
        raise DataError(f"scores and labels must be equal-length 1-d sequences, got {s.shape} and {pos.shape}")
    if not pos.any() or pos.all():
        raise DataError("pair classification needs both positive and negative pairs")
    if not np.isfinite(s).all():
        raise DataError("a pair score is not a finite number")
    return s, pos, np.argsort(-s, kind="stable")


def _threshold_ends(ranked: np.ndarray) -> np.ndarray:
    """Positions (in descending score order) where a run of equal scores ends."""
    return np.flatnonzero(np.append(np.diff(ranked) != 0, True))


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
