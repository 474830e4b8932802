"""`bmsearch bench index`: index build time, memory, size, recall@10 and query latency per index type."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from pipeline.cli.options import bench_output_options, data_dir_option
from pipeline.cli.output import CliProgress, emit_json, format_table, handle_errors


@click.command("index")
@click.option(
    "--dataset",
    "datasets",
    type=click.Choice(["synthetic", "imdb"]),
    multiple=True,
    help="Vectors to index (repeatable) [default: synthetic and imdb].",
)
@click.option("--synthetic-n", type=click.IntRange(min=1000), default=1_000_000, show_default=True)
@click.option("--synthetic-dim", type=click.IntRange(min=8), default=512, show_default=True)
@click.option(
    "--synthetic-spread",
    type=click.FloatRange(min=0.0),
    default=0.6,
    show_default=True,
    help="Noise norm around each of the 4096 centroids (larger: clusters overlap, harder).",
)
@click.option(
    "--imdb-n",
    type=click.IntRange(min=1000),
    default=200_000,
    show_default=True,
    help="IMDB sentences to encode with the packaged MiniLM (cached under --cache-dir).",
)
@click.option(
    "--index-type",
    "index_types",
    multiple=True,
    help="FAISS factory string to try, or 'auto' (repeatable) [default: Flat, auto, and those of HNSW32, IVF-Flat and IVF-PQ that auto did not pick].",
)
@click.option("--memory-budget", default=None, help="Memory budget of the automatic choice, e.g. 4G.")
@click.option("--latency-queries", type=click.IntRange(min=10), default=2000, show_default=True)
@click.option("--filter-queries", type=click.IntRange(min=10), default=300, show_default=True)
@data_dir_option
@click.option("--cache-dir", type=click.Path(path_type=Path), default=Path(".bench"), show_default=True)
@bench_output_options
@handle_errors
def command(
    datasets: tuple[str, ...],
    synthetic_n: int,
    synthetic_dim: int,
    synthetic_spread: float,
    imdb_n: int,
    index_types: tuple[str, ...],
    memory_budget: str | None,
    latency_queries: int,
    filter_queries: int,
    data_dir: Path | None,
    cache_dir: Path,
    as_json: bool,
    record: Path | None,
    quiet: bool,
) -> None:
    """Build each index type over a clustered synthetic set and real IMDB sentence embeddings; report
    build time, peak RSS, size on disk, recall@10 against exact search with the tuned nprobe/efSearch,
    and single-threaded p50/p99 latency, unfiltered and with 1% and 50% id filters."""
    from pipeline.bench_common import append_record, shared_data_dir
    from pipeline.bench_index import COLUMNS, markdown_section, run_index_bench

    factories: list[str | None] | None = None
    if index_types:
        factories = [None if t.lower() == "auto" else t for t in index_types]
    progress = CliProgress(enabled=not quiet and not as_json)
    result = run_index_bench(
        list(datasets) or ["synthetic", "imdb"],
        synthetic_n=synthetic_n,
        synthetic_dim=synthetic_dim,
        synthetic_spread=synthetic_spread,
        imdb_n=imdb_n,
        factories=factories,
        memory_budget=memory_budget,
        latency_queries=latency_queries,
        filter_queries=filter_queries,
        data_dir=data_dir or shared_data_dir(),
        cache_dir=cache_dir,
        progress=progress,
    )
    progress.close()
    command_line = (
        "bmsearch bench index " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("index") + 1 :])
        if "index" in sys.argv
        else "bmsearch bench index"
    )
    result["command"] = command_line.strip()
    if as_json:
        emit_json(result)
    else:
        m = result["machine"]
        click.echo(f"{m['cpu']}, {m['cores']} cores, faiss {m.get('faiss')}")
        click.echo(format_table(result["rows"], COLUMNS))
    if record is not None:
        append_record(record, markdown_section(result, result["command"]))
        if not as_json and not quiet:
            click.echo(f"Appended to {record}", err=True)
