"""Rank fusion: hand-computed RRF, weights, padding and the normalised score sums."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import UsageError
from pipeline.fusion import FusionConfig, fuse, fuse_modes


def ranked(keys: list[int], scores: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    scores = scores if scores is not None else [float(len(keys) - i) for i in range(len(keys))]
    return np.array([scores], np.float32), np.array([keys], np.int64)


def test_rrf_hand_computed() -> None:
    a, b = ranked([1, 2, 3]), ranked([3, 1, 4])
    scores, keys = fuse([a, b], k=4)
    assert keys[0].tolist() == [1, 3, 2, 4]
    np.testing.assert_allclose(scores[0], [1 / 61 + 1 / 62, 1 / 61 + 1 / 63, 1 / 62, 1 / 63], rtol=1e-6)


def test_rrf_constant_and_weights() -> None:
    a, b = ranked([1, 2, 3]), ranked([3, 1, 4])
    _, keys = fuse([a, b], k=4, weights=[1.0, 0.0])
    assert keys[0].tolist() == [1, 2, 3, -1]
    # with k=0 and b weighted 3x: 3 gets 1/3 + 3/1, 1 gets 1/1 + 3/2, 4 gets 3/3, 2 gets 1/2
    scores, keys = fuse([a, b], k=4, weights=[1.0, 3.0], rrf_k=0)
    assert keys[0].tolist() == [3, 1, 4, 2]
    np.testing.assert_allclose(scores[0], [1 / 3 + 3, 1 + 1.5, 1.0, 0.5], rtol=1e-6)


def test_padding_is_ignored_and_output_padded() -> None:
    a = ranked([7, -1, -1], [0.9, 0.0, 0.0])
    b = ranked([-1, -1, -1], [0.0, 0.0, 0.0])
    scores, keys = fuse([a, b], k=3)
    assert keys[0].tolist() == [7, -1, -1] and scores[0, 1:].tolist() == [0.0, 0.0]
    # a padded slot does not take a rank: 8 is the second real hit of its list
    scores, keys = fuse([ranked([5, -1, 8]), ranked([8])], k=2, rrf_k=0)
    assert keys[0].tolist() == [8, 5]
    np.testing.assert_allclose(scores[0], [1 / 2 + 1, 1.0], rtol=1e-6)


def test_minmax_hand_computed() -> None:
    a = ranked([1, 2, 3], [0.9, 0.7, 0.5])  # scaled 1, .5, 0
    b = ranked([3, 4], [10.0, 2.0])  # scaled 1, 0
    scores, keys = fuse([a, b], k=4, method="minmax", weights=[1.0, 0.5])
    assert keys[0].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(scores[0], [1.0, 0.5, 0.5, 0.0], atol=1e-6)


def test_zscore_gives_absent_keys_the_lists_minimum() -> None:
    a = ranked([1, 2], [3.0, 1.0])  # z = +1, -1
    b = ranked([2, 5], [4.0, 0.0])  # z = +1, -1
    scores, keys = fuse([a, b], k=3, method="zscore")
    # 1: +1 + (-1 for absent from b) = 0; 2: -1 + 1 = 0; 5: -1 (absent from a) + -1 = -2
    assert keys[0].tolist() == [1, 2, 5]
    np.testing.assert_allclose(scores[0], [0.0, 0.0, -2.0], atol=1e-6)


def test_fuse_modes_uses_per_mode_weights() -> None:
    dense, lexical = ranked([1, 2]), ranked([2, 3])
    _, keys = fuse_modes({"dense": dense, "lexical": lexical}, 3, FusionConfig(weights={"dense": 1.0, "lexical": 0.0}))
    assert keys[0].tolist() == [1, 2, -1]
    _, keys = fuse_modes({"dense": dense, "lexical": lexical}, 3, FusionConfig(weights={"dense": 0.0, "lexical": 1.0}))
    assert keys[0].tolist() == [2, 3, -1]


def test_several_queries_fuse_independently() -> None:
    a = (np.array([[2.0, 1.0], [2.0, 1.0]], np.float32), np.array([[1, 2], [3, 4]], np.int64))
    b = (np.array([[2.0, 1.0], [2.0, 1.0]], np.float32), np.array([[2, 1], [4, 9]], np.int64))
    _, keys = fuse([a, b], k=2)
    assert keys[0].tolist() == [1, 2] and keys[1].tolist() == [4, 3]


def test_bad_arguments() -> None:
    with pytest.raises(UsageError):
        fuse([ranked([1])], 1, method="borda")
    with pytest.raises(UsageError):
        fuse([ranked([1]), ranked([2])], 1, weights=[1.0])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(UsageError):
            FusionConfig(weights={"dense": bad})


def lexical_standout(second: float) -> tuple[np.ndarray, np.ndarray]:
    return ranked([9, 2, 3], [10.0, second, 1.0])


DENSE = ranked([1, 2, 3, 4], [0.9, 0.8, 0.7, 0.6])


def test_a_standout_bm25_hit_takes_rank_one() -> None:
    # 9 scores 50% above BM25's second: it leads, the rest keeps the fused order (dense in control)
    modes = {"dense": DENSE, "lexical": lexical_standout(5.0)}
    plain_scores, plain = fuse_modes(modes, 4, FusionConfig(lead_margin=None))
    scores, keys = fuse_modes(modes, 4)
    assert plain[0].tolist() == [1, 2, 3, 9] and keys[0].tolist() == [9, 1, 2, 3]
    assert scores[0, 1:].tolist() == plain_scores[0, :3].tolist() and scores[0, 0] > scores[0, 1]


def test_dense_stays_in_control_without_a_standout() -> None:
    close = {"dense": DENSE, "lexical": lexical_standout(9.0)}  # 10% above the second: below the 15% margin
    assert FusionConfig().lexical_leads(close["lexical"]).tolist() == [-1]
    np.testing.assert_array_equal(fuse_modes(close, 4)[1], fuse_modes(close, 4, FusionConfig(lead_margin=None))[1])
    assert fuse_modes(close, 4)[1][0, 0] == 1


def test_lead_rule_edges() -> None:
    config = FusionConfig()
    lexical = (
        np.array([[10.0, 5.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 7.0, 6.0], [3.0, 3.0, 0.0]], np.float32),
        np.array([[9, 2, -1], [8, -1, -1], [-1, -1, -1], [-1, 5, 6], [4, 7, -1]], np.int64),
    )
    # standout; the only hit; no hit; padding before the real hits (7 vs 6: 14% above); a tie
    assert config.lexical_leads(lexical).tolist() == [9, 8, -1, -1, -1]
    assert FusionConfig(lead_margin=0.1).lexical_leads(lexical).tolist() == [9, 8, -1, 5, -1]
    assert FusionConfig(lead_margin=None).lexical_leads(lexical).tolist() == [-1] * 5
    off = FusionConfig(weights={"dense": 1.0, "lexical": 0.0})
    assert off.lexical_leads(lexical).tolist() == [-1] * 5
    with pytest.raises(UsageError):
        FusionConfig(lead_margin=1.5)


def test_bm25_top_hit_leads_when_it_is_the_sole_full_match_and_the_rule_is_on() -> None:
    close = {"dense": DENSE, "lexical": lexical_standout(9.0)}  # 9 stands only 10% above BM25's second
    sole = FusionConfig(lead_sole_match=True)
    # 9 is the only document holding every query term: it leads, but only with the rule on (off by default)
    assert fuse_modes(close, 4, sole, np.array([9]))[1][0].tolist() == [9, 1, 2, 3]
    assert fuse_modes(close, 4, sole=np.array([9]))[1][0, 0] == 1
    # the sole full match is not BM25's top hit (2 is), or there is none: nothing leads
    assert fuse_modes(close, 4, sole, np.array([2]))[1][0, 0] == 1
    assert fuse_modes(close, 4, sole, np.array([-1]))[1][0, 0] == 1
    # --lead-margin off turns every lead off
    assert fuse_modes(close, 4, FusionConfig(lead_margin=None, lead_sole_match=True), np.array([9]))[1][0, 0] == 1


def test_lead_from_outside_the_top_k_and_empty_modes() -> None:
    dense = ranked([1, 2, 3], [0.9, 0.8, 0.7])
    lexical = ranked([7, -1, -1], [2.0, 0.0, 0.0])  # one hit, unknown to dense
    scores, keys = fuse_modes({"dense": dense, "lexical": lexical}, 2)
    assert keys[0].tolist() == [7, 1] and scores[0, 0] > scores[0, 1]
    # lexical found nothing: the dense order, untouched
    none = ranked([-1, -1], [0.0, 0.0])
    _, keys = fuse_modes({"dense": dense, "lexical": none}, 3)
    assert keys[0].tolist() == [1, 2, 3]
    # dense found nothing: BM25's hit alone
    _, keys = fuse_modes({"dense": ranked([-1, -1], [0.0, 0.0]), "lexical": lexical}, 3)
    assert keys[0].tolist() == [7, -1, -1]
    # no query at all
    empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
    assert fuse_modes({"dense": empty, "lexical": empty}, 3)[1].shape == (0, 3)
