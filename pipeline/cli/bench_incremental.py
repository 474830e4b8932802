"""`bmsearch bench incremental`: how long scheduled re-runs take against a full build."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from pipeline.cli.options import backend_option, data_dir_option, record_option
from pipeline.cli.output import emit_json, handle_errors


@click.command("incremental")
@click.option("--model", "-m", required=True, help="Model directory or hub id.")
@click.option("--rows", type=click.IntRange(min=100), default=50_000, show_default=True)
@click.option("--new-fraction", type=click.FloatRange(0.0001, 1.0), default=0.01, show_default=True)
@click.option(
    "--changed-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Also edit this fraction of the existing rows' texts in the incremental run.",
)
@backend_option("auto")
@data_dir_option
@click.option("--json", "as_json", is_flag=True)
@record_option
@handle_errors
def command(
    model: str,
    rows: int,
    new_fraction: float,
    changed_fraction: float,
    backend: str,
    data_dir: Path | None,
    as_json: bool,
    record: Path | None,
) -> None:
    """Full build of --rows rows, then a run with --new-fraction more rows (and --changed-fraction of the rows
    edited), then a no-op run."""
    from pipeline.bench_common import append_record, shared_data_dir
    from pipeline.bench_incremental import markdown_section, run_incremental_bench

    data = data_dir or shared_data_dir()
    result = run_incremental_bench(model, rows, data, backend, new_fraction, changed_fraction=changed_fraction)
    if as_json:
        emit_json(result)
    else:
        for name, run in result["runs"].items():
            click.echo(f"{name:12s} rows {run['rows']:>8}  encoded {run['encoded']:>8}  {run['wall_s']:8.1f} s")
        click.echo(f"incremental / full = {result['incremental_ratio']:.1%}; no-op / full = {result['noop_ratio']:.1%}")
    if record:
        args = " ".join(shlex.quote(a) for a in sys.argv[1:])
        append_record(record, markdown_section(result, f"bmsearch {args}"))
