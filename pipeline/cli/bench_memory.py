"""`bmsearch bench memory`: peak RSS of `bmsearch index` at two corpus sizes."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from pipeline.cli.options import backend_option, data_dir_option, record_option
from pipeline.cli.output import emit_json, handle_errors


def _sizes(ctx: click.Context, param: click.Parameter, text: str) -> list[int]:
    """--rows '100000,1000000' -> [100000, 1000000], sorted; anything but positive whole numbers is a usage error."""
    try:
        sizes = sorted(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of row counts") from None
    if any(n < 1 for n in sizes):
        raise click.BadParameter("row counts must be at least 1")
    return sizes


@click.command("memory")
@click.option(
    "--rows",
    "sizes",
    default="100000,1000000",
    show_default=True,
    callback=_sizes,
    help="Comma-separated corpus sizes.",
)
@click.option("--model", "-m", default=None, help="Model to index with [default: a random --arch model].")
@click.option("--arch", default="bert-tiny", show_default=True, help="Random-weight architecture when no --model.")
@backend_option("torch")
@data_dir_option
@click.option("--json", "as_json", is_flag=True)
@record_option
@handle_errors
def command(
    sizes: list[int],
    model: str | None,
    arch: str,
    backend: str,
    data_dir: Path | None,
    as_json: bool,
    record: Path | None,
) -> None:
    """Index each corpus size from scratch in its own process and report peak RSS and the ratio."""
    from pipeline.bench_common import append_record, shared_data_dir
    from pipeline.bench_memory import markdown_section, run_memory_bench

    data = data_dir or shared_data_dir()
    result = run_memory_bench(sizes, data, model, arch, backend)
    if as_json:
        emit_json(result)
    else:
        for run in result["runs"]:
            click.echo(f"{run['rows']:>9} rows  peak RSS {run['peak_rss_mb']:7.0f} MiB  {run['seconds']:6.0f} s")
        click.echo(f"ratio {result['ratio']:.2f}x")
    if record:
        append_record(record, markdown_section(result, "bmsearch " + " ".join(shlex.quote(a) for a in sys.argv[1:])))
