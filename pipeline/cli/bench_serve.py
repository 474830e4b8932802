"""`bmsearch bench serve`: server QPS and latency under concurrent clients, with and without micro-batching."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from pipeline.cli.options import backend_option, bench_output_options, mode_option, uvicorn_options
from pipeline.cli.output import CliProgress, emit_json, handle_errors


@click.command("serve")
@click.option(
    "--rows",
    type=click.IntRange(min=100),
    default=100_000,
    show_default=True,
    help="Index this many IMDB first sentences (built once, cached under --cache-dir).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Shared data folder [default: $BMSEARCH_SHARED_DATA or ../shared/data].",
)
@click.option("--model", default=None, help="Model directory [default: the packaged all-MiniLM-L6-v2].")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".bench"),
    show_default=True,
    help="Where the benchmark index is kept between runs.",
)
@click.option("--clients", default="1,16", show_default=True, help="Comma-separated concurrent client counts.")
@click.option(
    "--requests",
    type=click.IntRange(min=1, max=1_000_000),
    default=1000,
    show_default=True,
    help="Requests per run (per max-batch setting and client count).",
)
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@mode_option("The requests' search mode (lexical and hybrid add a BM25 side to the cached index).")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(0, 1000),
    default=None,
    help="The server's --max-wait-ms [default: its default].",
)
@click.option(
    "--compare/--no-compare",
    default=True,
    show_default=True,
    help="Also run the same load with --max-batch 1 and report the gain.",
)
@click.option("--device", default="cpu", show_default=True, help="Device of the server: cpu, cuda or auto.")
@backend_option("auto", "Encoder backend of the benchmark index and its queries.")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="The server's --threads [default: its default]."
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="The server's --workers [default: its default]."
)
@uvicorn_options
@click.option(
    "--index-type",
    default=None,
    help="FAISS factory string of the benchmark index [default: the automatic choice]; another type than the "
    "cached one is rebuilt from the cached embeddings.",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds after which a run stops by itself.",
)
@click.option(
    "--ceiling-queries",
    type=click.IntRange(min=0),
    default=1024,
    show_default=True,
    help="Queries per client count for the in-process figure (the server's batcher and searcher, no HTTP); 0 skips it.",
)
@click.option(
    "--gc-freeze/--no-gc-freeze",
    default=True,
    show_default=True,
    help="The server's --gc-freeze (to measure what it does).",
)
@bench_output_options
@handle_errors
def command(
    rows: int,
    data_dir: Path | None,
    model: str | None,
    cache_dir: Path,
    clients: str,
    requests: int,
    warmup: int,
    k: int,
    mode: str,
    max_batch: int,
    max_wait_ms: float | None,
    compare: bool,
    device: str,
    backend: str,
    threads: int | None,
    workers: int | None,
    http: str,
    loop: str,
    index_type: str | None,
    time_limit: float,
    ceiling_queries: int,
    gc_freeze: bool,
    as_json: bool,
    record: Path | None,
    quiet: bool,
) -> None:
    """Start `bmsearch serve` on 127.0.0.1 (a free port) over a cached index of IMDB sentences, drive it
    with N concurrent asyncio/aiohttp clients for a fixed number of requests and report QPS, p50/p95/p99
    latency, CPU per request, the gain of micro-batching over --max-batch 1, and the server's batcher and
    searcher measured in process without HTTP."""
    from pipeline.bench_serve import ServeBenchConfig, render_markdown, render_text, run_serve_bench

    try:
        counts = tuple(sorted({int(c) for c in clients.split(",") if c.strip()}))
    except ValueError:
        raise click.BadParameter(
            f"{clients!r} is not a comma-separated list of numbers", param_hint="--clients"
        ) from None
    if not counts or min(counts) < 1 or max(counts) > 1024:
        raise click.BadParameter("client counts are between 1 and 1024", param_hint="--clients")
    config = ServeBenchConfig(
        rows=rows,
        data_dir=data_dir,
        model=model,
        cache_dir=cache_dir,
        clients=counts,
        requests=requests,
        warmup=warmup,
        k=k,
        mode=mode,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        compare_unbatched=compare,
        device=device,
        backend=backend,
        threads=threads,
        workers=workers,
        http=http,
        loop=loop,
        index_type=index_type,
        time_limit_s=time_limit,
        ceiling_queries=ceiling_queries,
        gc_freeze=gc_freeze,
    )
    result = run_serve_bench(config, CliProgress(enabled=not quiet and not as_json))
    if as_json:
        emit_json(result)
    else:
        click.echo(render_text(result))
    if record is not None:
        from pipeline.bench_common import append_record

        append_record(record, render_markdown(result, "bmsearch " + " ".join(shlex.quote(a) for a in sys.argv[1:])))
        if not quiet:
            click.echo(f"Appended to {record}", err=True)
