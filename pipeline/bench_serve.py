"""Server load test: a cached IMDB-sentence index, a local `bmsearch serve` subprocess and asyncio aiohttp clients."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pipeline.bench_common import default_model, machine_info, shared_data_dir
from pipeline.errors import DataError, UsageError
from pipeline.progress import NoProgress, Progress

if TYPE_CHECKING:
    from pipeline.server import BatchPlan

IMDB_FILE = Path("imdb") / "aclImdb_reviews.jsonl.gz"
SENTENCE_WORDS = 24  # about 32 word-piece tokens for English prose
_SPLIT = re.compile(r"(?<=[.!?])\s+")
_TAGS = re.compile(r"<[^>]+>")


@dataclass
class ServeBenchConfig:
    """What `bmsearch bench serve` measures."""

    rows: int = 100_000
    data_dir: Path | None = None
    model: str | None = None  # None: the packaged all-MiniLM-L6-v2
    cache_dir: Path = Path(".bench")
    clients: tuple[int, ...] = (1, 16)
    requests: int = 1000  # per (max_batch, clients) run, after the warm-up (16 clients: a few seconds)
    warmup: int = 20
    k: int = 10
    mode: str = "dense"  # the requests' search mode; lexical and hybrid give the benchmark index a BM25 side
    max_batch: int = 64
    max_wait_ms: float | None = None  # the server's --max-wait-ms (None: its default)
    compare_unbatched: bool = True  # also run with --max-batch 1
    device: str = "cpu"
    backend: str = "auto"  # encoder backend of the benchmark index (and so of the server's queries)
    threads: int | None = None  # the server's --threads (None: its default)
    workers: int | None = None  # the server's --workers (None: its default)
    http: str = "auto"  # the server's --http
    loop: str = "auto"  # the server's --loop
    index_type: str | None = None  # FAISS factory of the benchmark index (None: the automatic choice)
    time_limit_s: float = 300.0  # per run: a run stops by itself after this long
    startup_timeout_s: float = 600.0
    ceiling_queries: int = 1024  # per client count, for the in-process ceiling (0: skip it)
    gc_freeze: bool = True  # the server's --gc-freeze (and the in-process figure's)
    extra_env: dict[str, str] = field(default_factory=dict)


def first_sentence(text: str, words: int = SENTENCE_WORDS) -> str:
    """The first sentence of a review, HTML tags removed, cut to `words` words."""
    clean = " ".join(_TAGS.sub(" ", text).split())
    sentence = _SPLIT.split(clean, maxsplit=1)[0]
    return " ".join(sentence.split()[:words])


def imdb_sentences(data_dir: Path, rows: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Up to `rows` corpus rows (first sentence of each review, with label and rating) and query texts
    (the second sentence of reviews, so queries are realistic but not copies of indexed rows)."""
    path = data_dir / IMDB_FILE
    if not path.exists():
        raise DataError(f"{path} is absent; pass --data-dir (the shared data folder)")
    corpus: list[dict[str, Any]] = []
    queries: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            text = str(row.get("text") or "")
            sentence = first_sentence(text)
            if not sentence:
                continue
            corpus.append(
                {
                    "id": str(row.get("_id", len(corpus))),
                    "text": sentence,
                    "label": row.get("label"),
                    "rating": row.get("rating"),
                }
            )
            if len(queries) < 2000:
                parts = _SPLIT.split(" ".join(_TAGS.sub(" ", text).split()), maxsplit=2)
                if len(parts) > 1 and len(parts[1].split()) >= 3:
                    queries.append(" ".join(parts[1].split()[:SENTENCE_WORDS]))
            if len(corpus) >= rows:
                break
    return corpus, queries


