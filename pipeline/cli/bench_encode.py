"""`bmsearch bench encode`: encoder throughput against sentence-transformers' encode, in one process."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import click

from pipeline.cli.options import backend_option, bench_output_options, data_dir_option
from pipeline.cli.output import CliProgress, emit_json, format_table, handle_errors


@click.command("encode")
@click.option(
    "--corpus",
    type=click.Choice(["sts", "imdb-sentences", "imdb", "msmarco", "synthetic"]),
    default="sts",
    show_default=True,
    help="Short sentences (sts, imdb-sentences), passages (imdb, msmarco) or generated text.",
)
@data_dir_option
@click.option("--rows", type=click.IntRange(min=1), default=None, help="Cap the corpus at this many texts.")
@click.option(
    "--mean-tokens",
    type=click.IntRange(min=3),
    default=64,
    show_default=True,
    help="Mean length of the synthetic corpus.",
)
@click.option("--model", default=None, help="Model directory or hub id [default: the packaged MiniLM].")
@click.option(
    "--arch",
    type=click.Choice(["bert-medium"]),
    default=None,
    help="Benchmark this architecture with random weights (no hub needed).",
)
@backend_option("auto")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--token-budget", type=click.IntRange(min=1), default=None, help="Padded tokens per batch.")
@click.option("--max-seq-length", type=click.IntRange(min=2), default=None, help="Truncate texts to this many tokens.")
@click.option(
    "--read-rows",
    type=click.IntRange(min=1),
    default=8192,
    show_default=True,
    help="Rows per Parquet record batch, the encoder's chunk.",
)
@click.option(
    "--tokenizer-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Tokeniser processes (0: one background thread) [default: by device and cores].",
)
@click.option(
    "--passes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run (c) this many times; the fastest pass counts (a GPU's first pass grows its memory pools).",
)
@click.option("--compile/--no-compile", "torch_compile", default=None, help="torch.compile the model (GPU).")
@click.option(
    "--quality",
    is_flag=True,
    help="Also measure nDCG@10 on mini_msmarco and mini_dbpedia for torch, onnx and onnx-int8.",
)
@bench_output_options
@handle_errors
def command(
    corpus: str,
    data_dir: Path | None,
    rows: int | None,
    mean_tokens: int,
    model: str | None,
    arch: str | None,
    backend: str,
    device: str,
    precision: str,
    token_budget: int | None,
    max_seq_length: int | None,
    read_rows: int,
    passes: int,
    tokenizer_workers: int | None,
    torch_compile: bool | None,
    quality: bool,
    as_json: bool,
    record: Path | None,
    quiet: bool,
) -> None:
    """Time the same corpus through sentence-transformers' encode (batch 32, then its best batch size)
    and through bmsearch's encoder from a Parquet file to embedding shards on disk (written as `bmsearch
    index` writes them); report rows/s, tokens/s, ratios, peak RSS and the cosine agreement of bmsearch's
    embeddings with sentence-transformers'."""
    from pipeline.bench_common import default_model
    from pipeline.bench_common import shared_data_dir as default_data_dir
    from pipeline.bench_encode import EncodeBenchConfig, check_quality_data, retrieval_quality, run_encode_bench
    from pipeline.encode import EncoderConfig

    encoder = EncoderConfig(
        device=device,
        precision=precision,
        backend=backend,
        token_budget=token_budget,
        max_seq_length=max_seq_length,
        tokenizer_workers=tokenizer_workers,
        torch_compile=torch_compile,
    )
    config = EncodeBenchConfig(
        corpus=corpus,
        data_dir=data_dir,
        rows=rows,
        mean_tokens=mean_tokens,
        model=model,
        arch=arch,
        encoder=encoder,
        read_rows=read_rows,
        passes=passes,
    )
    quality_dir = data_dir or default_data_dir()
    if quality:
        check_quality_data(quality_dir)  # before the throughput run, not after it
    progress = CliProgress(enabled=not quiet and not as_json)
    result = run_encode_bench(config, progress)
    if quality:
        result["quality"] = retrieval_quality(model or default_model(), quality_dir, progress=progress)
        progress.close()
    result["command"] = _command_line(click.get_current_context())
    if as_json:
        emit_json(result)
    else:
        click.echo(render_text(result))
    if record is not None:
        from pipeline.bench_common import append_record

        append_record(record, render_markdown(result))
        if not as_json and not quiet:
            click.echo(f"Appended to {record}", err=True)


def _command_line(ctx: click.Context) -> str:
    """The options given on the command line, re-quoted (defaults left out)."""
    from click.core import ParameterSource

    words = ["bmsearch", "bench", "encode"]
    for param in ctx.command.params:
        name = param.name or ""
        if ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[name]
        flag = max(param.opts, key=len) if value is not False else max(param.secondary_opts, key=len)
        words.append(flag if isinstance(value, bool) else f"{flag} {shlex.quote(str(value))}")
    return " ".join(words)


_COLUMNS = ("name", "batch", "rows/s", "tokens/s", "vs ST default", "vs ST best", "seconds", "peak RSS MB")


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    labels = {
        "st_default": "(a) ST encode, batch 32",
        "st_best": "(b) ST encode, best batch",
        "bmsearch": f"(c) bmsearch {result['encoder']['backend']}, Parquet->shards",
    }
    return [
        {
            "name": labels.get(s["name"], s["name"]),
            "batch": s.get("batch_size") or f"{s.get('token_budget')} tok",
            "rows/s": f"{s['rows_per_s']:,.1f}",
            "tokens/s": f"{s['tokens_per_s']:,.0f}",
            "vs ST default": f"{s['vs_st_default']:.2f}x",
            "vs ST best": f"{s['vs_st_best']:.2f}x",
            "seconds": f"{s['seconds']:.1f}",
            "peak RSS MB": f"{s['peak_rss_mb']:,.0f}",
        }
        for s in result["stages"]
    ]


def _padding(stage: dict[str, Any]) -> str:
    return f"; {stage['forward_passes']:,} forward passes a pass, {stage['padding']:.3f} computed tokens per real token"


def _summary(result: dict[str, Any]) -> list[str]:
    c, e, a, m = result["corpus"], result["encoder"], result["agreement"], result["machine"]
    lines = [
        f"corpus {c['name']}: {c['rows']:,} rows, {c['tokens']:,} tokens (mean {c['mean_tokens']:.1f}, "
        f"max {c['max_tokens']}); model {result['model']['name']} (dim {result['model']['dimension']}, "
        f"max_seq_length {result['model']['max_seq_length']})",
        f"bmsearch: backend {e['backend']}, device {e['device']}, {e['precision']}, token budget "
        f"{e['token_budget']}, tokenizer workers {e['tokenizer_workers']}, threads {e['threads']}, "
        f"torch.compile {'on' if e.get('torch_compile') else 'off'}, replicas {len(e.get('devices') or [1])}, "
        f"setup {e['setup_s']:.1f} s",
        f"agreement of (c) with (a): mean cosine {a['mean_cosine']:.5f}, min {a['min_cosine']:.5f}",
        "(c) passes: "
        + ", ".join(f"{x:.2f} s" for x in result["stages"][-1].get("pass_seconds", []))
        + _padding(result["stages"][-1]),
        f"machine: {m['cpu']}, {m['cpu_count']} CPUs, GPU {m['gpu'] or 'none'}, "
        f"load average at end {', '.join(f'{x:.1f}' for x in m.get('load_average') or [])}",
    ]
    if e.get("int8_check"):
        lines.append(f"int8 calibration check: mean cosine {e['int8_check']['mean_cosine']:.4f}")
    return lines


def _quality_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, data in result.get("quality", {}).get("datasets", {}).items():
        for backend, r in data["backends"].items():
            rows.append(
                {
                    "data set": name,
                    "backend": backend,
                    "nDCG@10": f"{r['ndcg_at_10']:.2f}",
                    "queries": r["queries"],
                    "mean cos": f"{r.get('mean_cosine', 1.0):.4f}",
                    "min cos": f"{r.get('min_cosine', 1.0):.4f}",
                    "encode s": f"{r['encode_s']:.1f}",
                }
            )
    return rows


_QUALITY_COLUMNS = ("data set", "backend", "nDCG@10", "queries", "mean cos", "min cos", "encode s")


def render_text(result: dict[str, Any]) -> str:
    parts = [format_table(_rows(result), _COLUMNS), "", *_summary(result)]
    if result.get("quality"):
        parts += ["", format_table(_quality_rows(result), _QUALITY_COLUMNS)]
    return "\n".join(parts)


def _markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(result: dict[str, Any]) -> str:
    """A section for docs/benchmarks.md: command, machine, figures."""
    m = result["machine"]
    parts = [
        f"\n## Encoder: {result['corpus']['name']}, {result['model']['name']}, "
        f"{result['encoder']['backend']} ({time.strftime('%Y-%m-%d')})\n",
        f"Command: `{result['command']}`\n",
        f"Machine: {m['cpu']}; os.cpu_count() {m['cpu_count']}, usable cores {m.get('cores_usable')}; "
        f"GPU {m['gpu'] or 'none'}; torch {m['torch']}, onnxruntime {m.get('onnxruntime', '-')}\n",
        _markdown_table(_rows(result), _COLUMNS) + "\n",
        "\n".join(f"- {line}" for line in _summary(result)) + "\n",
    ]
    if result.get("quality"):
        parts.append(_markdown_table(_quality_rows(result), _QUALITY_COLUMNS) + "\n")
    return "\n".join(parts)
