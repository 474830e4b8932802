"""`bmsearch info` and `bmsearch list`: what indexes exist and what they hold."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli.options import index_dir_option
from pipeline.cli.output import emit_json, format_table, handle_errors
from pipeline.errors import BmsearchError

if TYPE_CHECKING:
    from pipeline.layout import IndexPaths


@click.command()
@click.argument("name", required=False)
@click.option("--index", "-i", "index_name", default=None, help="Index name, as query and serve take it (or NAME).")
@index_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@handle_errors
def info(name: str | None, index_name: str | None, index_dir: str, as_json: bool) -> None:
    """Show the manifest and counts of index NAME or --index (default: the only index present)."""
    from pipeline.layout import resolve_name
    from pipeline.manifest import describe_model, read_manifest

    if name and index_name and name != index_name:
        raise click.UsageError(f"two index names given ({name!r} and --index {index_name!r}); give one")
    paths = resolve_name(index_dir, name or index_name)
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
    """List the indexes in the index directory; one that cannot be read is listed with its error (exit 1), one
    whose first build has not committed yet (running, or interrupted) with that state."""
    from pipeline.layout import index_folders

    folders = index_folders(index_dir)
    rows = [_list_row(paths) for paths in folders]
    broken = [row["name"] for row, paths in zip(rows, folders, strict=True) if row["error"] and _committed(paths)]
    if as_json:
        emit_json(rows)
    elif rows:
        columns = [c for c in LIST_COLUMNS if c != "error" or any(row["error"] for row in rows)]
        click.echo(format_table(rows, columns, uncut={"error"}))
    else:
        click.echo(f"no indexes in {index_dir}", err=True)
    if broken:
        raise click.ClickException(f"{len(broken)} of {len(rows)} indexes cannot be read: {', '.join(broken)}")


LIST_COLUMNS = ("name", "generation", "rows", "model", "index", "created", "error")


def _committed(paths: IndexPaths) -> bool:
    return paths.current_file.exists()


def _list_row(paths: IndexPaths) -> dict[str, Any]:
    """One row of `list`: the manifest's summary, or the error that reading it raised (other fields None)."""
    from pipeline.manifest import read_manifest

    row: dict[str, Any] = dict.fromkeys(LIST_COLUMNS)
    row["name"] = paths.name
    try:
        manifest = read_manifest(paths.require_current())
        row.update(
            generation=manifest["generation"],
            rows=manifest["counts"]["rows"],
            model=manifest["model"]["name"],
            index=manifest["index"]["type"],
            created=manifest["created"],
        )
    except BmsearchError as exc:
        row["error"] = str(exc)
    except (KeyError, TypeError) as exc:  # a manifest that parses but lacks a field or nests otherwise
        row["error"] = f"its manifest does not have the expected fields ({type(exc).__name__}: {exc})"
    return row
