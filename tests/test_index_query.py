"""`bmsearch index` and `bmsearch query` end to end on a tiny model, through the CLI users run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import sample_texts
from tests.helpers import run, write_parquet

CATEGORIES = ["news", "sport", "science"]


def corpus_rows(n: int, start: int = 0) -> list[dict]:
    texts = sample_texts(n + start, seed=1)[start:]
    return [
        {"id": start + i, "text": t, "category": CATEGORIES[(start + i) % 3], "year": 2000 + (start + i) % 20}
        for i, t in enumerate(texts)
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict:
    root = tmp_path_factory.mktemp("built")
    data = write_parquet(root / "corpus.parquet", corpus_rows(120))
    result = run(
        "index",
        data,
        "--name",
        "docs",
        "--index-dir",
        root / "idx",
        "--model",
        tiny_model,
        "--id-column",
        "id",
        "--backend",
        "torch",
        "--json",
    )
    assert result.exit_code == 0, result.output
    return {"root": root, "data": data, "idx": root / "idx", "summary": json.loads(result.stdout)}


def test_index_summary_and_layout(built: dict) -> None:
    summary = built["summary"]
    assert summary["rows"] == 120 and summary["new"] == 120 and summary["encoded"] == 120
    assert summary["generation"] == 1
    index = built["idx"] / "docs"
    assert (index / "CURRENT").read_text().strip() == "gen-000001"
    assert {p.name for p in (index / "gen-000001").iterdir()} >= {"manifest.json", "metadata.duckdb", "vectors.faiss"}
    assert not (index / "work").exists() or not any((index / "work").iterdir())


def test_manifest_records_model_counts_sources(built: dict, tiny_model: Path) -> None:
    manifest = json.loads((built["idx"] / "docs" / "gen-000001" / "manifest.json").read_text())
    model = manifest["model"]
    assert model["path"] == str(tiny_model.resolve()) and model["content_hash"]
    assert (model["pooling"], model["dimension"], model["normalized"]) == ("mean", 32, True)
    assert model["max_seq_length"] > 0 and model["backend"] == "torch"
    assert manifest["counts"]["rows"] == 120
    assert manifest["sources"][0]["name"] == "corpus.parquet" and manifest["sources"][0]["size"] > 0
    assert manifest["bmsearch_version"] and manifest["created"]


def test_query_finds_exact_text_first_with_metadata(built: dict) -> None:
    target = corpus_rows(120)[37]
    result = run("query", target["text"], "--index-dir", built["idx"], "-k", "3", "--format", "json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == 37 and hits[0]["category"] == target["category"] and hits[0]["year"] == target["year"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_where_filter_returns_k_matching_rows(built: dict) -> None:
    result = run(
        "query",
        "anything at all",
        "--index-dir",
        built["idx"],
        "-k",
        "5",
        "--format",
        "jsonl",
        "--where",
        "category = 'science' AND year < 2005",
    )
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [r for r in corpus_rows(120) if r["category"] == "science" and r["year"] < 2005]
    assert len(expected) >= 5 and len(hits) == 5
    assert all(h["category"] == "science" and h["year"] < 2005 for h in hits)


def test_columns_and_csv_and_table_formats(built: dict) -> None:
    csv_out = run("query", "river", "--index-dir", built["idx"], "-k", "2", "--format", "csv", "--columns", "year")
    assert csv_out.stdout.splitlines()[0] == "rank,score,id,year"
    table = run("query", "river", "--index-dir", built["idx"], "-k", "2")
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split()[:3] == ["rank", "score", "id"]


def test_batch_queries_to_parquet_and_jsonl(built: dict, tmp_path: Path) -> None:
    queries = write_parquet(tmp_path / "q.parquet", [{"id": "q1", "text": "river city"}, {"id": "q2", "text": "bank"}])
    out = tmp_path / "hits.parquet"
    result = run("query", "--queries", queries, "--index-dir", built["idx"], "-k", "4", "--output", out)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pylist()
    assert len(table) == 8 and {r["query_id"] for r in table} == {"q1", "q2"}
    assert [r["rank"] for r in table if r["query_id"] == "q2"] == [1, 2, 3, 4]
    lines = tmp_path / "q.txt"
    lines.write_text("river city\n\nbank\n")
    jsonl = run("query", "--queries", lines, "--index-dir", built["idx"], "-k", "2")
    rows = [json.loads(x) for x in jsonl.stdout.splitlines()]
    assert [r["query_id"] for r in rows] == [0, 0, 2, 2]


def test_info_and_list(built: dict) -> None:
    info = run("info", "docs", "--index-dir", built["idx"])
    assert info.exit_code == 0 and "120" in info.stdout and "mean pooling, dim 32" in info.stdout
    listing = run("list", "--index-dir", built["idx"], "--json")
    assert json.loads(listing.stdout)[0]["name"] == "docs"


def test_rerun_is_a_fast_noop(built: dict, tiny_model: Path) -> None:
    args = [
        "index",
        built["data"],
        "--name",
        "docs",
        "--index-dir",
        built["idx"],
        "--model",
        tiny_model,
        "--id-column",
        "id",
    ]
    summary = json.loads(run(*args, "--json").stdout)
    assert summary["up_to_date"] and summary["new"] == 0 and summary["changed"] == 0 and summary["encoded"] == 0
    assert "0 new, 0 changed" in run(*args).stderr


def test_query_with_other_model_is_refused(built: dict, tmp_path: Path) -> None:
    from tests.conftest import build_tiny_bert

    other = build_tiny_bert(tmp_path / "other")
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(other)
    torch.nn.init.normal_(model.embeddings.word_embeddings.weight)
    model.save_pretrained(other)
    result = run("query", "river", "--index-dir", built["idx"], "--model", other)
    assert result.exit_code == 1
    assert "was built with model" in result.stderr and "other weights" in result.stderr


def test_corpus_as_arrow_string_ids(tmp_path: Path, tiny_model: Path) -> None:
    rows = pa.table({"doc_id": ["a", "b", "c"], "body": ["alpha river", "beta city", "gamma bank"]})
    data = write_parquet(tmp_path / "s.parquet", rows)
    result = run(
        "index",
        data,
        "--name",
        "s",
        "--index-dir",
        tmp_path / "idx",
        "--model",
        tiny_model,
        "--text-column",
        "body",
        "--id-column",
        "doc_id",
        "--backend",
        "torch",
        "-q",
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(run("query", "beta city", "--index-dir", tmp_path / "idx", "--format", "json", "-k", "1").stdout)
    assert hits[0]["id"] == "b" and hits[0]["body"] == "beta city"
