"""Benchmark of memory bounds: peak RSS of a real `bmsearch index` process at two corpus sizes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.bench_common import gpu_name, machine_info
from pipeline.bench_encode import build_arch
from pipeline.bench_incremental import corpus_texts


def _index_peak_rss(data: Path, root: Path, model: str, backend: str) -> dict[str, Any]:
    """Run `bmsearch index` in a child process; its own peak RSS comes from wait4."""
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "index",
        str(data),
        "--name",
        "mem",
        "--index-dir",
        str(root),
        "--model",
        model,
        "--backend",
        backend,
        "--id-column",
        "id",
        "-q",
        "--json",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"bmsearch index failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    import json

    return {"peak_rss_mb": usage.ru_maxrss / 1024, "seconds": seconds, "summary": json.loads(out)}


def run_memory_bench(
    sizes: list[int], data_dir: Path, model: str | None = None, arch: str = "bert-tiny", backend: str = "torch"
) -> dict[str, Any]:
    """Index each corpus size from scratch in its own process and compare peak RSS."""
    machine = machine_info()  # before the runs load the machine
    runs = []
    with tempfile.TemporaryDirectory(prefix="bmsearch-mem-") as tmp:
        root = Path(tmp)
        model_path = model or str(build_arch(arch, root / "model"))
        texts, what = corpus_texts(data_dir, max(sizes))
        for n in sizes:
            data = root / f"corpus-{n}.parquet"
            pq.write_table(pa.table({"id": list(range(n)), "text": texts[:n]}), data, row_group_size=65_536)
            result = _index_peak_rss(data, root / f"idx-{n}", model_path, backend)
            runs.append({"rows": n, **result})
            data.unlink()
    return {
        "corpus": what,
        "model": model or f"random {arch}",
        "backend": backend,
        "machine": {**machine, "gpu": gpu_name(load=True)},  # the child indexes on it when there is one
        "runs": runs,
        "ratio": runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"],
    }


def markdown_section(result: dict[str, Any], command: str) -> str:
    m = result["machine"]
    lines = [
        "## Memory: peak RSS of `bmsearch index` against corpus size",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, GPU {m.get('gpu') or 'none'}; "
        f"load average at start {m['load_avg_at_start']}  ",
        f"Corpus: {result['corpus']}; model {result['model']}, backend {result['backend']}; each size indexed "
        "from scratch in its own process (peak RSS from wait4)",
        "",
        "| rows | peak RSS MiB | seconds | index |",
        "|---|---|---|---|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['rows']} | {run['peak_rss_mb']:.0f} | {run['seconds']:.0f} | {run['summary']['index_type']} |"
        )
    lines += ["", f"Peak RSS ratio, largest to smallest: {result['ratio']:.2f}x (target: within 2x)."]
    return "\n".join(lines) + "\n"
