"""`bmsearch bench index`: index build time, memory, size, recall@10 and query latency per index type."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from pipeline.cli.output import CliProgress, emit_json, format_table


def command(datasets: tuple[str, ...], synthetic_n: int, synthetic_dim: int, synthetic_spread: float,
            imdb_n: int,
            index_types: tuple[str, ...], memory_budget: str | None, latency_queries: int,
            filter_queries: int, data_dir: Path | None, cache_dir: Path, as_json: bool,
            record: Path | None, quiet: bool) -> None:
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
        list(datasets) or ["synthetic", "imdb"], synthetic_n=synthetic_n, synthetic_dim=synthetic_dim,
        synthetic_spread=synthetic_spread, imdb_n=imdb_n, factories=factories, memory_budget=memory_budget, latency_queries=latency_queries,
        filter_queries=filter_queries, data_dir=data_dir or shared_data_dir(), cache_dir=cache_dir,
        progress=progress,
    )
    progress.close()
    command_line = "bmsearch bench index " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("index") + 1:]) \
        if "index" in sys.argv else "bmsearch bench index"
    result["command"] = command_line.strip()
    if as_json:
        emit_json(result)
    else:
        m = result["machine"]
        click.echo(f"{m['cpu']}, {m['cores']} cores, faiss {m.get('faiss')}")
        click.echo(format_table(result["rows"], COLUMNS))
    if record is not None:
        append_record(record, markdown_section(result, result["command"]))
        if not as_json:
            click.echo(f"Appended to {record}", err=True)
