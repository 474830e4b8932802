"""`bmsearch eval make-lexical-set`: a synthetic exact-token query set drawn from a BEIR folder's corpus."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.output import emit_json, handle_errors

# name -> (filler words beside the unique word, whether the source's queries carry it)
TEMPLATES = {"unique+2": (2, False), "unique+1": (1, False), "unique": (0, False), "query+unique": (0, True)}


@click.command("make-lexical-set")
@click.argument("beir_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--queries", "n_queries", type=click.IntRange(1), default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the draw.")
@click.option(
    "--template",
    type=click.Choice(list(TEMPLATES)),
    default="unique+2",
    show_default=True,
    help="A document's unique word with 2, 1 or no words of document frequency 5-200 from it, or added to "
    "each judged query of the source (query+unique: one relevant document's word, the source's judgements).",
)
@click.option("--min-length", type=click.IntRange(1), default=6, show_default=True, help="Unique word's length.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it holds files.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
@handle_errors
def make_lexical_set(
    beir_dir: Path, out: Path, n_queries: int, seed: int, template: str, min_length: int, overwrite: bool, as_json: bool
) -> None:
    """Write a BEIR folder OUT whose queries each name a word found in exactly one document of BEIR_DIR's corpus.

    That document is the query's only relevant one; the corpus is linked, not copied. Evaluate it against the
    source's index: `bmsearch eval retrieval --beir OUT --index <source index>`.
    """
    from pipeline.lexical_sets import LexicalSetSpec
    from pipeline.lexical_sets import make_lexical_set as make

    fillers, with_queries = TEMPLATES[template]
    spec = LexicalSetSpec(n_queries, seed, fillers, min_length, with_queries=with_queries)
    result = make(beir_dir, out, spec, overwrite=overwrite)
    if as_json:
        emit_json(
            {
                "out": str(result.out),
                "queries": result.queries,
                "candidates": result.candidates,
                "docs": result.docs,
                "template": template,
                "seed": seed,
            }
        )
        return
    click.echo(
        f"{result.queries} queries written to {result.out} "
        f"({result.candidates} of {result.docs} documents have a unique word)"
    )
