"""`bmsearch index`: build or update an index from Parquet files."""

from __future__ import annotations

import click

from pipeline.cli.options import backend_option, device_option, index_dir_option, output_options
from pipeline.cli.output import CliProgress, emit_json, handle_errors
from pipeline.model import DEFAULT_MODEL


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--name", "-n", default="default", show_default=True, help="Index name under --index-dir.")
@index_dir_option
@click.option("--text-column", default="text", show_default=True, help="Column holding the text to embed.")
@click.option(
    "--id-column",
    default=None,
    help="Column of unique ids (integers or strings); default: ids derived from file name and row number.",
)
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Hub id or local model directory.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of --model.")
@click.option(
    "--max-seq-length", type=click.IntRange(8, 8192), default=None, help="Truncate texts to this many tokens."
)
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Most texts per forward pass.")
@click.option("--token-budget", type=click.IntRange(64), default=None, help="Most padded tokens per forward pass.")
@device_option
@backend_option("auto")
@click.option(
    "--on-empty",
    type=click.Choice(["skip", "error"]),
    default="skip",
    show_default=True,
    help="Null or blank texts: skip and count them, or fail.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing index, re-encoding everything.")
@click.option("--rebuild", is_flag=True, help="Rebuild the vector index from stored embeddings (nothing re-encoded).")
@click.option("--sync", is_flag=True, help="Remove ids that are no longer in the sources.")
@click.option(
    "--index-type",
    default=None,
    help="FAISS factory string (Flat, IVF4096,Flat, HNSW32, OPQ64,IVF4096,PQ64); default: chosen by corpus size "
    "and --memory-budget.",
)
@click.option("--memory-budget", default=None, help="Most memory the vector index may take, e.g. 2G (default 4G).")
@click.option(
    "--target-recall",
    type=click.FloatRange(0.5, 1.0),
    default=0.95,
    show_default=True,
    help="Recall@10 against exact search that the search parameters are tuned to reach.",
)
@click.option(
    "--shard-rows",
    type=click.IntRange(1),
    default=16_384,
    show_default=True,
    help="Rows per embedding shard: the unit a resumed run picks up from.",
)
@output_options
@handle_errors
def index(
    paths: tuple[str, ...],
    name: str,
    index_dir: str,
    text_column: str,
    id_column: str | None,
    model: str,
    revision: str | None,
    max_seq_length: int | None,
    batch_size: int | None,
    token_budget: int | None,
    device: str,
    backend: str,
    on_empty: str,
    overwrite: bool,
    rebuild: bool,
    sync: bool,
    shard_rows: int,
    index_type: str | None,
    memory_budget: str | None,
    target_recall: float,
    as_json: bool,
    quiet: bool,
) -> None:
    """Embed the texts of PATHS (Parquet files, folders or globs) and build or update index NAME.

    Re-running on the same sources is incremental: only new or changed rows are encoded. An interrupted
    run continues where it stopped when started again with the same command.
    """
    from pathlib import Path

    from pipeline.build import build_index
    from pipeline.config import BuildOptions
    from pipeline.encode import EncoderConfig

    options = BuildOptions(
        sources=list(paths),
        name=name,
        index_dir=Path(index_dir),
        text_column=text_column,
        id_column=id_column,
        model=model,
        revision=revision,
        on_empty=on_empty,
        overwrite=overwrite,
        rebuild=rebuild,
        sync=sync,
        shard_rows=shard_rows,
        index_type=index_type,
        memory_budget=memory_budget,
        target_recall=target_recall,
        encoder=EncoderConfig(
            device=device,
            max_seq_length=max_seq_length,
            batch_size=batch_size,
            token_budget=token_budget,
            backend=backend,
        ),
    )
    progress = CliProgress(enabled=not (quiet or as_json))
    try:
        result = build_index(options, progress)
    finally:
        progress.close()
    if as_json:
        emit_json(result.to_dict())
    elif not quiet:
        if result.up_to_date:
            click.echo(
                f"{name}: up to date, generation {result.generation}, {result.rows} rows "
                f"(0 new, 0 changed) in {result.seconds:.1f}s",
                err=True,
            )
        else:
            click.echo(
                f"{name}: generation {result.generation}, {result.rows} rows ({result.new} new, {result.changed} "
                f"changed, {result.removed} removed, {result.skipped_empty} empty skipped); encoded "
                f"{result.encoded}{f' (+{result.resumed_rows} resumed)' if result.resumed_rows else ''} "
                f"in {result.seconds:.1f}s ({result.rows_per_s:,.0f} rows/s); index {result.index_type}",
                err=True,
            )
