"""`bmsearch eval retrieval`: nDCG@10, recall and MRR of dense, lexical and hybrid search against qrels."""

from __future__ import annotations

import re
from pathlib import Path

import click

from pipeline.cli.options import (
    SEARCH_MODES,
    LeadOff,
    backend_option,
    device_option,
    index_dir_option,
    lead_margin_option,
    output_options,
    sole_match_option,
    with_lead_rules,
)
from pipeline.cli.output import CliProgress, emit_json, format_table, handle_errors


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in SEARCH_MODES]
    if bad or not modes:
        raise click.BadParameter(f"use a comma-separated subset of {','.join(SEARCH_MODES)}", param_hint="--modes")
    return list(dict.fromkeys(modes))


@click.command("retrieval")
@click.option(
    "--index", "-i", "name", default=None, help="Index name (default: the only index, or the --beir folder's)."
)
@index_dir_option
@click.option(
    "--queries",
    "queries_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="BEIR queries.jsonl (_id, text); default with --beir: its queries.jsonl.",
)
@click.option(
    "--qrels",
    "qrels_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Qrels TSV (query-id, corpus-id, score; header optional); default with --beir: qrels/SPLIT.tsv.",
)
@click.option(
    "--beir",
    "beir_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="A BEIR folder: build (or update) the index from its corpus.jsonl first.",
)
@click.option("--split", default="test", show_default=True, help="Qrels split of a --beir folder.")
@click.option(
    "--model",
    "-m",
    default=None,
    help="With --beir: the model to index with (default: the existing index's, else the project's).",
)
@backend_option("auto", "With --beir: encoder runtime for the build.")
@click.option(
    "--max-seq-length",
    type=click.IntRange(8, 8192),
    default=None,
    help="With --beir: truncate documents to this many tokens (default: the model's).",
)
@click.option("--overwrite", is_flag=True, help="With --beir: rebuild the index from nothing.")
@device_option
@click.option("--modes", default="dense,lexical,hybrid", show_default=True, help="Comma-separated modes to evaluate.")
@click.option(
    "--fusion",
    type=click.Choice(["rrf", "minmax", "zscore"]),
    default=None,
    help="Hybrid fusion method (default: the library's).",
)
@click.option(
    "--lexical-weight",
    type=click.FloatRange(0),
    default=None,
    help="Hybrid weight of the lexical list, dense being 1.0 (default: the library's).",
)
@click.option("--rrf-k", type=click.FloatRange(0), default=None, help="RRF rank constant (default 60).")
@lead_margin_option
@sole_match_option
@output_options
@handle_errors
def retrieval(
    name: str | None,
    index_dir: str,
    queries_file: Path | None,
    qrels_file: Path | None,
    beir_dir: Path | None,
    split: str,
    model: str | None,
    backend: str,
    max_seq_length: int | None,
    overwrite: bool,
    device: str,
    modes: str,
    fusion: str | None,
    lexical_weight: float | None,
    rrf_k: float | None,
    lead_margin: float | type[LeadOff] | None,
    lead_sole_match: bool | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Evaluate an index's rankings against graded relevance judgements, one row per search mode."""
    from dataclasses import replace

    from pipeline.beir import BeirFolder, load_qrels, load_queries
    from pipeline.encode import EncoderConfig
    from pipeline.errors import UsageError
    from pipeline.fusion import FusionConfig
    from pipeline.layout import resolve_name
    from pipeline.retrieval_eval import evaluate_retrieval
    from pipeline.search import Searcher

    chosen = _modes(modes)
    folder = None
    if beir_dir is not None:
        folder = BeirFolder.of(beir_dir, split)
        name = name or re.sub(r"[^A-Za-z0-9._-]", "-", folder.root.resolve().name).lstrip("._-") or "beir"
        queries_file = queries_file or folder.queries
        qrels_file = qrels_file or folder.qrels
    if queries_file is None or qrels_file is None:
        raise UsageError("give --queries and --qrels, or a --beir folder")
    queries = load_queries(queries_file)
    qrels = load_qrels(qrels_file)
    if folder is not None:
        assert name is not None
        _build_from_beir(folder, index_dir, name, model, backend, max_seq_length, overwrite, device, quiet or as_json)
        model = None  # the searcher takes the model the manifest records
    paths = resolve_name(index_dir, name)
    config = FusionConfig()
    if fusion is not None:
        config = replace(config, method=fusion)
    if lexical_weight is not None:
        config = replace(config, weights={**config.weights, "lexical": lexical_weight})
    if rrf_k is not None:
        config = replace(config, rrf_k=rrf_k)
    config = with_lead_rules(config, lead_margin, lead_sole_match)
    searcher = Searcher(paths, model=model, encoder=EncoderConfig(device=device))
    try:
        report = evaluate_retrieval(searcher, queries, qrels, chosen, config)
    finally:
        searcher.close()
    if as_json:
        emit_json(report.to_dict())
        return
    columns = ["mode", "nDCG@10", "R@10", "R@100", "MRR@10", "queries", "q/s"]
    click.echo(format_table(report.rows(), columns))
    if not quiet:
        note = report.qrels.message()
        if note:
            click.echo(f"note: {note}", err=True)
        skipped = report.queries_without_relevant + report.queries_without_text
        if skipped:
            click.echo(
                f"note: {skipped} judged queries left out ({report.queries_without_relevant} with no relevant "
                f"document, {report.queries_without_text} with no text in the query file)",
                err=True,
            )


def _build_from_beir(
    folder: object,
    index_dir: str,
    name: str,
    model: str | None,
    backend: str,
    max_seq_length: int | None,
    overwrite: bool,
    device: str,
    quiet: bool,
) -> None:
    from pipeline.beir import ID_COLUMN, TEXT_COLUMN, BeirFolder, write_corpus_parquet
    from pipeline.build import build_index
    from pipeline.config import BuildOptions
    from pipeline.encode import EncoderConfig
    from pipeline.layout import IndexPaths
    from pipeline.manifest import read_manifest
    from pipeline.model import DEFAULT_MODEL

    assert isinstance(folder, BeirFolder)
    paths = IndexPaths.of(index_dir, name)
    parquet = paths.root / "beir" / "corpus.parquet"
    # Re-converting would change the file's mtime and make the builder re-read an unchanged corpus.
    if overwrite or not parquet.exists() or parquet.stat().st_mtime_ns < folder.corpus.stat().st_mtime_ns:
        write_corpus_parquet(folder.corpus, parquet)
    revision = None
    if model is None and not overwrite and paths.root.is_dir() and paths.current() is not None:
        # an update keeps the model the index was built with
        recorded = read_manifest(paths.require_current())["model"]
        model = recorded["path"] if recorded.get("source") == "local" else recorded["name"]
        revision = recorded.get("revision")
    options = BuildOptions(
        sources=[str(parquet)],
        name=name,
        index_dir=Path(index_dir),
        text_column=TEXT_COLUMN,
        id_column=ID_COLUMN,
        model=model or DEFAULT_MODEL,
        revision=revision,
        overwrite=overwrite,
        encoder=EncoderConfig(device=device, max_seq_length=max_seq_length, backend=backend),
    )
    progress = CliProgress(enabled=not quiet)
    try:
        result = build_index(options, progress)
    finally:
        progress.close()
    if not quiet:
        state = "up to date" if result.up_to_date else f"built, {result.encoded} encoded in {result.seconds:.1f}s"
        click.echo(f"{name}: {state}; generation {result.generation}, {result.rows} rows", err=True)
