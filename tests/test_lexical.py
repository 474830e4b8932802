"""BM25 side: exact terms, filtered search still filling k, agreement with bm25s, save/load and corruption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import IndexCorruptError
from pipeline.lexical import LexicalConfig, LexicalIndex, build_lexical, docs_chunks, open_lexical
from tests.conftest import sample_texts

pytest.importorskip("bm25s")


def chunks(keys: np.ndarray, texts: list[str], size: int = 7) -> list[tuple[np.ndarray, list[str]]]:
    return [(keys[i : i + size], texts[i : i + size]) for i in range(0, len(texts), size)]


def corpus() -> tuple[np.ndarray, list[str]]:
    texts = sample_texts(40)
    texts[13] += " the flux capacitor model XQ-7731 ships today"
    texts[29] += " a capacitor bank"
    return np.arange(40, dtype=np.int64) * 10 + 5, texts


def test_exact_terms_rank_their_document_first() -> None:
    keys, texts = corpus()
    index, stats = LexicalIndex.build(chunks(keys, texts))
    scores, found = index.search(["flux capacitor", "xq 7731", "no such words here"], k=3)
    assert found[0, 0] == 135 and found[0, 1] == 295  # both words beat one word
    assert found[1, 0] == 135 and found[1, 1] == -1  # only one doc holds the code
    assert (found[2] == -1).all() and (scores[2] == 0).all()
    assert stats.docs == 40 and stats.vocab == len(index.vocab)


def test_scores_match_bm25s_own_indexing() -> None:
    import bm25s

    keys, texts = corpus()
    config = LexicalConfig(stemmer=None)
    index, _ = LexicalIndex.build(chunks(keys, texts, 9), config)
    reference = bm25s.BM25()
    reference.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    for query in ["river city music", "flux capacitor", "the bank of the river"]:
        tokens = [t for t in bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]]
        expected = reference.get_scores([t for t in tokens if t in reference.vocab_dict])
        got = index.retriever.get_scores_from_ids(index.analyzer.query_ids(query, index.vocab))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_filter_restricts_results_and_still_returns_k() -> None:
    # odd keys mention the word twice, so unfiltered they fill the top 5
    keys = np.arange(100, 120, dtype=np.int64)
    texts = [("river river bank" if k % 2 else "river bank garden") for k in keys]
    index, _ = LexicalIndex.build(chunks(keys, texts))
    _, unfiltered = index.search(["river"], k=5)
    assert all(k % 2 == 1 for k in unfiltered[0])
    allowed = keys[keys % 2 == 0]
    scores, found = index.search(["river"], k=5, allowed=allowed)
    assert len(found[0]) == 5 and set(found[0]) <= set(allowed.tolist())
    assert (scores[0] > 0).all()
    _, few = index.search(["river"], k=5, allowed=np.array([104, 999_999], dtype=np.int64))
    assert few[0].tolist() == [104, -1, -1, -1, -1]


def test_sole_match_is_the_only_document_holding_every_query_term() -> None:
    keys, texts = corpus()
    index, _ = LexicalIndex.build(chunks(keys, texts))
    queries = ["flux capacitor", "capacitor", "XQ-7731 ships", "flux unheardofword", "the of and", ""]
    # both words in 13 only; two docs hold "capacitor"; a code; a word no document has is ignored, as BM25
    # ignores it; only stopwords; nothing
    assert index.sole_matches(queries).tolist() == [135, -1, 135, 135, -1, -1]
    # a filter counts only the allowed documents: one of the two "capacitor" docs left, or neither
    assert index.sole_matches(["capacitor"], allowed=np.array([295], np.int64)).tolist() == [295]
    assert index.sole_matches(["flux capacitor"], allowed=np.array([295, 5], np.int64)).tolist() == [-1]


def test_sole_match_with_unsorted_keys_and_no_documents() -> None:
    keys = np.array([50, 10, 40, 20, 30], dtype=np.int64)
    index, _ = LexicalIndex.build([(keys, ["apple", "banana", "cherry", "apple banana", "cherry"])])
    assert index.sole_matches(["apple banana", "banana", "cherry", "apple"]).tolist() == [20, -1, -1, -1]
    empty, _ = LexicalIndex.build([])
    assert empty.sole_matches(["apple"]).tolist() == [-1]


def test_unsorted_keys_map_to_positions() -> None:
    keys = np.array([50, 10, 40, 20, 30], dtype=np.int64)
    texts = ["apple", "banana", "cherry", "apple banana", "cherry"]
    index, _ = LexicalIndex.build([(keys, texts)], LexicalConfig(stemmer=None))
    _, found = index.search(["cherry"], k=5, allowed=np.array([30, 10], dtype=np.int64))
    assert found[0].tolist() == [30, -1, -1, -1, -1]
    _, found = index.search(["apple"], k=2)
    assert sorted(found[0].tolist()) == [20, 50]


def test_save_load_round_trip_is_memory_mapped(tmp_path: Path) -> None:
    keys, texts = corpus()
    index, _ = LexicalIndex.build(chunks(keys, texts))
    stats = build_lexical(chunks(keys, texts), tmp_path / "lexical")
    assert stats.docs == 40
    loaded = open_lexical(tmp_path / "lexical")
    assert isinstance(loaded.keys, np.memmap) and isinstance(loaded.retriever.scores["data"], np.memmap)
    queries = ["flux capacitor", "river city", "football player bank"]
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    # a second save replaces the first atomically and leaves no temp folders behind
    build_lexical(chunks(keys[:5], texts[:5]), tmp_path / "lexical")
    assert open_lexical(tmp_path / "lexical").num_docs == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lexical"]


@pytest.mark.parametrize(
    "damage",
    ["missing_dir", "truncated_data", "no_keys", "bad_meta", "short_keys"],
)
def test_corrupt_or_missing_index_raises_one_line(tmp_path: Path, damage: str) -> None:
    keys, texts = corpus()
    path = tmp_path / "lexical"
    build_lexical(chunks(keys, texts), path)
    if damage == "missing_dir":
        path = tmp_path / "absent"
    elif damage == "truncated_data":
        data = path / "data.csc.index.npy"
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "no_keys":
        (path / "keys.npy").unlink()
    elif damage == "bad_meta":
        (path / "lexical.json").write_text("{not json")
    elif damage == "short_keys":
        np.save(path / "keys.npy", keys[:-1])
    with pytest.raises(IndexCorruptError) as info:
        open_lexical(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_docs_chunks_stream_a_duckdb_table_in_key_order(tmp_path: Path) -> None:
    import duckdb

    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    con.execute("CREATE TABLE docs (_key BIGINT, body VARCHAR)")
    con.execute("INSERT INTO docs SELECT 1000 - i, 'word' || i FROM range(25) t(i)")
    got = list(docs_chunks(con, "body", rows=10))
    keys = np.concatenate([k for k, _ in got])
    assert keys.tolist() == sorted(keys.tolist()) and len(keys) == 25
    assert got[0][1][0] == "word24"
    build_lexical(iter(got), tmp_path / "lex")
    _, found = open_lexical(tmp_path / "lex").search(["word3"], 2)
    assert found[0].tolist() == [997, -1]
