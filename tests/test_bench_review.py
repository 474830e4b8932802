"""Measurement defects found in review: each benchmark measures and records what it says."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import bench_incremental, bench_memory, bench_serve


class _Stop(Exception):
    pass


def test_load_qps_and_latency_count_only_answered_requests() -> None:
    """A fast error is no throughput: QPS and percentiles are of the 200s, the rest are errors."""
    from aiohttp import web

    from pipeline.bench_serve import _load, free_port

    seen = 0

    async def search(request: web.Request) -> web.Response:
        nonlocal seen
        seen += 1
        if seen % 2:
            return web.Response(status=503)
        await asyncio.sleep(0.05)
        return web.json_response({"results": []})

    async def main() -> dict[str, Any]:
        app = web.Application()
        app.router.add_post("/search", search)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await _load(f"http://127.0.0.1:{port}", ["q"], clients=2, requests=20, k=10, time_limit_s=30)
        finally:
            await runner.cleanup()

    out = asyncio.run(main())
    assert (out["requests"], out["errors"], out["error_kinds"]) == (20, 10, {"503": 10})
    assert out["p50_ms"] >= 50  # the 503s took about nothing
    assert out["qps"] == pytest.approx(10 / out["seconds"], rel=0.02)


def test_serve_records_the_load_average_before_the_build_and_the_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(bench_serve, "machine_info", lambda: calls.append("machine") or {})

    def prepare(*args: Any) -> dict[str, Any]:
        calls.append("prepare")
        raise _Stop

    monkeypatch.setattr(bench_serve, "prepare_index", prepare)
    with pytest.raises(_Stop):
        bench_serve.run_serve_bench(bench_serve.ServeBenchConfig(rows=10))
    assert calls == ["machine", "prepare"]


class _Summary:
    def __init__(self, name: str) -> None:
        self.name = name

    def to_dict(self) -> dict[str, Any]:
        return {"rows": 1, "encoded": 1, "name": self.name}


def test_incremental_full_build_does_not_alone_pay_first_time_costs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The three runs share a process: the first build (imports, first model load) must be untimed."""
    calls: list[str] = []

    def build(options: Any, *args: Any) -> _Summary:
        if not calls:
            time.sleep(0.5)  # what importing torch, transformers and faiss costs, scaled down
        calls.append(options.name)
        return _Summary(options.name)

    monkeypatch.setattr(bench_incremental, "build_index", build)
    monkeypatch.setattr(bench_incremental, "machine_info", lambda: calls.append("machine") or {"cpu": "x"})
    out = bench_incremental.run_incremental_bench("model", 200, tmp_path / "no-data", work_dir=tmp_path)
    assert calls == ["machine", "warm-up", "bench", "bench", "bench"]
    assert out["runs"]["full"]["wall_s"] < 0.25
    assert out["machine"]["cpu"] == "x" and "gpu" in out["machine"]


def test_memory_records_the_load_average_before_the_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(bench_memory, "machine_info", lambda: calls.append("machine") or {"cpu": "x"})
    monkeypatch.setattr(bench_memory, "gpu_name", lambda load=False: "Some GPU")

    def child(data: Path, root: Path, model: str, backend: str) -> dict[str, Any]:
        calls.append("index")
        return {"peak_rss_mb": 100.0, "seconds": 1.0, "summary": {"index_type": "Flat"}}

    monkeypatch.setattr(bench_memory, "_index_peak_rss", child)
    out = bench_memory.run_memory_bench([10, 20], tmp_path / "no-data", model="m")
    assert calls == ["machine", "index", "index"]
    m = {"cores": 2, "ram_gb": 1, "load_avg_at_start": [0.1], **out["machine"]}
    text = bench_memory.markdown_section({**out, "machine": m}, "bmsearch bench memory")
    assert "GPU Some GPU" in text and "no GPU" not in text


def test_index_record_states_how_recall_is_measured() -> None:
    from pipeline.bench_index import markdown_section

    m = {"cpu": "x", "cores": 2, "ram_gb": 1, "numpy": "2", "load_avg_at_start": [0.1]}
    text = markdown_section({"machine": m, "rows": []}, "bmsearch bench index")
    assert "held out of the index" in text and "self excluded" not in text
