"""`bmsearch bench memory`: peak RSS of `bmsearch index` at two corpus sizes."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from pipeline.cli.options import backend_option, data_dir_option, record_option
from pipeline.cli.output import emit_json, handle_errors


@click.command("memory")
@click.option("--rows", default="100000,1000000", show_default=True, help="Comma-separated corpus sizes.")
@click.option("--model", "-m", default=None, help="Model to index with [default: a random --arch model].")
@click.option("--arch", default="bert-tiny", show_default=True, help="Random-weight architecture when no --model.")
@backend_option("torch")
@data_dir_option
@click.option("--json", "as_json", is_flag=True)
@record_option
@handle_errors
def command(
    rows: str, model: str | None, arch: str, backend: str, data_dir: Path | None, as_json: bool, record: Path | None
) -> None:
    """Index each corpus size from scratch in its own process and report peak RSS and the ratio."""
    from pipeline.bench_common import append_record
    from pipeline.bench_memory import markdown_section, run_memory_bench

    sizes = sorted(int(x) for x in rows.split(","))
    from pipeline.bench_common import shared_data_dir

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
