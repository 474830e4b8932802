"""`bmsearch eval`: a group with `sts` and `nli` here and `retrieval` loaded from its own module when present."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

import click

from pipeline.cli.options import F, backend_option
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
    """Evaluate a model on sentence similarity (sts) or entailment pairs (nli), or an index on retrieval."""


def _pair_options(data_help: str, split_help: str, formats: list[str], gold: str) -> Callable[[F], F]:
    """Options of the pair evaluations: model, data and its columns, encoder, output."""

    def decorate(func: F) -> F:
        options: list[Callable[[F], F]] = [
            click.option(
                "--model",
                "-m",
                "model",
                default="prajjwal1/bert-medium",
                show_default=True,
                help="Hub id (cached) or local model directory.",
            ),
            click.option("--data", required=True, help=data_help),
            click.option("--split", default=None, help=split_help),
            click.option("--format", "fmt", type=click.Choice(formats), default="auto", show_default=True),
            click.option("--sentence1-column", default=None, help="Table column of first sentences [sentence1]."),
            click.option("--sentence2-column", default=None, help="Table column of second sentences [sentence2]."),
            click.option(f"--{gold}-column", "gold_column", default=None, help=f"Table column of gold {gold}s."),
            click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
            click.option("--max-seq-length", type=int, default=None, help="Truncate inputs to this many tokens."),
            backend_option("auto", "Encoder backend (auto: torch on GPU, the CPU default on CPU)."),
            click.option("--threads", type=int, default=None, help="CPU threads for the forward pass."),
            click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
            click.option("--quiet", "-q", is_flag=True, help="No progress output."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _evaluate(kind: str, options: dict[str, Any]) -> Any:
    """Run the sts or nli evaluation the command's options describe."""
    from pipeline.encode import EncoderConfig
    from pipeline.evaluate import evaluate_nli, evaluate_sts
    from pipeline.training_data import Columns

    gold = {"sts": "score", "nli": "label"}[kind]
    evaluate = evaluate_sts if kind == "sts" else evaluate_nli
    return evaluate(
        options["model"],
        options["data"],
        split=options["split"],
        format=options["fmt"],
        columns=Columns(
            premise=options["sentence1_column"],
            hypothesis=options["sentence2_column"],
            **{gold: options["gold_column"]},
        ),
        encoder_config=EncoderConfig(
            device=options["device"],
            max_seq_length=options["max_seq_length"],
            backend=options["backend"],
            threads=options["threads"],
        ),
        progress=CliProgress(enabled=not options["quiet"]),
    )


def _show(result: Any, as_json: bool, figures: dict[str, Any]) -> None:
    """The result as JSON, or its model line and a one-row table of data, pairs and the figures."""
    if as_json:
        emit_json(result.to_dict())
        return
    row = {"data": f"{result.data}" + (f" [{result.split}]" if result.split else ""), "pairs": result.pairs, **figures}
    click.echo(f"model: {result.model} (backend {result.backend})")
    click.echo(format_table([row], list(row), max_width=100))


@eval_group.command("sts")
@_pair_options(
    "STS benchmark csv (or its folder with --split), SICK.txt, or Parquet/CSV with scores.",
    "STS folder: train/dev/test; SICK: train/trial/test [test].",
    ["auto", "sts", "sick", "table"],
    "score",
)
@handle_errors
def sts(**options: Any) -> None:
    """Spearman and Pearson (x100) of cosine similarity against gold similarity scores."""
    result = _evaluate("sts", options)
    _show(result, options["as_json"], {"spearman": round(result.spearman, 2), "pearson": round(result.pearson, 2)})


@eval_group.command("nli")
@_pair_options(
    "SNLI folder (s1.*, s2.*, labels.*), SICK.txt, or Parquet/CSV with labels.",
    "SNLI: dev/test; SICK: train/trial/test [test].",
    ["auto", "snli", "sick", "table"],
    "label",
)
@handle_errors
def nli(**options: Any) -> None:
    """How well cosine similarity separates entailed from contradicted pairs (x100): average precision and
    best-threshold accuracy, and Spearman against the order entailment > neutral > contradiction."""
    result = _evaluate("nli", options)
    figures = {"ap": round(result.ap, 2), "accuracy": round(result.accuracy, 2), "threshold": result.threshold}
    _show(result, options["as_json"], {**figures, "spearman": round(result.spearman, 2)})
    if options["as_json"]:
        return
    counts = ", ".join(
        f"{name} {n} (mean cosine {result.mean_cosine[name]:.3f})" for name, n in result.label_counts.items()
    )
    click.echo(f"pairs: {counts}")
