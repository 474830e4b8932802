"""BEIR layout: corpus to Parquet, queries, graded qrels with header, unknown ids counted."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.beir import BeirFolder, check_qrels, load_qrels, load_queries, write_corpus_parquet
from pipeline.errors import DataError


def write_beir(root: Path, docs: list[dict[str, str]], queries: list[dict[str, str]], qrels: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(line + "\n" for line in qrels))
    return root


@pytest.fixture
def folder(tmp_path: Path) -> BeirFolder:
    docs = [
        {"_id": "d1", "title": "Paris", "text": "Capital of France.", "metadata": {}},
        {"_id": "d2", "title": "", "text": "  A river flows.  "},
        {"_id": "3", "title": "Only a title"},
    ]
    queries = [{"_id": "q1", "text": "french capital"}, {"_id": "q2", "text": "rivers"}]
    qrels = ["q1\td1\t2", "q1\td2\t0", "q2\td2\t1", "q2\tghost\t1", "q9\td1\t1"]
    return BeirFolder.of(write_beir(tmp_path / "tiny", docs, queries, qrels))


def test_corpus_to_parquet_joins_title_and_text(folder: BeirFolder, tmp_path: Path) -> None:
    rows = write_corpus_parquet(folder.corpus, tmp_path / "out" / "corpus.parquet", batch_rows=2)
    table = pq.read_table(tmp_path / "out" / "corpus.parquet")
    assert rows == 3 and table.column_names == ["doc_id", "title", "text"]
    assert table.column("doc_id").to_pylist() == ["d1", "d2", "3"]
    assert table.column("text").to_pylist() == ["Paris Capital of France.", "A river flows.", "Only a title"]


def test_queries_and_graded_qrels(folder: BeirFolder) -> None:
    assert load_queries(folder.queries) == {"q1": "french capital", "q2": "rivers"}
    qrels = load_qrels(folder.qrels)
    assert qrels["q1"] == {"d1": 2, "d2": 0}
    assert qrels["q2"] == {"d2": 1, "ghost": 1}


def test_unknown_ids_are_counted(folder: BeirFolder) -> None:
    check = check_qrels(load_qrels(folder.qrels), {"d1", "d2", "3"}, set(load_queries(folder.queries)))
    assert (check.judgements, check.unknown_docs, check.unknown_queries) == (5, 1, 1)
    message = check.message()
    assert message is not None and "ghost" in message and "q9" in message
    assert check_qrels({"q1": {"d1": 1}}, {"d1"}, {"q1"}).message() is None


def test_trec_qrels_and_bad_lines(tmp_path: Path) -> None:
    trec = tmp_path / "qrels.txt"
    trec.write_text("q1 0 d1 3\nq1 0 d2 0\n")
    assert load_qrels(trec) == {"q1": {"d1": 3, "d2": 0}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(DataError, match=r"bad\.tsv:2"):
        load_qrels(bad)
    twice = tmp_path / "twice.tsv"
    twice.write_text("q1\td1\t1\nq1\td1\t1\nq1\td1\t0\n")  # the same grade again is harmless
    with pytest.raises(DataError, match=r"twice\.tsv:3: .* judged twice, 1 and 0"):
        load_qrels(twice)


def test_bad_folders_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        BeirFolder.of(tmp_path / "none")
    root = write_beir(tmp_path / "dup", [{"_id": "a", "text": "x"}, {"_id": "a", "text": "y"}], [], ["q\ta\t1"])
    with pytest.raises(DataError, match="duplicate _id"):
        write_corpus_parquet(root / "corpus.jsonl", tmp_path / "dup.parquet")
    assert not (tmp_path / "dup.parquet").exists() and not list(tmp_path.glob(".dup.parquet*"))
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\nnot json\n')
    with pytest.raises(DataError, match=r"queries\.jsonl:2"):
        load_queries(root / "queries.jsonl")
    (root / "qrels" / "test.tsv").unlink()
    with pytest.raises(DataError, match="qrels"):
        BeirFolder.of(root)