def prepare_index(config: ServeBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Build the benchmark index under the cache folder, or reuse it when it is already there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.build import build_index
    from pipeline.config import BuildOptions
    from pipeline.encode import EncoderConfig
    from pipeline.layout import IndexPaths
    from pipeline.lexical import LEXICAL_DIR
    from pipeline.manifest import read_manifest
    from pipeline.model import resolve_model

    model = config.model or default_model()
    data_dir = config.data_dir or shared_data_dir()
    root = config.cache_dir / "serve"
    index_dir = root / "indexes"
    name = f"imdb-sentences-{config.rows}" + ("" if config.backend == "torch" else f"-{config.backend}")
    paths = IndexPaths.of(index_dir, name)
    corpus, queries = imdb_sentences(data_dir, config.rows)
    if len(corpus) < config.rows:
        raise DataError(f"only {len(corpus)} IMDB reviews found; ask for --rows {len(corpus)} or fewer")
    built_s = None
    current = paths.current()
    manifest = read_manifest(paths.generation(current)) if current is not None else None
    cached = manifest["index"] if manifest is not None else None
    # an index of another model's vectors is of no use (the server would refuse the model): build it anew
    other_model = manifest is not None and manifest["settings"].get("model_weights") != resolve_model(model).fingerprint
    if other_model:
        cached = None
    has_lexical = current is not None and (paths.generation(current) / LEXICAL_DIR).is_dir()
    lexical = has_lexical or config.mode != "dense"
    if cached is None or cached.get("factory") != _wanted_factory(config, cached) or lexical != has_lexical:
        parquet = root / f"{name}.parquet"
        if cached is None or not parquet.exists():  # the same rows either way: ids and texts are the corpus's
            parquet.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(corpus), parquet)
        started = time.monotonic()
        build_index(
            BuildOptions(
                sources=[str(parquet)],
                name=name,
                index_dir=index_dir,
                model=model,
                id_column="id",
                encoder=EncoderConfig(device=config.device, backend=config.backend),
                index_type=config.index_type,
                rebuild=cached is not None,  # another index type or a BM25 side: from the cached embeddings
                overwrite=other_model,
                lexical=lexical,
            ),
            progress or NoProgress(),
        )
        built_s = round(time.monotonic() - started, 1)
    manifest = read_manifest(paths.require_current())
    return {
        "index_dir": str(index_dir),
        "name": name,
        "rows": manifest["counts"]["rows"],
        "index_type": manifest.get("index", {}).get("factory") or manifest.get("index", {}).get("type"),
        "model": manifest["model"]["name"],
        "model_path": model,
        "built_s": built_s,
        "queries": queries,
    }


def _wanted_factory(config: ServeBenchConfig, cached: dict[str, Any] | None) -> str | None:
    """The FAISS factory the benchmark index should have: --index-type, else what the build chooses now."""
    from pipeline import ann

    if config.index_type:
        return config.index_type
    if cached is None:
        return None
    return ann.choose_index(int(cached["ntotal"]), int(cached["dimension"])).factory


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command(
    index_dir: str, name: str, model: str, port: int, max_batch: int, config: ServeBenchConfig
) -> list[str]:
    """The `bmsearch serve` command line of the benchmark's server (this interpreter, loopback, no reload):
    the config's server settings, each passed only when it is not the server's own default."""
    return [
        sys.executable,
        "-c",
        "from pipeline.cli import main; main()",
        "serve",
        "--index",
        name,
        "--index-dir",
        index_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--device",
        config.device,
        "--model",
        model,
        "--reload-interval",
        "0",
        "--log-level",
        "warning",
        "--gc-freeze" if config.gc_freeze else "--no-gc-freeze",
        *(["--threads", str(config.threads)] if config.threads else []),
        *(["--workers", str(config.workers)] if config.workers else []),
        *(["--max-wait-ms", str(config.max_wait_ms)] if config.max_wait_ms is not None else []),
        *(["--http", config.http] if config.http != "auto" else []),
        *(["--loop", config.loop] if config.loop != "auto" else []),
    ]


