"""The scheduled-run and memory benchmarks measure real runs and record them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run


def test_bench_incremental_measures_three_real_runs(tiny_model: Path, tmp_path: Path) -> None:
    record = tmp_path / "bench.md"
    result = run(
        "bench",
        "incremental",
        "--model",
        tiny_model,
        "--rows",
        "300",
        "--backend",
        "torch",
        "--data-dir",
        tmp_path / "no-data",
        "--json",
        "--record",
        record,
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    runs = out["runs"]
    assert (runs["full"]["encoded"], runs["incremental"]["encoded"], runs["noop"]["encoded"]) == (300, 3, 0)
    assert runs["incremental"]["new"] == 3 and runs["noop"]["up_to_date"]
    assert out["incremental_ratio"] == runs["incremental"]["wall_s"] / runs["full"]["wall_s"]
    text = record.read_text()
    assert text.startswith("# Benchmarks") and "| incremental | 303 | 3 |" in text


def test_bench_incremental_with_changed_rows(tiny_model: Path, tmp_path: Path) -> None:
    record = tmp_path / "bench.md"
    args = ["--model", tiny_model, "--rows", "300", "--backend", "torch", "--data-dir", tmp_path / "no-data"]
    result = run("bench", "incremental", *args, "--changed-fraction", "0.02", "--json", "--record", record)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    incremental = out["runs"]["incremental"]
    assert out["changed"] == 6 and (incremental["new"], incremental["changed"], incremental["encoded"]) == (3, 6, 9)
    assert "+3 rows (1%), 6 changed (2%), no-op" in record.read_text() and "index Flat" in record.read_text()


def test_bench_memory_measures_child_processes(tiny_model: Path, tmp_path: Path) -> None:
    result = run(
        "bench", "memory", "--rows", "200,400", "--model", tiny_model, "--data-dir", tmp_path / "none", "--json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["rows"] for r in out["runs"]] == [200, 400]
    assert all(r["peak_rss_mb"] > 50 and r["summary"]["rows"] == r["rows"] for r in out["runs"])
    assert out["ratio"] == out["runs"][1]["peak_rss_mb"] / out["runs"][0]["peak_rss_mb"]
