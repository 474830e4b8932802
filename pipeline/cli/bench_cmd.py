"""`bmsearch bench`: a group whose subcommands (encode, index, serve) live in their own modules."""

from __future__ import annotations

import importlib
import importlib.util

import click

SUBCOMMANDS = {
    "encode": ("pipeline.cli.bench_encode", "Encoder throughput against sentence-transformers' encode."),
    "index": ("pipeline.cli.bench_index", "Index build time, memory, size, recall and latency."),
    "serve": ("pipeline.cli.bench_serve", "Server QPS and latency under concurrent clients."),
    "incremental": ("pipeline.cli.bench_incremental", "Full build vs a 1% incremental run vs a no-op run."),
    "memory": ("pipeline.cli.bench_memory", "Peak RSS of `bmsearch index` at two corpus sizes."),
}


class _BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n, (mod, _) in SUBCOMMANDS.items() if importlib.util.find_spec(mod) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.list_commands(ctx):
            return None
        command: click.Command = importlib.import_module(SUBCOMMANDS[cmd_name][0]).command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, SUBCOMMANDS[n][1]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmarks; each prints its figures and can append them to docs/benchmarks.md."""
