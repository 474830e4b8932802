"""Review regressions for the BM25 side and hybrid fusion."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.fusion import FusionConfig, fuse_modes
from pipeline.lexical import LexicalIndex

pytest.importorskip("bm25s")


def test_tied_scores_are_cut_by_position_so_smaller_k_is_a_prefix() -> None:
    # 1,000 identical documents tie on every query term; the cut at k must keep the first positions, so `-k 5`
    # and `-k 10` agree on their common ranks (argpartition alone picked arbitrary tied documents)
    keys = np.arange(1000, dtype=np.int64) * 10 + 5
    index, _ = LexicalIndex.build([(keys, ["river bank"] * 1000)])
    results = {k: index.search(["river"], k)[1][0].tolist() for k in (1, 3, 5, 10, 50)}
    for k, found in results.items():
        assert found == keys[:k].tolist(), k
    allowed = keys[300:]
    _, filtered = index.search(["river"], 10, allowed)
    assert filtered[0].tolist() == keys[300:310].tolist()


def test_ties_below_a_higher_score_keep_the_higher_one_first() -> None:
    keys = np.arange(1000, dtype=np.int64)
    texts = ["river bank"] * 1000
    texts[450] = "river river bank"  # scores above the tied ones
    index, _ = LexicalIndex.build([(keys, texts)])
    scores, found = index.search(["river"], 4)
    assert found[0].tolist() == [450, 0, 1, 2]
    assert scores[0, 0] > scores[0, 1] == scores[0, 3]


def test_hybrid_lead_with_zero_margin_is_the_first_tied_document() -> None:
    keys = np.arange(1000, dtype=np.int64)
    index, _ = LexicalIndex.build([(keys, ["pump part"] * 1000)])
    lexical = index.search(["pump"], 10)
    dense = (np.array([[0.9, 0.8]], np.float32), np.array([[999, 998]], np.int64))
    _, fused = fuse_modes({"dense": dense, "lexical": lexical}, 3, FusionConfig(lead_margin=0.0))
    assert fused[0, 0] == 0
