"""`bmsearch eval`: a group with `sts` here and `retrieval` loaded from its own module when present."""

from __future__ import annotations

import importlib
import importlib.util

import click

from pipeline.cli.options import backend_option
from pipeline.cli.output import CliProgress, emit_json, format_table, handle_errors

# name -> ("module:attribute", short help); loaded on first use so `bmsearch eval --help` stays fast.
LAZY_SUBCOMMANDS = {
    "retrieval": ("pipeline.cli.eval_retrieval:retrieval", "nDCG@10, recall and MRR of an index against qrels."),
    "make-lexical-set": (
        "pipeline.cli.eval_lexical_set:make_lexical_set",
        "Draw exact-token queries (a word unique to one document) from a BEIR corpus.",
    ),
}


class _EvalGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [n for n, (target, _) in LAZY_SUBCOMMANDS.items() if _found(target)]
        return sorted([*self.commands, *lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        entry = LAZY_SUBCOMMANDS.get(cmd_name)
        if entry is None or not _found(entry[0]):
            return None
        module, attr = entry[0].split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(80)))
            else:
                rows.append((name, LAZY_SUBCOMMANDS[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _found(target: str) -> bool:
    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(cls=_EvalGroup)
def eval_group() -> None:
    """Evaluate a model on sentence similarity (sts) or an index on retrieval."""


@eval_group.command("sts")
@click.option(
    "--model",
    "-m",
    "model",
    default="prajjwal1/bert-medium",
    show_default=True,
    help="Hub id (cached) or local model directory.",
)
@click.option(
    "--data",
    required=True,
    help="STS benchmark csv (or its folder with --split), SICK.txt, or Parquet/CSV with scores.",
)
@click.option("--split", default=None, help="STS folder: train/dev/test; SICK: train/trial/test [test].")
@click.option("--format", "fmt", type=click.Choice(["auto", "sts", "sick", "table"]), default="auto", show_default=True)
@click.option("--sentence1-column", default=None, help="Table column of first sentences [sentence1].")
@click.option("--sentence2-column", default=None, help="Table column of second sentences [sentence2].")
@click.option("--score-column", default=None, help="Table column of gold scores [score].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--max-seq-length", type=int, default=None, help="Truncate inputs to this many tokens.")
@backend_option("auto", "Encoder backend (auto: torch on GPU, the CPU default on CPU).")
@click.option("--threads", type=int, default=None, help="CPU threads for the forward pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@handle_errors
def sts(
    model: str,
    data: str,
    split: str | None,
    fmt: str,
    sentence1_column: str | None,
    sentence2_column: str | None,
    score_column: str | None,
    device: str,
    max_seq_length: int | None,
    backend: str,
    threads: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Spearman and Pearson (x100) of cosine similarity against gold similarity scores."""
    from pipeline.encode import EncoderConfig
    from pipeline.evaluate import evaluate_sts
    from pipeline.training_data import Columns

    result = evaluate_sts(
        model,
        data,
        split=split,
        format=fmt,
        columns=Columns(premise=sentence1_column, hypothesis=sentence2_column, score=score_column),
        encoder_config=EncoderConfig(device=device, max_seq_length=max_seq_length, backend=backend, threads=threads),
        progress=CliProgress(enabled=not quiet),
    )
    if as_json:
        emit_json(result.to_dict())
        return
    row = {
        "data": f"{result.data}" + (f" [{result.split}]" if result.split else ""),
        "pairs": result.pairs,
        "spearman": round(result.spearman, 2),
        "pearson": round(result.pearson, 2),
    }
    click.echo(f"model: {result.model} (backend {result.backend})")
    click.echo(format_table([row], ["data", "pairs", "spearman", "pearson"], max_width=90))
