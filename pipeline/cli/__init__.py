"""The `bmsearch` command: a thin Click layer that parses options, calls the library and reports."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

from pipeline import __version__

# name -> "module:attribute"; modules load only when their command runs, so --help stays instant.
COMMANDS = {
    "index": "pipeline.cli.index_cmd:index",
    "query": "pipeline.cli.query_cmd:query",
    "info": "pipeline.cli.info_cmd:info",
    "list": "pipeline.cli.info_cmd:list_indexes",
    "bench": "pipeline.cli.bench_cmd:bench",
    "eval": "pipeline.cli.eval_cmd:eval_group",
    "finetune": "pipeline.cli.finetune_cmd:finetune",
    "serve": "pipeline.cli.serve_cmd:serve",
}
SHORT_HELP = {
    "index": "Embed Parquet corpora and build (or update) a search index.",
    "query": "Search an index with one query or a file of queries.",
    "info": "Show an index's manifest and counts.",
    "list": "List the indexes in the index directory.",
    "bench": "Benchmark the encoder, the indexes or the server.",
    "eval": "Evaluate a model (STS) or an index (retrieval).",
    "finetune": "Fine-tune a sentence embedding model (NLI, STS).",
    "serve": "Serve indexes over HTTP.",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if _available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _available(cmd_name):
            return None
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP[name]) for name in self.list_commands(ctx)]
        if not rows:
            return
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _available(name: str) -> bool:
    module = COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bmsearch")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """bmsearch: embed Parquet text corpora with BERT, search them with FAISS and DuckDB."""
    ctx.obj = {"debug": debug}
    from pipeline.cli.output import setup_logging

    setup_logging(debug)


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="bmsearch")