class ServerProcess:
    """`bmsearch serve` in a subprocess on 127.0.0.1 and a free port (client and server do not share a GIL)."""

    def __init__(self, index_dir: str, name: str, model: str, max_batch: int, config: ServeBenchConfig) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = serve_command(index_dir, name, model, self.port, max_batch, config)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **config.extra_env}
        env.pop("BMSEARCH_API_KEY", None)
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                raise UsageError(f"the server exited with {self.proc.returncode}: {err}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise UsageError(f"the server was not ready after {timeout_s:.0f} s")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (all its threads) so far."""
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()


async def _load(
    url: str, queries: list[str], clients: int, requests: int, k: int, time_limit_s: float, mode: str = "dense"
) -> dict[str, Any]:
    """`clients` concurrent loops share `requests` POST /search calls; stops after time_limit_s regardless.

    aiohttp, not httpx: the load generator shares the machine with the server, and aiohttp spends about a
    quarter of httpx's CPU per request (0.3 against 1.3 ms here), which would otherwise be taken from the server.
    """
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.monotonic() + time_limit_s
    connector = aiohttp.TCPConnector(limit=clients)

    completed = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal issued, completed
        while issued < requests and time.monotonic() < deadline:
            n = issued
            issued += 1
            body = {"query": queries[n % len(queries)], "k": k, "mode": mode}
            started = time.perf_counter()
            try:
                async with session.post(f"{url}/search", json=body) as response:
                    await response.read()
                    ok = response.status == 200
                    key = str(response.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                ok, key = False, type(exc).__name__
            elapsed = time.perf_counter() - started
            completed += 1
            if ok:
                latencies.append(elapsed)
            else:
                errors[key] = errors.get(key, 0) + 1

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        wall = time.perf_counter() - started
    # QPS and latencies are of the answered (200) requests: a fast error is no throughput
    return {
        "requests": completed,
        "seconds": round(wall, 3),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        **latency_summary(latencies, wall),
    }


def latency_summary(latencies: list[float], wall_s: float) -> dict[str, float]:
    import numpy as np

    if not latencies:
        return {"qps": 0.0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
    ms = np.asarray(latencies) * 1000
    return {
        "qps": round(len(latencies) / wall_s, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def mean_batch_size(metrics_text: str) -> float | None:
    """Mean of the server's bmsearch_batch_size histogram."""
    found = dict(re.findall(r"^bmsearch_batch_size_(sum|count) (\S+)$", metrics_text, re.M))
    if not found or float(found.get("count", 0)) == 0:
        return None
    return round(float(found["sum"]) / float(found["count"]), 2)


def pipeline_ceiling(
    index: dict[str, Any],
    queries: list[str],
    config: ServeBenchConfig,
    client_counts: tuple[int, ...],
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """The server's own work without HTTP: its searcher and its micro-batcher, in process, with at most N
    queries outstanding at a time (N clients that cost nothing).

    QPS at N is what the server's own work gives with N clients on this machine, HTTP aside. It is not a
    bound: one thread submits and waits for the oldest query, so with several batch workers finishing out of
    order fewer than N are outstanding at times, and the server over HTTP has beaten it (docs/benchmarks.md).
    """
    from collections import deque
    from concurrent.futures import Future

    from pipeline.batcher import MicroBatcher
    from pipeline.layout import IndexPaths
    from pipeline.search import Searcher
    from pipeline.server import JobResult, SearchJob, freeze_loaded, process_jobs, serving_encoder

    plan = _plan(config)
    encoder = serving_encoder(config.device, plan.threads)
    searcher = Searcher(IndexPaths.of(index["index_dir"], index["name"]), model=index["model_path"], encoder=encoder)
    froze = False
    try:
        searcher.search(queries[:8], config.k, mode=config.mode)  # warm-up: first calls allocate
        froze = config.gc_freeze and freeze_loaded()  # as the server does once loaded
        out = []
        for clients in client_counts:
            # the same queries for every count, so only the concurrency differs
            texts = [queries[i % len(queries)] for i in range(config.ceiling_queries)]
            batcher: MicroBatcher[SearchJob, JobResult] = MicroBatcher(
                process_jobs,
                max_batch=config.max_batch,
                max_wait_ms=plan.max_wait_ms,
                name="bench-ceiling",
                workers=plan.workers,
                thread_init=plan.worker_setup,
            )
            with batcher:
                started = time.perf_counter()
                pending: deque[Future[JobResult]] = deque()
                for text in texts:
                    if len(pending) == clients:
                        pending.popleft().result()
                        if progress is not None:
                            progress.advance(1)
                    job = SearchJob(index["name"], searcher, [text], config.k, mode=config.mode)
                    pending.append(batcher.submit(job))
                for future in pending:
                    future.result()
                seconds = time.perf_counter() - started
            if progress is not None:
                progress.advance(len(pending))
            out.append({"clients": clients, "queries": len(texts), "qps": round(len(texts) / seconds, 1)})
        return out
    finally:
        if froze:
            gc.unfreeze()
        searcher.close()


def run_serve_bench(config: ServeBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Build or reuse the index, then for max_batch (and 1, to compare) and each client count, serve and load."""
    progress = progress or NoProgress()
    machine = machine_info()  # the load average before the index build and the runs, as recorded
    index = prepare_index(config, progress)
    queries = index.pop("queries")
    if not queries:
        raise DataError("no query sentences found in the IMDB file")
    settings = [config.max_batch] + ([1] if config.compare_unbatched and config.max_batch != 1 else [])
    ceiling: list[dict[str, Any]] = []
    if config.ceiling_queries:
        counts = tuple(sorted({min(config.clients), max(config.clients)}))
        progress.stage("in-process ceiling", config.ceiling_queries * len(counts), "queries")
        ceiling = pipeline_ceiling(index, queries, config, counts, progress)
    runs: list[dict[str, Any]] = []
    with _sigterm_as_exit():  # so the finally below stops the server, as on Ctrl-C
        for max_batch in settings:
            server = ServerProcess(index["index_dir"], index["name"], index["model_path"], max_batch, config)
            try:
                server.wait_ready(config.startup_timeout_s)
                for clients in config.clients:
                    progress.stage(f"max_batch={max_batch} clients={clients}", config.requests, "requests")
                    asyncio.run(
                        _load(server.url, queries, clients, config.warmup, config.k, config.time_limit_s, config.mode)
                    )
                    warm = server.metrics()
                    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
                    result = asyncio.run(
                        _load(server.url, queries, clients, config.requests, config.k, config.time_limit_s, config.mode)
                    )
                    server_cpu, client_cpu = server.cpu_seconds() - server_cpu, time.process_time() - client_cpu
                    after = server.metrics()
                    progress.advance(result["requests"])
                    runs.append(
                        {
                            "max_batch": max_batch,
                            "clients": clients,
                            **result,
                            "mean_batch": _mean_batch_between(warm, after),
                            **_cpu_per_request(server_cpu, client_cpu, result["requests"]),
                        }
                    )
            finally:
                server.stop()
                progress.close()
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "extra_env"},
        "machine": machine,
        "server": server_settings(config),
        "index": index,
        "runs": runs,
        "ceiling": ceiling,
        "summary": summarise(runs, config, ceiling),
    }


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM (`timeout`, a cancelled CI job, `kill`) into SystemExit while the block runs: Python's
    default would end the process without running finally blocks, leaving the server subprocess behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _plan(config: ServeBenchConfig) -> BatchPlan:
    """The batching the benchmark's server resolves from the config, as the server itself does."""
    from pipeline.server import batch_plan

    return batch_plan(config.device, config.threads, config.workers, config.max_wait_ms)


def server_settings(config: ServeBenchConfig) -> dict[str, Any]:
    """What the benchmark's server runs with, defaults resolved as the server resolves them."""
    from importlib.util import find_spec

    plan = _plan(config)
    return {
        "workers": plan.workers,
        "threads": plan.threads,
        "max_wait_ms": plan.max_wait_ms,
        # as uvicorn resolves "auto"
        "loop": config.loop if config.loop != "auto" else ("uvloop" if find_spec("uvloop") else "asyncio"),
        "http": config.http if config.http != "auto" else ("httptools" if find_spec("httptools") else "h11"),
    }


def _cpu_per_request(server_s: float, client_s: float, requests: int) -> dict[str, float | None]:
    """CPU milliseconds per request in the server and in the load generator: where the cores went, which
    unlike QPS hardly moves with other load on the machine."""
    if not requests:
        return {"server_cpu_ms": None, "client_cpu_ms": None}
    return {
        "server_cpu_ms": round(1000 * server_s / requests, 2),
        "client_cpu_ms": round(1000 * client_s / requests, 2),
    }


def _mean_batch_between(before: str, after: str) -> float | None:
    def totals(text: str) -> tuple[float, float]:
        found = dict(re.findall(r"^bmsearch_batch_size_(sum|count) (\S+)$", text, re.M))
        return float(found.get("sum", 0)), float(found.get("count", 0))

    s0, c0 = totals(before)
    s1, c1 = totals(after)
    return round((s1 - s0) / (c1 - c0), 2) if c1 > c0 else None


def summarise(
    runs: list[dict[str, Any]], config: ServeBenchConfig, ceiling: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Scaling from the fewest to the most clients, the gain of batching over batch size 1, the in-process
    ceiling on that scaling, and the targets."""

    def find(max_batch: int, clients: int) -> dict[str, Any] | None:
        return next((r for r in runs if r["max_batch"] == max_batch and r["clients"] == clients), None)

    low, high = min(config.clients), max(config.clients)
    out: dict[str, Any] = {}
    base, top = find(config.max_batch, low), find(config.max_batch, high)
    if base and top and base["qps"]:
        out["scaling"] = round(top["qps"] / base["qps"], 2)
        out["p50_ms_at_min_clients"] = base["p50_ms"]
        out["errors"] = sum(r["errors"] for r in runs)
        out["target_p50_under_30ms"] = base["p50_ms"] < 30
        out["target_scaling_3x_no_errors"] = out["scaling"] >= 3 and top["errors"] == 0
    gains = {}
    for clients in config.clients:
        batched, single = find(config.max_batch, clients), find(1, clients)
        if batched and single and single["qps"]:
            gains[str(clients)] = round(batched["qps"] / single["qps"], 2)
    if gains:
        out["batching_gain_by_clients"] = gains
    if ceiling and base and base["qps"]:
        most = max(ceiling, key=lambda c: c["clients"])
        fewest = min(ceiling, key=lambda c: c["clients"])
        out["ceiling_qps"] = most["qps"]
        out["ceiling_clients"] = most["clients"]
        out["ceiling_scaling"] = round(most["qps"] / base["qps"], 2)
        if fewest["qps"] and fewest is not most:
            out["in_process_scaling"] = round(most["qps"] / fewest["qps"], 2)
    return out


def render_text(result: dict[str, Any]) -> str:
    cols = (
        "max_batch",
        "clients",
        "requests",
        "errors",
        "qps",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "mean_batch",
        "server_cpu_ms",
        "client_cpu_ms",
    )
    lines = ["  ".join(f"{c:>9}" for c in cols)]
    for run in result["runs"]:
        lines.append("  ".join(f"{'' if run.get(c) is None else run[c]!s:>9}" for c in cols))
    summary = result["summary"]
    if "scaling" in summary:
        lines.append(
            f"throughput {max(result['config']['clients'])} vs {min(result['config']['clients'])} "
            f"client(s): {summary['scaling']}x"
        )
    if "batching_gain_by_clients" in summary:
        gains = ", ".join(f"{c} clients: {g}x" for c, g in summary["batching_gain_by_clients"].items())
        lines.append(f"micro-batching gain over --max-batch 1: {gains}")
    if "ceiling_scaling" in summary:
        lines.append(_ceiling_line(result))
    return "\n".join(lines)


def _ceiling_line(result: dict[str, Any]) -> str:
    s = result["summary"]
    by_clients = ", ".join(f"{c['clients']} outstanding: {c['qps']} q/s" for c in result["ceiling"])
    return (
        f"in process (the server's batcher and searcher, no HTTP): {by_clients}; "
        f"{s['ceiling_scaling']}x the server's {min(result['config']['clients'])}-client QPS"
    )


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _server_line(server: dict[str, Any] | None) -> str:
    if not server:
        return "defaults"
    return (
        f"{server['workers']} batch worker(s) x {server['threads']} thread(s), wait {server['max_wait_ms']:g} ms, "
        f"uvicorn with {server['loop']} and {server['http']}"
    )


def render_markdown(result: dict[str, Any], command: str) -> str:
    m, idx, cfg = result["machine"], result["index"], result["config"]
    lines = [
        f"## Server load test ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['cpu']}, {m.get('cores_usable', m['cpu_count'])} usable cores "
        f"(load average before: {m.get('load_average')}), Python {m['python']}, device {cfg['device']}.",
        "",
        f"Index: {idx['rows']} rows = the first sentence of each of the first {idx['rows']} IMDB reviews "
        f"(HTML removed, cut to {SENTENCE_WORDS} words, about 32 tokens), model {idx['model']}, "
        f"FAISS {idx['index_type']}. Server: {_server_line(result.get('server'))}, "
        f"GC freeze {'on' if cfg.get('gc_freeze', True) else 'off'}. "
        f"Queries: the second sentence of reviews; k={cfg['k']}, {cfg.get('mode', 'dense')} search. "
        f"Each run: {cfg['requests']} requests after {cfg['warmup']} warm-up requests, server and "
        f"clients (asyncio + aiohttp, one connection per client) on the same machine over loopback.",
        "",
        "| max_batch | clients | requests | errors | QPS | p50 ms | p95 ms | p99 ms | mean batch "
        "| server CPU ms/req | client CPU ms/req |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['max_batch']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['qps']} | "
            f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r.get('mean_batch') or '-'} | "
            f"{_or_dash(r.get('server_cpu_ms'))} | {_or_dash(r.get('client_cpu_ms'))} |"
        )
    s = result["summary"]
    lines.append("")
    if "scaling" in s:
        lines.append(
            f"- Throughput at {max(cfg['clients'])} clients vs {min(cfg['clients'])}: **{s['scaling']}x** "
            f"(target ≥ 3x with no errors: {'met' if s['target_scaling_3x_no_errors'] else 'not met'})."
        )
        lines.append(
            f"- p50 at {min(cfg['clients'])} client(s): **{s['p50_ms_at_min_clients']} ms** "
            f"(target < 30 ms: {'met' if s['target_p50_under_30ms'] else 'not met'})."
        )
    if "batching_gain_by_clients" in s:
        gains = ", ".join(f"{g}x at {c} clients" for c, g in s["batching_gain_by_clients"].items())
        lines.append(f"- Micro-batching (max_batch {cfg['max_batch']}) over --max-batch 1: {gains}.")
    if "ceiling_scaling" in s:
        lines.append(
            f"- The server's batcher and searcher in process, without HTTP ({s['ceiling_qps']} q/s with "
            f"{s['ceiling_clients']} queries outstanding; {s.get('in_process_scaling', '-')}x its throughput with "
            f"{min(cfg['clients'])}): {s['ceiling_scaling']}x the server's {min(cfg['clients'])}-client QPS (not a "
            f"bound: one thread submits and waits in order, so fewer than {s['ceiling_clients']} are outstanding at "
            "times)."
        )
    return "\n".join(lines) + "\n\n"
