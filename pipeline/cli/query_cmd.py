"""`bmsearch query`: nearest neighbours of one query or a file of queries, with metadata."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import click

from pipeline.cli.options import (
    LeadOff,
    device_option,
    hybrid_config,
    hybrid_options,
    index_dir_option,
    mode_option,
)
from pipeline.cli.output import format_table, handle_errors


@click.command()
@click.argument("text", required=False)
@click.option("--index", "-i", "name", default=None, help="Index name (default: the only index present).")
@index_dir_option
@click.option("--top-k", "-k", type=click.IntRange(1, 10_000), default=10, show_default=True)
@click.option("--where", default=None, help="SQL condition on metadata columns, applied before the search.")
@click.option("--columns", default=None, help="Comma-separated metadata columns to show.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "jsonl", "csv", "parquet"]),
    default=None,
    help="Output format (default: table for one query, jsonl for --queries).",
)
@click.option(
    "--queries",
    "queries_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Parquet (text and optional id column) or text file of one query per line.",
)
@click.option("--query-column", default=None, help="Text column of a Parquet --queries file [default: text].")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write --queries results here: .parquet or .jsonl (another name needs --format).",
)
@mode_option("Dense vectors, BM25, or both fused.")
@hybrid_options
@click.option("--model", "-m", default=None, help="Model to encode with; must match the index's manifest.")
@device_option
@handle_errors
def query(
    text: str | None,
    name: str | None,
    index_dir: str,
    top_k: int,
    where: str | None,
    columns: str | None,
    fmt: str | None,
    queries_file: Path | None,
    query_column: str | None,
    output: Path | None,
    mode: str,
    fusion: str | None,
    weights: str | None,
    lead_margin: float | type[LeadOff] | None,
    lead_sole_match: bool | None,
    model: str | None,
    device: str,
) -> None:
    """Search an index for TEXT, or for every query in --queries FILE."""
    from pipeline.encode import EncoderConfig
    from pipeline.layout import resolve_name
    from pipeline.search import Searcher

    if (text is None) == (queries_file is None):
        raise click.UsageError("give either a query TEXT or --queries FILE")
    if text is not None and not text.strip():
        raise click.UsageError("the query text is empty")
    if queries_file is None:
        for given, option in ((output, "--output"), (query_column, "--query-column")):
            if given is not None:
                raise click.UsageError(f"{option} goes with --queries FILE; a single query prints to stdout")
    else:
        fmt = _batch_format(fmt, output)
    cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    fusion_config = hybrid_config(fusion, weights, lead_margin, lead_sole_match)
    pairs = None
    if queries_file is not None:
        from pipeline.queries import read_queries

        pairs = read_queries(queries_file, query_column or "text")
    searcher = Searcher(resolve_name(index_dir, name), model=model, encoder=EncoderConfig(device=device))
    try:
        if pairs is not None:
            from pipeline.queries import run_queries, write_hits

            assert fmt is not None
            hits_iter = run_queries(searcher, pairs, top_k, where, cols, mode=mode, fusion=fusion_config)
            count = write_hits(hits_iter, output, fmt)
            if output is not None:
                click.echo(f"{count} hits for {len(pairs)} queries written to {output}", err=True)
            return
        assert text is not None
        hits = searcher.search([text], top_k, where, cols, mode=mode, fusion=fusion_config)[0]
        _print_hits(hits, fmt or "table")
    finally:
        searcher.close()


BATCH_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}  # output suffix -> format that --queries writes


def _batch_format(fmt: str | None, output: Path | None) -> str:
    """The format --queries writes: --format, else the --output suffix, else jsonl on stdout.

    Checked before the model loads, so a bad --output fails at once rather than after every query ran.
    """
    if fmt is not None and fmt not in BATCH_FORMATS.values():
        raise click.UsageError(f"--queries writes {' or '.join(BATCH_FORMATS.values())}, not {fmt}")
    if output is None:
        if fmt == "parquet":
            raise click.UsageError("--format parquet needs --output FILE")
        return fmt or "jsonl"
    if not output.parent.is_dir():
        raise click.BadParameter(f"folder {output.parent} does not exist", param_hint="--output")
    if fmt is None:
        fmt = BATCH_FORMATS.get(output.suffix.lower())
        if fmt is None:
            raise click.BadParameter(
                f"cannot tell the format of {output.name}: name it .parquet or .jsonl, or give --format",
                param_hint="--output",
            )
    return fmt


def _print_hits(hits: list[dict], fmt: str) -> None:
    from pipeline.queries import json_text

    if fmt == "json":
        click.echo(json_text(hits, indent=2))
    elif fmt == "jsonl":
        for hit in hits:
            click.echo(json_text(hit))
    elif fmt == "csv":
        buffer = io.StringIO()
        if hits:
            writer = csv.DictWriter(buffer, fieldnames=list(hits[0]))
            writer.writeheader()
            writer.writerows(hits)
        sys.stdout.write(buffer.getvalue())
    elif fmt == "parquet":
        raise click.UsageError("--format parquet is for --queries with --output")
    elif hits:
        click.echo(format_table(hits, list(hits[0])))
    else:
        click.echo("no results", err=True)
