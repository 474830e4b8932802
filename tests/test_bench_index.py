"""Index benchmark: data generation, sentence splitting, measured rows, CLI output and the markdown record."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import bench_common, bench_index
from pipeline.cli import cli

pytest.importorskip("faiss")


def test_synthetic_is_normalised_clustered_and_deterministic() -> None:
    a = bench_index.synthetic_clustered(5000, 32, centers=20, chunk=1000)
    b = bench_index.synthetic_clustered(5000, 32, centers=20, chunk=1000)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # clustered: a vector's nearest other vector is far closer than a random pair
    sims = a[:200] @ a.T
    sims[np.arange(200), np.arange(200)] = -1
    assert sims.max(axis=1).mean() > 0.5 > abs(float((a[:200] @ a[200:400].T).mean()))


def test_imdb_sentences_strip_breaks_and_dedupe(tmp_path: Path) -> None:
    path = tmp_path / "reviews.jsonl.gz"
    rows = [
        {"text": "Great film. Loved it a lot!<br /><br />Would watch again today."},
        {"text": "Great film. Short. Another distinct sentence here?"},
    ]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows))
    got = bench_index.imdb_sentences(path, 10)
    assert got == ["Loved it a lot!", "Would watch again today.", "Another distinct sentence here?"]
    assert bench_index.imdb_sentences(path, 2) == got[:2]


def test_bench_vectors_rows_are_measured() -> None:
    x = bench_index.synthetic_clustered(6000, 32, centers=30)
    rows = bench_index.bench_vectors("t", x, ["Flat", "IVF16,Flat"], latency_queries=60, filter_queries=20)
    assert [r["index"] for r in rows] == ["Flat", "IVF16,Flat"]
    flat, ivf = rows
    assert flat["recall_at_10"] == 1.0 and flat["search_params"] == {}
    assert 0.95 <= ivf["recall_at_10"] <= 1.0 and "nprobe" in ivf["search_params"]
    for r in rows:
        assert r["index_mb"] > 0 and r["peak_rss_mb"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert r["filter1%_bad_rows"] == 0 and r["filter50%_bad_rows"] == 0


def test_cli_json_and_record_appends(tmp_path: Path) -> None:
    record = tmp_path / "benchmarks.md"
    record.write_text("# Benchmarks\n\n## Encoder (someone else's)\n\nkeep me\n")
    args = [
        "bench",
        "index",
        "--dataset",
        "synthetic",
        "--synthetic-n",
        "3000",
        "--synthetic-dim",
        "16",
        "--index-type",
        "auto",
        "--latency-queries",
        "20",
        "--filter-queries",
        "10",
        "--json",
        "--record",
        str(record),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["rows"][0]["index"] == "auto: Flat"
    text = record.read_text()
    assert text.startswith("# Benchmarks\n\n## Encoder (someone else's)\n\nkeep me\n")
    assert "## Index benchmark" in text and "| synthetic clustered 3000x16 | auto: Flat |" in text


def test_cli_bad_index_type_is_one_line_error() -> None:
    args = [
        "bench",
        "index",
        "--dataset",
        "synthetic",
        "--synthetic-n",
        "2000",
        "--synthetic-dim",
        "8",
        "--index-type",
        "IVF8,Nonsense",
        "--quiet",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error: invalid index type") and result.output.count("\n") == 1


def test_append_record_creates_file(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "benchmarks.md"
    bench_common.append_record(path, "## A\n")
    bench_common.append_record(path, "## B\n")
    assert path.read_text() == "# Benchmarks\n\n## A\n\n## B\n"


def test_imdb_embeddings_cache_and_resume(tmp_path: Path, tiny_model: Path) -> None:
    path = tmp_path / "reviews.jsonl.gz"
    texts = [f"Sentence number {i} about the film." for i in range(20)]
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"text": " ".join(texts)}))
    cache = tmp_path / "cache"
    parts = cache / "imdb_minilm_12.parts"
    parts.mkdir(parents=True)
    sentinel = np.full((8, 32), 0.5, dtype=np.float32)
    np.save(parts / "000000000_8.npy", sentinel)  # a chunk left by an interrupted run
    out = bench_index.imdb_embeddings(path, 12, cache, model_dir=str(tiny_model), chunk=8)
    assert out.shape == (12, 32)
    assert np.array_equal(out[:8], sentinel)  # resumed, not re-encoded
    assert np.allclose(np.linalg.norm(out[8:], axis=1), 1.0, atol=1e-5)
    assert not parts.exists() and (cache / "imdb_minilm_12.npy").is_file()
    again = bench_index.imdb_embeddings(path, 12, cache, model_dir="/nonexistent")  # served from the cache
    assert np.array_equal(np.asarray(again), out)


def test_default_factories_weigh_the_automatic_choice_against_the_others() -> None:
    from pipeline.bench_index import default_factories

    # 200k x 384: auto is HNSW32, so HNSW32 is not listed twice
    assert default_factories(200_000, 384) == ["Flat", None, "IVF1024,Flat", "IVF1024,PQ64"]
    # 2M: auto is IVF-Flat, and HNSW32 is the alternative
    assert default_factories(2_000_000, 384) == ["Flat", None, "HNSW32", "IVF2048,PQ64"]
