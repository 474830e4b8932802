"""Synthetic exact-token query sets: deterministic, order-independent, each query's unique word in one document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.beir import BeirFolder, iter_corpus, load_qrels, load_queries
from pipeline.errors import DataError, OutputExistsError, UsageError
from pipeline.lexical import term_function
from pipeline.lexical_sets import LexicalSetSpec, make_lexical_set, words
from tests.conftest import sample_texts
from tests.helpers import run
from tests.test_beir import write_beir

pytest.importorskip("bm25s")


def corpus_docs(n: int = 60) -> list[dict[str, str]]:
    texts = sample_texts(n, seed=5)
    # every document has a code of its own and a long word shared with four others (never a unique word)
    return [
        {"_id": f"d{i:03d}", "title": f"zx{i:04d}unit", "text": f"{t} partner{i // 10:02d}x{i % 2}"}
        for i, t in enumerate(texts)
    ]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "src", corpus_docs(), [{"_id": "q", "text": "x"}], ["q\td000\t1"])


def spec(**kw: int) -> LexicalSetSpec:
    return LexicalSetSpec(**{"queries": 12, "seed": 0, "fillers": 2, "filler_df": (2, 40), **kw})


def test_each_query_names_a_word_of_exactly_one_document_its_only_relevant_one(source: Path, tmp_path: Path) -> None:
    result = make_lexical_set(source, tmp_path / "out", spec())
    folder = BeirFolder.of(result.out)
    docs = {doc_id: words(text) for doc_id, _, text in iter_corpus(folder.corpus)}
    queries, qrels = load_queries(folder.queries), load_qrels(folder.qrels)
    assert result.queries == len(queries) == len(qrels) == 12 and result.docs == 60
    assert len({next(iter(j)) for j in qrels.values()}) == 12  # twelve different documents
    term = term_function()
    for qid, text in queries.items():
        assert list(qrels[qid].values()) == [1]
        (doc_id,) = qrels[qid]
        query_words = text.split()
        assert len(query_words) == 3 and set(query_words) <= docs[doc_id]
        unique = [w for w in query_words if sum(w in ws for ws in docs.values()) == 1]
        assert unique and any(len(w) >= 6 and not w.isdigit() for w in unique)
        assert len({term(w) for w in query_words}) == 3  # three distinct BM25 terms
    assert (result.out / "corpus.jsonl").read_bytes() == (source / "corpus.jsonl").read_bytes()
    assert json.loads((result.out / "lexical_set.json").read_text())["seed"] == 0


def test_same_draw_whatever_the_file_order_and_other_seeds_differ(source: Path, tmp_path: Path) -> None:
    shuffled = write_beir(tmp_path / "shuffled", corpus_docs()[::-1], [{"_id": "q", "text": "x"}], ["q\td000\t1"])
    a = make_lexical_set(source, tmp_path / "a", spec()).out
    b = make_lexical_set(shuffled, tmp_path / "b", spec()).out
    c = make_lexical_set(source, tmp_path / "c", spec(seed=1)).out
    assert (a / "queries.jsonl").read_text() == (b / "queries.jsonl").read_text()
    assert (a / "qrels" / "test.tsv").read_text() == (b / "qrels" / "test.tsv").read_text()
    assert (a / "queries.jsonl").read_text() != (c / "queries.jsonl").read_text()


def test_unique_word_alone_template(source: Path, tmp_path: Path) -> None:
    out = make_lexical_set(source, tmp_path / "alone", spec(fillers=0)).out
    assert all(len(text.split()) == 1 for text in load_queries(out / "queries.jsonl").values())


def test_refusals(source: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="only"):
        make_lexical_set(source, tmp_path / "big", spec(queries=500))
    assert not (tmp_path / "big").exists()
    for out in (source, source.parent, source / "inside"):  # --overwrite would delete the source
        with pytest.raises(UsageError, match="source"):
            make_lexical_set(source, out, spec(), overwrite=True)
    assert (source / "corpus.jsonl").is_file()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        make_lexical_set(source, tmp_path / "full", spec())
    make_lexical_set(source, tmp_path / "full", spec(), overwrite=True)
    assert not (tmp_path / "full" / "keep.txt").exists() and (tmp_path / "full" / "queries.jsonl").is_file()
    with pytest.raises(UsageError):
        LexicalSetSpec(queries=0)


def test_cli(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-set"
    result = run("eval", "make-lexical-set", source, out, "--queries", "5", "--seed", "3", "--template", "unique+1")
    assert result.exit_code == 0, result.output
    assert "5 queries written" in result.stdout
    assert all(len(t.split()) == 2 for t in load_queries(out / "queries.jsonl").values())
    again = run("eval", "make-lexical-set", source, out, "--queries", "5")
    assert again.exit_code == 1 and "--overwrite" in again.output  # as index and finetune on an existing output
