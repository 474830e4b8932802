"""Defects found running the `bmsearch bench` commands as an adopter would: index types the index benchmark
picks for an unusual --synthetic-dim, --quiet, the serve benchmark's cache across models, and its server
subprocess when the benchmark is terminated."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli


@pytest.mark.parametrize("dim", [8, 32, 100, 384, 512])
def test_index_bench_default_types_are_valid_for_any_dimension(dim: int) -> None:
    """`bench index --synthetic-dim 32` crashed: IVF-PQ64 needs a dimension that 64 divides."""
    import faiss

    from pipeline.bench_index import default_factories

    for factory in default_factories(200_000, dim):
        if factory is not None:
            faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


def test_index_bench_quiet_with_record_prints_nothing_on_stderr(tmp_path: Path) -> None:
    record = tmp_path / "bench.md"
    args = ["bench", "index", "--dataset", "synthetic", "--synthetic-n", "1000", "--synthetic-dim", "8"]
    args += ["--index-type", "Flat", "--latency-queries", "10", "--filter-queries", "10"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--quiet", "--record", str(record)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and "synthetic clustered 1000x8" in result.stdout
    assert "| synthetic clustered 1000x8 | Flat |" in record.read_text()


def _write_imdb(data_dir: Path, n: int) -> Path:
    from tests.test_bench_serve import write_imdb

    return write_imdb(data_dir, n)


def test_serve_bench_rebuilds_its_cached_index_for_another_model(tiny_model: Path, tmp_path: Path) -> None:
    """The cached index was reused for another --model, and the server then refused that model."""
    pytest.importorskip("fastapi")
    from pipeline.bench_serve import ServeBenchConfig, prepare_index
    from pipeline.layout import IndexPaths
    from pipeline.manifest import read_manifest
    from pipeline.model import resolve_model

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    config_file = other / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "bench_test": "other weights"}))
    config = ServeBenchConfig(
        rows=60, data_dir=_write_imdb(tmp_path / "data", 70), model=str(tiny_model), cache_dir=tmp_path / "cache"
    )
    config = replace(config, backend="torch")
    first = prepare_index(config)
    assert first["built_s"] is not None
    again = prepare_index(replace(config, model=str(other)))
    assert again["built_s"] is not None and again["model_path"] == str(other)
    manifest = read_manifest(IndexPaths.of(again["index_dir"], again["name"]).require_current())
    assert manifest["settings"]["model_weights"] == resolve_model(str(other)).fingerprint
    assert prepare_index(replace(config, model=str(other)))["built_s"] is None


def test_serve_bench_record_names_the_fewest_clients_it_compared_with() -> None:
    """With --clients 4,16 the record called the in-process figures "with one" and "the server's 1-client QPS"."""
    pytest.importorskip("fastapi")
    from pipeline.bench_serve import ServeBenchConfig, render_markdown, summarise

    config = ServeBenchConfig(clients=(4, 16), compare_unbatched=False)
    runs = [
        {"max_batch": 64, "clients": c, "requests": 10, "errors": 0, "qps": q, "p50_ms": 5.0, "p95_ms": 6.0}
        | {"p99_ms": 7.0, "mean_batch": 2.0, "server_cpu_ms": 1.0, "client_cpu_ms": 0.5}
        for c, q in ((4, 100.0), (16, 200.0))
    ]
    ceiling = [{"clients": 4, "queries": 8, "qps": 150.0}, {"clients": 16, "queries": 8, "qps": 300.0}]
    result = {
        "config": {"clients": [4, 16], "device": "cpu", "k": 10, "requests": 10, "warmup": 2, "max_batch": 64},
        "machine": {"cpu": "x", "cpu_count": 2, "python": "3"},
        "index": {"rows": 10, "model": "m", "index_type": "Flat"},
        "runs": runs,
        "ceiling": ceiling,
        "summary": summarise(runs, config, ceiling),
    }
    markdown = render_markdown(result, "bmsearch bench serve --clients 4,16")
    assert "2.0x its throughput with 4): 3.0x the server's 4-client QPS" in markdown
    assert "1-client" not in markdown and "with one" not in markdown


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_serve_bench_stops_its_server_when_terminated(tiny_model: Path, tmp_path: Path) -> None:
    """SIGTERM (`timeout`, a cancelled CI job) ended the benchmark and left `bmsearch serve` running."""
    pytest.importorskip("fastapi")
    import psutil

    data = _write_imdb(tmp_path / "data", 110)
    cmd = [sys.executable, "-m", "pipeline.cli", "bench", "serve", "--rows", "100", "--data-dir", str(data)]
    cmd += ["--model", str(tiny_model), "--backend", "torch", "--cache-dir", str(tmp_path / "cache")]
    cmd += ["--clients", "1", "--requests", "1000000", "--no-compare", "--ceiling-queries", "0", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    bench = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    servers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not servers and time.monotonic() < deadline and bench.poll() is None:
            servers = [c for c in psutil.Process(bench.pid).children() if "serve" in c.cmdline()]
            time.sleep(0.2)
        assert servers, bench.stderr.read().decode() if bench.poll() is not None and bench.stderr else "no server"
        time.sleep(1.0)  # into the load loop
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
        deadline = time.monotonic() + 10
        while _alive(servers[0].pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(servers[0].pid)
        assert bench.returncode != 0
    finally:
        for proc in [*servers]:
            if _alive(proc.pid):
                proc.kill()
        if bench.poll() is None:
            bench.kill()
            bench.wait()


def test_encode_bench_quality_checks_its_data_before_the_run(tiny_model: Path, tmp_path: Path) -> None:
    args = ["bench", "encode", "--corpus", "synthetic", "--rows", "20", "--model", str(tiny_model)]
    result = CliRunner().invoke(cli, [*args, "--backend", "torch", "--quality", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 1 and "BEIR folder" in result.stderr and "does not exist" in result.stderr
    assert result.stdout == ""  # refused up front: no throughput run whose figures are then thrown away
