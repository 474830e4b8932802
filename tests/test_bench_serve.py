"""`bmsearch bench serve`: the summary and its targets, the in-process ceiling, and a whole run against a real
server subprocess over a small IMDB-shaped file with the tiny model."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.bench_serve import (
    ServeBenchConfig,
    first_sentence,
    mean_batch_size,
    pipeline_ceiling,
    prepare_index,
    render_markdown,
    render_text,
    run_serve_bench,
    serve_command,
    summarise,
)
from tests.conftest import sample_texts
from tests.helpers import run

pytest.importorskip("fastapi")


def write_imdb(data_dir: Path, n: int) -> Path:
    """An IMDB-shaped reviews file: two sentences per review (the first is indexed, the second queried)."""
    path = data_dir / "imdb" / "aclImdb_reviews.jsonl.gz"
    path.parent.mkdir(parents=True)
    texts = sample_texts(2 * n, seed=3)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i in range(n):
            review = f"{texts[2 * i]}.<br /><br />{texts[2 * i + 1]}!"
            fh.write(json.dumps({"_id": f"r{i}", "text": review, "label": i % 2, "rating": 1 + i % 10}) + "\n")
    return data_dir


def run_row(max_batch: int, clients: int, qps: float, errors: int = 0) -> dict[str, Any]:
    return {"max_batch": max_batch, "clients": clients, "qps": qps, "p50_ms": 1000 / qps, "errors": errors}


def test_first_sentence_drops_tags_and_cuts_words() -> None:
    assert first_sentence("A <b>fine</b> film.  Second one!") == "A fine film."
    assert first_sentence("one two three four", words=2) == "one two"


def test_mean_batch_size_reads_the_histogram() -> None:
    text = "bmsearch_batch_size_sum 30\nbmsearch_batch_size_count 4\n"
    assert mean_batch_size(text) == 7.5
    assert mean_batch_size("bmsearch_batch_size_count 0\n") is None


def test_serve_command_passes_threads_and_gc_freeze() -> None:
    plain = serve_command("idx", "docs", "m", 8123, 64, ServeBenchConfig(max_wait_ms=5.0))
    assert "--threads" not in plain and "--gc-freeze" in plain
    assert plain[plain.index("--port") + 1] == "8123" and plain[plain.index("--index") + 1] == "docs"
    assert "--workers" not in plain and plain[plain.index("--max-wait-ms") + 1] == "5.0"
    assert "--max-wait-ms" not in serve_command("idx", "docs", "m", 8123, 64, ServeBenchConfig())  # its default
    tuned = serve_command(
        "idx", "docs", "m", 8123, 1, ServeBenchConfig(max_wait_ms=0.0, threads=1, gc_freeze=False, workers=3)
    )
    assert tuned[tuned.index("--threads") + 1] == "1" and "--no-gc-freeze" in tuned
    assert tuned[tuned.index("--max-batch") + 1] == "1" and tuned[tuned.index("--workers") + 1] == "3"
    assert "--http" not in tuned and "--loop" not in tuned
    baseline = serve_command("idx", "docs", "m", 8123, 64, ServeBenchConfig(http="h11", loop="asyncio"))
    assert baseline[baseline.index("--http") + 1] == "h11" and baseline[baseline.index("--loop") + 1] == "asyncio"


def test_summary_scaling_batching_gain_and_ceiling() -> None:
    config = ServeBenchConfig(clients=(1, 16), max_batch=64)
    runs = [run_row(64, 1, 50), run_row(64, 16, 160), run_row(1, 1, 48), run_row(1, 16, 80)]
    ceiling = [{"clients": 1, "queries": 64, "qps": 100.0}, {"clients": 16, "queries": 64, "qps": 200.0}]
    s = summarise(runs, config, ceiling)
    assert s["scaling"] == 3.2
    assert s["target_scaling_3x_no_errors"] is True
    assert s["target_p50_under_30ms"] is True
    assert s["batching_gain_by_clients"] == {"1": 1.04, "16": 2.0}
    assert (s["ceiling_qps"], s["ceiling_clients"], s["ceiling_scaling"]) == (200.0, 16, 4.0)
    assert s["in_process_scaling"] == 2.0


def test_summary_target_fails_on_errors_or_low_scaling() -> None:
    config = ServeBenchConfig(clients=(1, 16), compare_unbatched=False)
    assert (
        summarise([run_row(64, 1, 50), run_row(64, 16, 160, errors=1)], config)["target_scaling_3x_no_errors"] is False
    )
    low = summarise([run_row(64, 1, 50), run_row(64, 16, 100)], config)
    assert (low["scaling"], low["target_scaling_3x_no_errors"]) == (2.0, False)
    assert "ceiling_scaling" not in low


@pytest.fixture(scope="module")
def bench_setup(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ServeBenchConfig, dict[str, Any]]:
    root = tmp_path_factory.mktemp("bench-serve")
    config = ServeBenchConfig(
        rows=120,
        data_dir=write_imdb(root / "data", 130),
        model=str(tiny_model),
        cache_dir=root / "cache",
        clients=(1, 3),
        requests=12,
        warmup=2,
        backend="torch",
        compare_unbatched=False,
        ceiling_queries=12,
        threads=1,
    )
    return config, prepare_index(config)


def test_prepare_index_builds_once_then_reuses(bench_setup: tuple[ServeBenchConfig, dict[str, Any]]) -> None:
    config, index = bench_setup
    assert index["rows"] == 120 and index["name"] == "imdb-sentences-120"
    assert len(index["queries"]) >= 100
    again = prepare_index(config)
    assert again["built_s"] is None and again["rows"] == 120


def test_another_index_type_is_rebuilt_from_the_cached_embeddings(
    bench_setup: tuple[ServeBenchConfig, dict[str, Any]],
) -> None:
    from dataclasses import replace

    config, index = bench_setup
    assert index["index_type"] == "Flat"  # the automatic choice for 120 rows
    ivf = prepare_index(replace(config, index_type="IVF4,Flat"))
    assert ivf["built_s"] is not None and ivf["index_type"] == "IVF4,Flat" and ivf["name"] == index["name"]
    (config.cache_dir / "serve" / f"{index['name']}.parquet").unlink()  # a cache cleaned by hand
    back = prepare_index(config)  # the automatic choice again
    assert back["built_s"] is not None and back["index_type"] == "Flat"
    assert prepare_index(config)["built_s"] is None


def test_a_bad_index_type_is_one_line_and_keeps_the_cached_index(
    bench_setup: tuple[ServeBenchConfig, dict[str, Any]],
) -> None:
    from dataclasses import replace

    from pipeline.errors import IndexBuildError

    config, index = bench_setup
    with pytest.raises(IndexBuildError, match="invalid index type") as err:
        prepare_index(replace(config, index_type="IVF-nonsense"))
    assert "\n" not in str(err.value)
    kept = prepare_index(config)
    assert kept["built_s"] is None and kept["index_type"] == index["index_type"] and kept["rows"] == 120


def test_pipeline_ceiling_runs_every_client_count(bench_setup: tuple[ServeBenchConfig, dict[str, Any]]) -> None:
    config, index = bench_setup
    out = pipeline_ceiling(index, index["queries"], config, (1, 4))
    assert [c["clients"] for c in out] == [1, 4]
    assert all(c["queries"] == 12 and c["qps"] > 0 for c in out)


def test_whole_run_against_a_server_subprocess(bench_setup: tuple[ServeBenchConfig, dict[str, Any]]) -> None:
    config, _ = bench_setup
    result = run_serve_bench(config)
    assert [(r["clients"], r["requests"], r["errors"]) for r in result["runs"]] == [(1, 12, 0), (3, 12, 0)]
    assert all(r["server_cpu_ms"] > 0 and r["client_cpu_ms"] > 0 for r in result["runs"])
    assert [c["clients"] for c in result["ceiling"]] == [1, 3]
    assert result["summary"]["ceiling_scaling"] > 0
    text = render_text(result)
    assert "in process (the server's batcher" in text and "throughput 3 vs 1 client(s)" in text
    markdown = render_markdown(result, "bmsearch bench serve ...")
    assert "| 64 | 3 | 12 | 0 |" in markdown and "without HTTP" in markdown
    assert "thread(s), wait" in markdown and "aiohttp" in markdown


def test_hybrid_mode_adds_a_bm25_side_and_serves_hybrid_requests(
    bench_setup: tuple[ServeBenchConfig, dict[str, Any]],
) -> None:
    from dataclasses import replace

    from pipeline.layout import IndexPaths

    config, _ = bench_setup
    hybrid = replace(config, mode="hybrid", clients=(2,), ceiling_queries=6)
    built = prepare_index(hybrid)
    generation = IndexPaths.of(Path(built["index_dir"]), built["name"]).require_current()
    assert built["built_s"] is not None and (generation / "lexical").is_dir() and built["rows"] == 120
    assert prepare_index(config)["built_s"] is None  # a BM25 side is kept for dense runs too
    result = run_serve_bench(hybrid)
    assert [(r["clients"], r["requests"], r["errors"]) for r in result["runs"]] == [(2, 12, 0)]
    assert result["ceiling"][0]["queries"] == 6
    assert "hybrid search" in render_markdown(result, "bmsearch bench serve --mode hybrid")


def test_cli_rejects_bad_client_counts() -> None:
    result = run("bench", "serve", "--clients", "1,x")
    assert result.exit_code == 2 and "comma-separated" in result.output


def test_cli_without_the_imdb_file_says_so(tmp_path: Path) -> None:
    result = run("bench", "serve", "--data-dir", tmp_path, "--cache-dir", tmp_path / "cache", "--quiet")
    assert result.exit_code == 1
    assert "aclImdb_reviews.jsonl.gz is absent" in result.output and "--data-dir" in result.output
    assert not (tmp_path / "cache").exists()
