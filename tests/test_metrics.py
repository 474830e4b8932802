"""Ranking, correlation and pair-classification metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.errors import DataError
from pipeline.metrics import (
    average_precision,
    best_accuracy,
    dcg,
    mean_metric,
    mrr_at_k,
    ndcg_at_k,
    pearson,
    recall_at_k,
    spearman,
)

LOG2_3 = math.log2(3)
LOG2_4 = 2.0


def test_dcg_discounts_by_log2_of_rank_plus_one() -> None:
    assert dcg([3, 2, 1]) == pytest.approx(3 / 1 + 2 / LOG2_3 + 1 / LOG2_4)
    assert dcg([]) == 0.0


def test_ndcg_graded_hand_computed() -> None:
    qrels = {"a": 3, "b": 2, "c": 1}
    # ranking b, x, a: gains 2, 0, 3 -> DCG = 2 + 0 + 3/2 = 3.5
    ideal = 3 + 2 / LOG2_3 + 1 / LOG2_4
    assert ndcg_at_k(["b", "x", "a"], qrels, 3) == pytest.approx(3.5 / ideal)
    assert ndcg_at_k(["a", "b", "c"], qrels, 3) == pytest.approx(1.0)


def test_ndcg_ideal_uses_all_judged_grades_cut_at_k() -> None:
    qrels = {"a": 1, "b": 2}
    # k=1: ranking a -> DCG 1; ideal takes the best grade 2 -> 0.5
    assert ndcg_at_k(["a", "b"], qrels, 1) == pytest.approx(0.5)
    # relevant document outside the top k earns nothing
    assert ndcg_at_k(["x", "y", "b"], qrels, 2) == 0.0


def test_ndcg_ignores_zero_grades_and_repeated_ids() -> None:
    qrels = {"a": 1, "z": 0}
    assert ndcg_at_k(["a", "a", "a"], qrels, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["z", "a"], qrels, 2) == pytest.approx(1 / LOG2_3)
    assert ndcg_at_k(["a"], {"z": 0}, 10) == 0.0


def test_recall_at_k() -> None:
    qrels = {"a": 1, "b": 2, "c": 1, "d": 0}
    assert recall_at_k(["a", "d", "x", "b"], qrels, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["a", "d", "x", "b"], qrels, 4) == pytest.approx(2 / 3)
    assert recall_at_k(["a", "a"], qrels, 2) == pytest.approx(1 / 3)
    assert recall_at_k(["a"], {}, 1) == 0.0


def test_mrr_at_k() -> None:
    qrels = {"b": 1, "c": 3}
    assert mrr_at_k(["x", "b", "c"], qrels, 10) == pytest.approx(0.5)
    assert mrr_at_k(["x", "y", "c"], qrels, 3) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "c"], qrels, 2) == 0.0


def test_k_must_be_positive() -> None:
    for fn in (ndcg_at_k, recall_at_k, mrr_at_k):
        with pytest.raises(ValueError):
            fn(["a"], {"a": 1}, 0)


def test_mean_metric_skips_queries_without_relevant_documents() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    rankings = {"q1": ["a"], "q2": ["x", "b"], "q3": ["c"]}
    assert mean_metric("mrr", rankings, qrels, 10) == pytest.approx((1 + 0.5) / 2)
    assert mean_metric("recall", {"q1": ["a"]}, qrels, 10) == pytest.approx(0.5)  # q2 missing -> 0
    with pytest.raises(DataError):
        mean_metric("ndcg", rankings, {"q": {"a": 0}}, 10)
    with pytest.raises(ValueError):
        mean_metric("map", rankings, qrels, 10)


def test_spearman_hand_computed() -> None:
    # ranks x: 1 2 3 4 5, ranks y: 2 1 4 3 5 -> d^2 sum 4 -> 1 - 6*4/(5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [20, 10, 40, 30, 50]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # monotone but not linear: Spearman 1, Pearson below 1
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)


def test_spearman_averages_tied_ranks() -> None:
    # x ranks 1.5 1.5 3, y ranks 1 2 3: Pearson of ranks = 0.866...
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)


def test_pearson_hand_computed() -> None:
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    # x centred -1 0 1, y centred -1 -1 2 (mean 2 of 1 1 4): cov 3, |x| sqrt2, |y| sqrt6
    assert pearson([1, 2, 3], [1, 1, 4]) == pytest.approx(3 / math.sqrt(2 * 6))
    assert pearson([1, 2, 3, 4], [1, 4, 9, 100]) < 0.9


def test_correlations_reject_bad_input() -> None:
    with pytest.raises(DataError):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(DataError):
        pearson([1], [1])
    with pytest.raises(DataError):
        spearman([1, 1, 1], [1, 2, 3])


def test_average_precision_hand_computed() -> None:
    # ranked: + - + -: precision 1 at the first positive, 2/3 at the second
    assert average_precision([0.9, 0.8, 0.7, 0.1], [True, False, True, False]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.1, 0.2], [True, False]) == pytest.approx(0.5)
    # a tie of a positive and a negative is one threshold: precision 1/2 there, not 1 by input order
    assert average_precision([0.5, 0.5, 0.1], [True, False, True]) == pytest.approx((0.5 * 0.5) + (0.5 * 2 / 3))


def test_best_accuracy_hand_computed() -> None:
    accuracy, threshold = best_accuracy([0.9, 0.8, 0.4, 0.3, 0.6], [True, True, False, False, False])
    assert accuracy == 1.0 and threshold == pytest.approx(0.7)  # midway between 0.8 and 0.6
    accuracy, threshold = best_accuracy([0.2, 0.9], [True, False])  # best to call nothing positive
    assert accuracy == 0.5
    assert np.mean((np.array([0.2, 0.9]) >= threshold) == [True, False]) == accuracy


def test_pair_metrics_match_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(2, 50))
        scores = np.round(rng.normal(size=n), int(rng.integers(0, 3)))  # rounding makes ties
        positive = rng.random(n) < rng.uniform(0.1, 0.9)
        if positive.all() or not positive.any():
            continue
        assert average_precision(scores, positive) == pytest.approx(
            sklearn_metrics.average_precision_score(positive, scores)
        )
        accuracy, threshold = best_accuracy(scores, positive)
        cuts = np.append(np.unique(scores), np.inf)
        assert accuracy == pytest.approx(max(sklearn_metrics.accuracy_score(positive, scores >= t) for t in cuts))
        assert sklearn_metrics.accuracy_score(positive, scores >= threshold) == pytest.approx(accuracy)


def test_pair_metrics_reject_bad_input() -> None:
    with pytest.raises(DataError, match="both positive and negative"):
        average_precision([0.1, 0.2], [True, True])
    with pytest.raises(DataError, match="equal-length"):
        best_accuracy([0.1, 0.2], [True])
    with pytest.raises(DataError, match="finite"):
        average_precision([float("nan"), 0.2], [True, False])
