"""`bmsearch bench encode`: figures for all three stages, agreement, JSON and markdown output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.bench_encode import (
    EncodeBenchConfig,
    load_corpus,
    ndcg_at_10,
    run_encode_bench,
    sts_sentences,
    synthetic_corpus,
)
from pipeline.cli import cli
from pipeline.encode import EncoderConfig
from pipeline.errors import DataError


@pytest.fixture(scope="module")
def result(tiny_model: Path) -> dict:
    config = EncodeBenchConfig(
        corpus="synthetic",
        rows=90,
        mean_tokens=20,
        model=str(tiny_model),
        encoder=EncoderConfig(device="cpu", backend="torch"),
        st_batch_sizes=(16, 64),
        read_rows=25,
        passes=2,
    )
    return run_encode_bench(config)


def test_three_stages_with_ratios(result: dict) -> None:
    names = [s["name"] for s in result["stages"]]
    assert names == ["st_default", "st_best", "bmsearch"]
    default, best, ours = result["stages"]
    assert default["batch_size"] == 32 and best["batch_size"] in (16, 64)
    assert set(best["sweep_rows_per_s"]) == {"16", "64"}
    for stage in result["stages"]:
        assert stage["rows"] == 90 and stage["seconds"] > 0 and stage["peak_rss_mb"] > 0
        assert stage["tokens_per_s"] == pytest.approx(result["corpus"]["tokens"] / stage["seconds"])
    assert ours["vs_st_default"] == pytest.approx(default["seconds"] / ours["seconds"])
    assert ours["vs_st_best"] == pytest.approx(best["seconds"] / ours["seconds"])
    assert default["vs_st_default"] == pytest.approx(1.0)
    assert len(ours["pass_seconds"]) == 2 and ours["seconds"] == min(ours["pass_seconds"])


def test_agreement_is_measured_against_sentence_transformers(result: dict) -> None:
    assert result["encoder"]["backend"] == "torch"
    assert 0.9999 <= result["agreement"]["min_cosine"] <= result["agreement"]["mean_cosine"] <= 1.0 + 1e-6
    # The tiny tokenizer splits the synthetic words into pieces, so tokens outnumber words.
    assert result["corpus"]["rows"] == 90 and result["corpus"]["mean_tokens"] > 10
    assert result["machine"]["cpu_count"] >= 1


def test_cli_json_and_record(tiny_model: Path, tmp_path: Path) -> None:
    record = tmp_path / "benchmarks.md"
    record.write_text("# Benchmarks\n\nsomeone else's section\n")
    args = [
        "bench",
        "encode",
        "--corpus",
        "synthetic",
        "--rows",
        "40",
        "--mean-tokens",
        "12",
        "--model",
        str(tiny_model),
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--json",
        "--record",
        str(record),
    ]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert [s["name"] for s in data["stages"]] == ["st_default", "st_best", "bmsearch"]
    assert data["command"].startswith("bmsearch bench encode --corpus synthetic")
    text = record.read_text()
    assert text.startswith("# Benchmarks\n\nsomeone else's section\n")
    assert "## Encoder: synthetic" in text and "| (c) bmsearch torch" in text and "Machine:" in text


def test_cli_text_output(tiny_model: Path) -> None:
    # Default --mean-tokens (64 words) runs past the tiny model's 128 positions: it must be truncated.
    args = [
        "bench",
        "encode",
        "--corpus",
        "synthetic",
        "--rows",
        "30",
        "--model",
        str(tiny_model),
        "--backend",
        "torch",
        "--device",
        "cpu",
        "--passes",
        "2",
        "--quiet",
    ]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert "(a) ST encode, batch 32" in out.output and "agreement of (c) with (a)" in out.output
    assert "max 128)" in out.output and re.search(r"\(c\) passes: [0-9.]+ s, [0-9.]+ s", out.output)


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--corpus synthetic"):
        load_corpus("sts", tmp_path / "absent", 10)
    assert len(load_corpus("synthetic", tmp_path / "absent", 10, mean_tokens=30)) == 10


def test_synthetic_lengths_follow_mean() -> None:
    short = synthetic_corpus(200, 10)
    long = synthetic_corpus(200, 100)
    assert np.mean([len(t.split()) for t in short]) < 12 < 80 < np.mean([len(t.split()) for t in long])
    assert synthetic_corpus(5, 20, seed=1) == synthetic_corpus(5, 20, seed=1)


def test_ndcg_at_10() -> None:
    docs = ["a", "b", "c", "d"]
    qrels = {"b": 2, "d": 1}
    perfect = ndcg_at_10(np.array([0.1, 0.9, 0.0, 0.5]), docs, qrels)
    assert perfect == pytest.approx(1.0)
    swapped = ndcg_at_10(np.array([0.1, 0.5, 0.0, 0.9]), docs, qrels)
    expected = (1 / np.log2(2) + 2 / np.log2(3)) / (2 / np.log2(2) + 1 / np.log2(3))
    assert swapped == pytest.approx(expected)
    assert ndcg_at_10(np.array([0.9, 0.0, 0.1, 0.0]), docs, {"a": 0}) == 0.0


def test_sts_sentences_parse_real_files(shared_data: Path) -> None:
    texts = sts_sentences(shared_data)
    assert len(texts) > 10_000 and len(set(texts)) == len(texts)
    assert all("\t" not in t for t in texts[:1000])


@pytest.mark.slow
def test_minilm_onnx_int8_bench_on_sts(minilm_path: Path, shared_data: Path) -> None:
    config = EncodeBenchConfig(
        corpus="sts",
        data_dir=shared_data,
        rows=600,
        model=str(minilm_path),
        encoder=EncoderConfig(device="cpu", backend="onnx-int8"),
    )
    result = run_encode_bench(config)
    assert result["agreement"]["mean_cosine"] >= 0.99
    assert result["encoder"]["backend"] == "onnx-int8"
