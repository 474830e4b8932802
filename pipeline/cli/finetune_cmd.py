"""`bmsearch finetune`: fine-tune a sentence embedding model on NLI or scored sentence pairs."""

from __future__ import annotations

import click

from pipeline.cli.output import CliProgress, emit_json, handle_errors


@click.command()
@click.option(
    "--base",
    default="prajjwal1/bert-medium",
    show_default=True,
    help="Model to start from: hub id (cached) or local directory.",
)
@click.option(
    "--train", "train_path", required=True, help="Training data: Parquet/CSV/TSV, STS csv, SNLI folder, SICK.txt."
)
@click.option("--out", required=True, help="Directory to write the fine-tuned model to.")
@click.option(
    "--loss",
    type=click.Choice(["mnrl", "softmax", "cosine"]),
    default="mnrl",
    show_default=True,
    help="mnrl: triplets from NLI; softmax: SBERT's 3-way classifier (for a plain BERT base and a large NLI set; "
    "it degrades an already trained sentence model); cosine: scored pairs.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "sts", "snli", "sick", "table"]),
    default="auto",
    show_default=True,
    help="Layout of --train.",
)
@click.option("--split", default=None, help="Split to read from SNLI (dev/test) or SICK (train/trial/test).")
@click.option("--premise-column", default=None, help="Column of first sentences [premise or sentence1].")
@click.option("--hypothesis-column", default=None, help="Column of second sentences [hypothesis or sentence2].")
@click.option("--label-column", default=None, help="Column of NLI labels [label].")
@click.option("--score-column", default=None, help="Column of similarity scores for --loss cosine [score].")
@click.option("--dev", default=None, help="Scored dev pairs (STS csv, SICK, table) evaluated during training.")
@click.option("--dev-format", type=click.Choice(["auto", "sts", "sick", "table"]), default="auto", show_default=True)
@click.option("--dev-split", default=None, help="Split of a SICK dev file [trial].")
@click.option(
    "--dev-columns",
    callback=lambda ctx, param, value: _dev_columns(value),
    default=None,
    metavar="S1,S2,SCORE",
    help="Column names of a table dev set [sentence1,sentence2,score].",
)
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=2e-5, show_default=True)
@click.option("--warmup-ratio", type=float, default=0.1, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--max-examples", type=int, default=None, help="Use only the first N training examples.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--max-seq-length", type=int, default=None, help="Truncate inputs to this many tokens.")
@click.option(
    "--save-steps", type=int, default=500, show_default=True, help="Checkpoint (and dev-evaluate) every N steps."
)
@click.option("--eval-steps", type=int, default=None, help="Dev-evaluate every N steps [--save-steps].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda (bf16 on GPU, fp32 on CPU).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint of an interrupted run.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep OUT.checkpoints after a successful run.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@handle_errors
def finetune(
    base: str,
    train_path: str,
    out: str,
    loss: str,
    fmt: str,
    split: str | None,
    premise_column: str | None,
    hypothesis_column: str | None,
    label_column: str | None,
    score_column: str | None,
    dev: str | None,
    dev_format: str,
    dev_split: str | None,
    dev_columns: tuple[str, str, str] | None,
    epochs: float,
    batch_size: int,
    lr: float,
    warmup_ratio: float,
    max_steps: int | None,
    max_examples: int | None,
    seed: int,
    max_seq_length: int | None,
    save_steps: int,
    eval_steps: int | None,
    device: str,
    resume: bool,
    overwrite: bool,
    keep_checkpoints: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Fine-tune BASE on sentence pairs and save a sentence-transformers model (mean pooling) to OUT."""
    from pipeline.finetune import FinetuneConfig
    from pipeline.finetune import finetune as run_finetune
    from pipeline.training_data import Columns

    config = FinetuneConfig(
        base=base,
        train=train_path,
        out=out,
        loss=loss,
        format=fmt,
        split=split,
        columns=Columns(premise_column, hypothesis_column, label_column, score_column),
        dev=dev,
        dev_format=dev_format,
        dev_split=dev_split,
        dev_columns=Columns(*dev_columns[:2], score=dev_columns[2]) if dev_columns else Columns(),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_ratio=warmup_ratio,
        max_steps=max_steps,
        seed=seed,
        max_seq_length=max_seq_length,
        save_steps=save_steps,
        eval_steps=eval_steps,
        max_examples=max_examples,
        device=device,
        resume=resume,
        overwrite=overwrite,
        keep_checkpoints=keep_checkpoints,
    )
    result = run_finetune(config, progress=CliProgress(enabled=not quiet))
    if as_json:
        data = result.to_dict()
        data.pop("log_history")
        emit_json(data)
        return

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}"

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    click.echo(
        f"Saved {result.out}: {result.loss} on {result.train_examples} examples, {result.steps} steps "
        f"in {result.seconds:.0f} s ({result.examples_per_s:.1f} examples/s, {result.device}/{result.precision})"
    )
    click.echo(f"training loss {num(result.train_loss_start)} -> {num(result.train_loss_end)}")
    if result.dev_after is not None:
        click.echo(f"dev Spearman {pct(result.dev_before)} -> {pct(result.dev_after)}")


def _dev_columns(value: str | None) -> tuple[str, str, str] | None:
    if value is None:
        return None
    names = [n.strip() for n in value.split(",")]
    if len(names) != 3 or not all(names):
        raise click.BadParameter(
            "give three column names: first sentence, second sentence, score", param_hint="--dev-columns"
        )
    return names[0], names[1], names[2]
