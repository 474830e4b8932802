"""Regressions from a black-box review of `bmsearch finetune` and `bmsearch eval`."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import DataError, UsageError
from pipeline.evaluate import load_sts_pairs, sts_data_path
from pipeline.finetune import FinetuneConfig, _dev_pairs, finetune
from pipeline.training_data import Columns, load_pairs
from tests.conftest import sample_texts
from tests.helpers import run


def write_sick(folder: Path) -> Path:
    """A SICK.txt with 6 TRAIN, 4 TRIAL and 4 TEST pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = sample_texts(28, seed=3)
    lines = ["pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set"]
    sets = ["TRAIN"] * 6 + ["TRIAL"] * 4 + ["TEST"] * 4
    labels = ["ENTAILMENT", "NEUTRAL", "CONTRADICTION"]
    for i, split in enumerate(sets):
        lines.append(f"{i}\t{texts[2 * i]}\t{texts[2 * i + 1]}\t{labels[i % 3]}\t{1 + (i % 5)}.0\t{split}")
    (folder / "SICK.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_snli(folder: Path, split: str, n_premises: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    s1, s2, labels = [], [], []
    for premise in sample_texts(n_premises, seed=5):
        for label in ("entailment", "neutral", "contradiction"):
            s1.append(premise)
            s2.append(" ".join(rng.sample(premise.split(), k=max(1, len(premise.split()) // 2))))
            labels.append(label)
    for stem, rows in (("s1", s1), ("s2", s2), ("labels", labels)):
        (folder / f"{stem}.{split}").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_nan_scores_in_a_table_are_refused(tmp_path: Path) -> None:
    # a NaN score used to train (NaN target) and gave `spearman nan` with exit 0 in eval sts
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"a": ["x y", "y z", "z w"], "b": ["x", "y", "z"], "s": [0.1, float("nan"), 0.9]}), path)
    with pytest.raises(DataError, match="NaN or infinite"):
        load_pairs(path, columns=Columns(premise="a", hypothesis="b", score="s"))


def test_nan_score_in_an_sts_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sts.csv"
    rows = [f"g\tf\t2016\t{i}\t{s}\tcat dog\tdog cat" for i, s in enumerate(["1.0", "nan", "4.0"])]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="is not a number"):
        load_pairs(path)


def test_sts_folder_without_split_reads_test(tmp_path: Path) -> None:
    # `eval sts --data stsbenchmark/` said "holds no SNLI files" though the help gives the split as [test]
    for split in ("dev", "test"):
        rows = [f"g\tf\t2016\t{i}\t{i}.0\tcat dog {i}\tdog {i}" for i in range(4)]
        (tmp_path / f"sts-{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert sts_data_path(tmp_path, None) == tmp_path / "sts-test.csv"
    assert load_sts_pairs(tmp_path).split == "test"
    with pytest.raises(DataError, match=r"no sts-val\.csv.*sts-dev\.csv, sts-test\.csv"):
        sts_data_path(tmp_path, "val")


def test_dev_sick_folder_defaults_to_trial(tmp_path: Path) -> None:
    # a SICK *folder* as --dev was read with load_pairs' default split, train
    folder = write_sick(tmp_path / "sick")
    config = FinetuneConfig(base="unused", train="unused", out=str(tmp_path / "out"), dev=str(folder))
    dev = _dev_pairs(config)
    assert dev is not None and dev.split == "trial" and len(dev) == 4


def test_dev_errors_name_the_dev_set(tmp_path: Path) -> None:
    config = FinetuneConfig(base="unused", train="unused", out=str(tmp_path / "out"), dev=str(tmp_path / "no.csv"))
    with pytest.raises(DataError, match=r"^dev set: "):
        _dev_pairs(config)


def test_max_examples_below_one_is_refused(tmp_path: Path) -> None:
    # 0 was ignored (all data used) and -5 silently dropped the last five examples
    for n in (0, -5):
        config = FinetuneConfig(base="unused", train="unused", out=str(tmp_path / "out"), max_examples=n)
        with pytest.raises(UsageError, match="--max-examples"):
            finetune(config)


def test_output_under_a_file_is_a_usage_error(tmp_path: Path) -> None:
    # used to train, then fail with an "unexpected NotADirectoryError" when saving the first checkpoint
    (tmp_path / "afile").write_text("x")
    config = FinetuneConfig(base="unused", train="unused", out=str(tmp_path / "afile" / "model"))
    with pytest.raises(UsageError, match="is a file, not a directory"):
        finetune(config)


def test_model_card_states_the_default_split(tiny_model: Path, tmp_path: Path) -> None:
    # the card named no split when the SNLI default (dev) was used, nor the dev set's split (SICK trial)
    snli = write_snli(tmp_path / "snli", "dev", 8)
    sick = write_sick(tmp_path / "sick")
    out = tmp_path / "model"
    config = FinetuneConfig(
        base=str(tiny_model),
        train=str(snli),
        out=str(out),
        dev=str(sick),
        batch_size=4,
        max_steps=1,
        max_seq_length=32,
        warmup_ratio=0.0,
    )
    result = finetune(config)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert result.train_split == "dev"
    assert "(snli, split dev)" in card
    assert "(sick, split trial, 4 pairs)" in card


def test_an_sts_file_of_another_split_than_asked_is_refused(tmp_path: Path) -> None:
    rows = [f"main\tf\t2012\t{i}\t{i % 5}.0\tsentence {i}\tother {i}" for i in range(4)]
    path = tmp_path / "sts-test.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert load_sts_pairs(path).split == "test" and load_sts_pairs(path, split="test").split == "test"
    with pytest.raises(UsageError, match="is the test split, not dev"):
        load_sts_pairs(path, split="dev")


def test_a_table_dev_set_with_its_own_column_names(tmp_path: Path) -> None:
    dev = tmp_path / "dev.parquet"
    pq.write_table(pa.table({"a": ["x one", "y two", "z three"], "b": ["x", "y", "q"], "gold": [0.9, 0.5, 0.1]}), dev)
    named = FinetuneConfig(
        base="unused", train="unused", out="unused", dev=str(dev), dev_columns=Columns("a", "b", score="gold")
    )
    pairs = _dev_pairs(named)
    assert pairs is not None and pairs.sentence1[0] == "x one" and pairs.scores == [0.9, 0.5, 0.1]
    with pytest.raises(DataError, match=r"^dev set: "):
        _dev_pairs(FinetuneConfig(base="unused", train="unused", out="unused", dev=str(dev)))
    result = run(
        "finetune",
        "--base",
        "unused",
        "--train",
        "unused",
        "--out",
        tmp_path / "o",
        "--dev",
        dev,
        "--dev-columns",
        "a,b",
    )
    assert result.exit_code == 2 and "three column names" in result.output
