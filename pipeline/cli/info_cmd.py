"""`bmsearch info` and `bmsearch list`: what indexes exist and what they hold."""

from __future__ import annotations

import json

import click

from pipeline.cli.options import index_dir_option
from pipeline.cli.output import emit_json, format_table, handle_errors


@click.command()
@click.argument("name", required=False)
@index_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@handle_errors
def info(name: str | None, index_dir: str, as_json: bool) -> None:
    """Show the manifest and counts of index NAME (default: the only index present)."""
    from pipeline.layout import resolve_name
    from pipeline.manifest import describe_model, read_manifest

    paths = resolve_name(index_dir, name)
    manifest = read_manifest(paths.require_current())
    if as_json:
        emit_json(manifest)
        return
    counts, model, index = manifest["counts"], manifest["model"], manifest["index"]
    lines = [
        f"index       {paths.name} (generation {manifest['generation']}, created {manifest['created']})",
        f"model       {model['name']} ({describe_model(model)}, max length {model['max_seq_length']})",
        f"rows        {counts['rows']} ({counts['new']} new, {counts['changed']} changed, {counts['removed']} removed, "
        f"{counts['skipped_empty']} empty skipped in the last run)",
        f"text        column {manifest['corpus']['text_column']!r}; ids: {manifest['corpus']['id_scheme']}",
        f"vectors     {index['type']}, {index['ntotal']} x {index['dimension']}"
        + (
            f", recall@10 {index['recall']:.3f} (target {index['recall_target']})"
            if index.get("recall") is not None
            else ""
        )
        + (f", {index['index_bytes'] / 2**20:.1f} MiB" if index.get("index_bytes") else "")
        + (f", built in {index['build_seconds']:.1f}s" if index.get("build_seconds") else "")
        + (f", search params {json.dumps(index['search_params'])}" if index.get("search_params") else ""),
        f"sources     {len(manifest['sources'])} file(s): "
        + ", ".join(s["name"] for s in manifest["sources"][:5])
        + (" ..." if len(manifest["sources"]) > 5 else ""),
    ]
    if manifest.get("lexical"):
        lines.append(f"lexical     {manifest['lexical'].get('type', 'bm25')}")
    click.echo("\n".join(lines))


@click.command("list")
@index_dir_option
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def list_indexes(index_dir: str, as_json: bool) -> None:
    """List the indexes in the index directory."""
    from pipeline.layout import list_indexes as find
    from pipeline.manifest import read_manifest

    rows = []
    for paths in find(index_dir):
        manifest = read_manifest(paths.require_current())
        rows.append(
            {
                "name": paths.name,
                "generation": manifest["generation"],
                "rows": manifest["counts"]["rows"],
                "model": manifest["model"]["name"],
                "index": manifest["index"]["type"],
                "created": manifest["created"],
            }
        )
    if as_json:
        emit_json(rows)
    elif rows:
        click.echo(format_table(rows, list(rows[0])))
    else:
        click.echo(f"no indexes in {index_dir}", err=True)
