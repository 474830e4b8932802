"""Benchmark of scheduled runs: a full build, a 1% incremental run and a no-op run of `bmsearch index`."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.bench_common import gpu_name, machine_info
from pipeline.bench_index import imdb_sentences
from pipeline.build import build_index
from pipeline.config import BuildOptions
from pipeline.encode import EncoderConfig


def corpus_texts(data_dir: Path, n: int) -> tuple[list[str], str]:
    """n real IMDB sentences when the shared data is there, else generated text; and which it was."""
    imdb = data_dir / "imdb" / "aclImdb_reviews.jsonl.gz"
    if imdb.is_file():
        return imdb_sentences(imdb, n), f"first {n} distinct IMDB sentences"
    import random

    rng = random.Random(0)
    words = [
        "the",
        "a",
        "search",
        "index",
        "vector",
        "query",
        "river",
        "city",
        "music",
        "film",
        "bank",
        "market",
        "team",
        "game",
        "court",
        "law",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(n)], "synthetic text"


def _write(path: Path, texts: list[str], start: int) -> None:
    pq.write_table(pa.table({"id": list(range(start, start + len(texts))), "text": texts}), path)


def run_incremental_bench(
    model: str,
    n: int,
    data_dir: Path,
    backend: str = "auto",
    new_fraction: float = 0.01,
    work_dir: Path | None = None,
    changed_fraction: float = 0.0,
) -> dict[str, Any]:
    """Time a full build of n rows, a re-run with n * new_fraction rows added in a new file (and
    n * changed_fraction of the first rows' texts edited, evenly spread), and a no-op.

    The three runs share this process, so an untimed build of a few rows goes first: otherwise the full
    build alone would pay the imports (torch, transformers, faiss: seconds) and the first model load.
    """
    machine = machine_info()  # before the builds load the machine
    added = max(1, int(n * new_fraction))
    changed = int(n * changed_fraction)
    texts, what = corpus_texts(data_dir, n + added)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        root = Path(tmp)
        (root / "src").mkdir()
        _write(root / "src" / "part-0.parquet", texts[:n], 0)
        options = BuildOptions(
            sources=[str(root / "src")],
            name="bench",
            index_dir=root / "idx",
            model=model,
            id_column="id",
            encoder=EncoderConfig(backend=backend),
        )
        (root / "warm").mkdir()
        _write(root / "warm" / "part-0.parquet", texts[: min(n, 16)], 0)
        build_index(replace(options, sources=[str(root / "warm")], name="warm-up"))
        runs: dict[str, Any] = {}
        t0 = time.perf_counter()
        runs["full"] = build_index(options).to_dict()
        runs["full"]["wall_s"] = time.perf_counter() - t0
        _write(root / "src" / "part-1.parquet", texts[n:], n)
        if changed:
            edited = list(texts[:n])
            for i in range(0, n, n // changed)[:changed]:
                edited[i] += " (edited)"
            _write(root / "src" / "part-0.parquet", edited, 0)
        t0 = time.perf_counter()
        runs["incremental"] = build_index(options).to_dict()
        runs["incremental"]["wall_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        runs["noop"] = build_index(options).to_dict()
        runs["noop"]["wall_s"] = time.perf_counter() - t0
    full = runs["full"]["wall_s"]
    return {
        "rows": n,
        "added": added,
        "changed": changed,
        "corpus": what,
        "model": model,
        "backend": backend,
        "machine": {**machine, "gpu": gpu_name()},
        "runs": runs,
        "incremental_ratio": runs["incremental"]["wall_s"] / full,
        "noop_ratio": runs["noop"]["wall_s"] / full,
    }


def markdown_section(result: dict[str, Any], command: str) -> str:
    m = result["machine"]
    changed = result.get("changed", 0)
    edits = f", {changed} changed ({changed / result['rows']:.0%})" if changed else ""
    lines = [
        f"## Scheduled runs: full build, +{result['added']} rows ({result['added'] / result['rows']:.0%}){edits}, "
        "no-op",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, GPU {m.get('gpu') or 'none'}; "
        f"load average at start {m['load_avg_at_start']}  ",
        f"Corpus: {result['corpus']}; model `{result['model']}`, backend {result['backend']}; "
        f"index {result['runs']['full'].get('index_type', '-')}; the three runs in one process, after an "
        "untimed build of a few rows (imports and the first model load are in none of them)",
        "",
        "| run | rows | encoded | wall s | ingest s | encode s | index s | lexical s | share of full |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    full = result["runs"]["full"]["wall_s"]
    for name in ("full", "incremental", "noop"):
        r = result["runs"][name]
        t = r.get("timings", {})
        lines.append(
            f"| {name} | {r['rows']} | {r['encoded']} | {r['wall_s']:.1f} | {t.get('ingest_s', 0):.1f} | "
            f"{t.get('encode_s', 0):.1f} | {t.get('index_s', 0):.1f} | {t.get('lexical_s', 0):.1f} | "
            f"{r['wall_s'] / full:.1%} |"
        )
    return "\n".join(lines) + "\n"
