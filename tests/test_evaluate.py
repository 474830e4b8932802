"""STS and NLI evaluation and the pair-data readers: layouts, splits, metrics against an independent path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.encode import EncoderConfig
from pipeline.errors import DataError
from pipeline.evaluate import cosine_scores, evaluate_nli, evaluate_sts, load_nli_pairs, load_sts_pairs, score_pairs
from pipeline.training_data import Columns, detect_format, load_pairs
from tests.conftest import sample_texts


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def own_cosines(model_dir: Path, s1: list[str], s2: list[str]) -> np.ndarray:
    """Cosine similarities through sentence-transformers directly: an independent path from the Encoder."""
    from pipeline.model import load_sentence_transformer, resolve_model

    st = load_sentence_transformer(resolve_model(str(model_dir)))
    return cosine_scores(np.asarray(st.encode(s1)), np.asarray(st.encode(s2)))


def sts_file(path: Path, s1: list[str], s2: list[str], scores: list[float]) -> Path:
    lines = []
    for i, (a, b, score) in enumerate(zip(s1, s2, scores, strict=True)):
        extra = "\tsource-a\tsource-b" if i % 3 == 0 else ""  # real rows carry extra trailing columns
        lines.append(f"main-forum\tdeft\t2016\t{i:04d}\t{score:.6f}\t{a}\t{b}{extra}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str]]:
    s1 = sample_texts(30, seed=11)
    s2 = [t if i % 4 == 0 else " ".join(t.split()[: 1 + i % 5]) for i, t in enumerate(sample_texts(30, seed=12))]
    s1[3] = 'He said "hello" and left'  # a quote must not start a csv-quoted field
    s2[3] = 'He said "bye'
    return s1, s2


def test_sts_eval_matches_an_independent_cosine_path(
    tiny_model: Path, pairs: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    s1, s2 = pairs
    gold = own_cosines(tiny_model, s1, s2)
    data = sts_file(tmp_path / "sts-test.csv", s1, s2, [5 * float(g) for g in gold])
    result = evaluate_sts(str(tiny_model), data)
    assert result.pairs == 30 and result.format == "sts" and result.split == "test" and result.backend
    assert result.spearman == pytest.approx(100, abs=0.5)
    assert result.pearson == pytest.approx(100, abs=0.5)

    reversed_data = sts_file(tmp_path / "rev.csv", s1, s2, [-float(g) for g in gold])
    exact = evaluate_sts(str(tiny_model), reversed_data, encoder_config=EncoderConfig(backend="torch"))
    assert exact.backend == "torch" and exact.spearman == pytest.approx(-100, abs=0.1)


def test_sts_eval_on_unrelated_scores_is_far_from_perfect(
    tiny_model: Path, pairs: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    s1, s2 = pairs
    rng = np.random.default_rng(0)
    data = sts_file(tmp_path / "sts.csv", s1, s2, list(rng.uniform(0, 5, len(s1))))
    assert abs(evaluate_sts(str(tiny_model), data).spearman) < 60


def test_score_pairs_encodes_each_distinct_text_once() -> None:
    from pipeline.training_data import PairData

    calls: list[list[str]] = []
    vectors = {"a": [1.0, 0.0], "b": [0.0, 2.0], "c": [1.0, 1.0]}

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.array([vectors[t] for t in texts])

    sims = score_pairs(PairData(["a", "a", "c"], ["b", "c", "a"], scores=[0, 1, 1]), encode)
    assert calls == [["a", "c", "b"]]
    assert sims == pytest.approx([0.0, 1 / np.sqrt(2), 1 / np.sqrt(2)])


def test_cli_eval_sts_json_and_table(tiny_model: Path, pairs: tuple[list[str], list[str]], tmp_path: Path) -> None:
    s1, s2 = pairs
    folder = tmp_path / "stsbenchmark"
    folder.mkdir()
    gold = own_cosines(tiny_model, s1, s2)
    sts_file(folder / "sts-dev.csv", s1, s2, [float(g) for g in gold])
    runner = CliRunner()
    result = runner.invoke(
        cli, ["eval", "sts", "--model", str(tiny_model), "--data", str(folder), "--split", "dev", "--json", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["pairs"] == 30 and out["split"] == "dev" and out["spearman"] > 99.5

    table = runner.invoke(cli, ["eval", "sts", "-m", str(tiny_model), "--data", str(folder / "sts-dev.csv"), "-q"])
    assert table.exit_code == 0 and "spearman" in table.stdout and "30" in table.stdout


def test_cli_eval_sts_bad_data(tiny_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["eval", "sts", "-m", str(tiny_model), "--data", str(tmp_path / "none.csv")])
    assert missing.exit_code == DataError.exit_code and "does not exist" in missing.stderr

    bad = tmp_path / "bad.csv"
    bad.write_text("main\tf\t2012\t1\tnot-a-number\ta\tb\n")
    wrong = runner.invoke(cli, ["eval", "sts", "-m", str(tiny_model), "--data", str(bad), "--format", "sts"])
    assert wrong.exit_code == DataError.exit_code and "not a number" in wrong.stderr

    unscored = tmp_path / "nli.parquet"
    pq.write_table(pa.table({"premise": ["a", "b", "c"], "hypothesis": ["d", "e", "f"], "label": [0, 1, 2]}), unscored)
    result = runner.invoke(cli, ["eval", "sts", "-m", str(tiny_model), "--data", str(unscored)])
    assert result.exit_code == DataError.exit_code and "no similarity scores" in result.stderr
    assert "evaluate it with eval nli" in result.stderr


def test_eval_table_with_named_columns(tiny_model: Path, pairs: tuple[list[str], list[str]], tmp_path: Path) -> None:
    s1, s2 = pairs
    gold = own_cosines(tiny_model, s1, s2)
    data = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"q": s1, "d": s2, "sim": gold.astype(float)}), data)
    result = evaluate_sts(str(tiny_model), data, columns=Columns(premise="q", hypothesis="d", score="sim"))
    assert result.format == "table" and result.spearman > 99.5


# ---- readers ---------------------------------------------------------------------------------------------


def test_sts_reader_keeps_seven_fields_and_no_quoting(tmp_path: Path) -> None:
    path = tmp_path / "sts.csv"
    path.write_text('g\tf\t2012\t1\t4.5\tA "quoted\tB\textra\tmore\ng\tf\t2012\t2\t0\tC\tD\n')
    data = load_pairs(path)
    assert data.format == "sts" and data.sentence1 == ['A "quoted', "C"] and data.sentence2 == ["B", "D"]
    assert data.scores == [4.5, 0.0] and data.unit_scores() == [0.9, 0.0]
    short = tmp_path / "short.csv"
    short.write_text("g\tf\t2012\t1\t4.5\tA\n")
    with pytest.raises(DataError, match="7 tab-separated fields"):
        load_pairs(short, format="sts")


def test_snli_folder_layout(tmp_path: Path) -> None:
    (tmp_path / "s1.dev").write_text("A man .\nA dog .\n")
    (tmp_path / "s2.dev").write_text("A person .\nA cat .\n")
    (tmp_path / "labels.dev").write_text("entailment\ncontradiction\n")
    data = load_pairs(tmp_path)
    assert data.format == "snli" and data.labels == [0, 2] and data.sentence1 == ["A man .", "A dog ."]
    with pytest.raises(DataError, match="splits there: \\['dev'\\]"):
        load_pairs(tmp_path, split="train")
    (tmp_path / "labels.dev").write_text("entailment\n-\n")
    with pytest.raises(DataError, match="'-'"):
        load_pairs(tmp_path)


def test_sick_layout_and_splits(tmp_path: Path) -> None:
    header = "pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set"
    rows = [
        "1\ta\tb\tNEUTRAL\t4.5\tTRAIN",
        "2\tc\td\tENTAILMENT\t1\tTEST",
        "3\te\tf\tCONTRADICTION\t3\tTEST",
        "4\tg\th\tNEUTRAL\t2\tTRIAL",
        "5\ti\tj\tNEUTRAL\t5\tTEST",
    ]
    path = tmp_path / "SICK.txt"
    path.write_text("\n".join([header, *rows]) + "\n")
    assert detect_format(path) == "sick"
    test = load_pairs(path, split="test")
    assert test.sentence1 == ["c", "e", "i"] and test.labels == [0, 2, 1]
    assert test.unit_scores() == [0.0, 0.5, 1.0]
    assert load_sts_pairs(path).split == "test"  # evaluation defaults to SICK's test split
    assert load_pairs(path).split == "train" and len(load_pairs(path, split="all")) == 5
    path.write_text("\n".join([header, *rows, "6\tk\tl\tNEUTRAL"]) + "\n")
    with pytest.raises(DataError, match="line 7 has fewer"):
        load_pairs(path, split="test")
    path.write_text("\n".join([header, *rows, "6\tk\tl\tNEUTRAL\tn/a\tTEST"]) + "\n")
    with pytest.raises(DataError, match="relatedness_score that is not a number"):
        load_pairs(path, split="test")


def test_table_reader_csv_and_label_forms(tmp_path: Path) -> None:
    path = tmp_path / "nli.csv"
    path.write_text('premise,hypothesis,label\n"a, b",c,Entailment\nd,e,2\nf,g,1\n')
    data = load_pairs(path)
    assert data.format == "table" and data.sentence1 == ["a, b", "d", "f"] and data.labels == [0, 2, 1]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("sentence1\tsentence2\tscore\nx\ty\t0.5\nu\tv\t1\n")
    scored = load_pairs(tsv)
    assert scored.scores == [0.5, 1.0] and scored.labels is None


def snli_folder(folder: Path, split: str, s1: list[str], s2: list[str], labels: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, lines in (("s1", s1), ("s2", s2), ("labels", labels)):
        (folder / f"{name}.{split}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def labels_by_cosine(cosines: np.ndarray) -> list[str]:
    """Gold labels that follow the cosine exactly: top third entailment, bottom third contradiction."""
    low, high = np.quantile(cosines, [1 / 3, 2 / 3])
    return ["entailment" if c > high else "contradiction" if c < low else "neutral" for c in cosines]


def test_nli_eval_against_an_independent_cosine_path(
    tiny_model: Path, pairs: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    from sklearn.metrics import average_precision_score

    s1, s2 = pairs
    cosines = own_cosines(tiny_model, s1, s2)
    labels = labels_by_cosine(cosines)
    folder = snli_folder(tmp_path / "snli", "test", s1, s2, labels)
    result = evaluate_nli(str(tiny_model), folder, encoder_config=EncoderConfig(backend="torch"))
    assert result.split == "test" and result.format == "snli" and result.pairs == 30 and result.backend == "torch"
    assert result.label_counts == {name: labels.count(name) for name in ("entailment", "neutral", "contradiction")}
    assert result.ap == pytest.approx(100) and result.accuracy == pytest.approx(100)
    assert result.spearman > 85  # ties inside each label keep it below 100
    means = result.mean_cosine
    assert means["entailment"] > means["neutral"] > means["contradiction"]
    assert means["entailment"] == pytest.approx(float(np.mean(cosines[np.array(labels) == "entailment"])), abs=1e-3)

    shuffled = list(np.random.default_rng(3).permutation(labels))
    snli_folder(tmp_path / "snli", "dev", s1, s2, shuffled)
    noisy = evaluate_nli(str(tiny_model), folder, split="dev", encoder_config=EncoderConfig(backend="torch"))
    binary = [i for i, label in enumerate(shuffled) if label != "neutral"]
    expected = average_precision_score([shuffled[i] == "entailment" for i in binary], cosines[binary])
    assert noisy.split == "dev" and noisy.ap == pytest.approx(100 * expected, abs=1.0)
    assert noisy.ap < result.ap and noisy.accuracy < result.accuracy


def test_nli_eval_bad_data(tiny_model: Path, tmp_path: Path) -> None:
    only_entailed = snli_folder(tmp_path / "one", "test", ["a", "b"], ["c", "d"], ["entailment", "neutral"])
    with pytest.raises(DataError, match="both entailment and contradiction"):
        load_nli_pairs(only_entailed)
    scored = sts_file(tmp_path / "sts-test.csv", ["a", "b", "c"], ["d", "e", "f"], [1.0, 2.0, 3.0])
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", "nli", "-m", str(tiny_model), "--data", str(scored), "--format", "sts"])
    assert result.exit_code == 2  # sts is not a layout with labels: click refuses the choice
    unlabelled = runner.invoke(cli, ["eval", "nli", "-m", str(tiny_model), "--data", str(scored)])
    assert unlabelled.exit_code == DataError.exit_code and "no entailment labels" in unlabelled.stderr
    assert "evaluate it with eval sts" in unlabelled.stderr


def test_cli_eval_nli_table_json_and_sick_default_split(tiny_model: Path, tmp_path: Path) -> None:
    header = "pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set"
    texts = sample_texts(12, seed=5)
    rows = [
        f"{i}\t{texts[i]}\t{texts[i] if i % 3 == 0 else texts[i + 6]}\t{label}\t3\t{split}"
        for i, (label, split) in enumerate(
            [
                ("ENTAILMENT", "TEST"),
                ("CONTRADICTION", "TEST"),
                ("NEUTRAL", "TEST"),
                ("ENTAILMENT", "TEST"),
                ("CONTRADICTION", "TEST"),
                ("NEUTRAL", "TRAIN"),
            ]
        )
    ]
    sick = tmp_path / "SICK.txt"
    sick.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    runner = CliRunner()
    as_json = runner.invoke(cli, ["eval", "nli", "-m", str(tiny_model), "--data", str(sick), "--json", "-q"])
    assert as_json.exit_code == 0, as_json.output
    out = json.loads(as_json.stdout)
    assert out["split"] == "test" and out["pairs"] == 5 and out["format"] == "sick"
    assert out["label_counts"] == {"entailment": 2, "neutral": 1, "contradiction": 2}
    assert 0 <= out["ap"] <= 100 and 0 <= out["accuracy"] <= 100
    table = runner.invoke(cli, ["eval", "nli", "-m", str(tiny_model), "--data", str(sick), "-q"])
    assert table.exit_code == 0 and "accuracy" in table.stdout and "entailment 2 (mean cosine" in table.stdout


@pytest.mark.slow
def test_packaged_minilm_reproduces_published_sts_test(minilm_path: Path, shared_data: Path) -> None:
    data = shared_data / "stsbenchmark"
    exact = evaluate_sts(str(minilm_path), data, split="test", encoder_config=EncoderConfig(backend="torch"))
    assert exact.pairs == 1379
    assert exact.spearman == pytest.approx(82.03, abs=0.5)  # measured 82.03
    default = evaluate_sts(str(minilm_path), data, split="test")  # the CPU default backend (int8 on CPU)
    assert default.spearman == pytest.approx(82.03, abs=0.5)  # measured 81.98 with onnx-int8


@pytest.mark.slow
def test_packaged_minilm_on_snli_test(minilm_path: Path, shared_data: Path) -> None:
    result = evaluate_nli(str(minilm_path), shared_data / "nli" / "snli_devtest")  # test split by default
    assert result.split == "test" and result.pairs == 9824
    assert result.label_counts == {"entailment": 3368, "neutral": 3219, "contradiction": 3237}
    assert result.ap == pytest.approx(87.55, abs=0.5)  # measured 87.55 (onnx-int8), 87.64 (torch fp32)
    assert result.accuracy == pytest.approx(81.48, abs=0.5)
    means = result.mean_cosine
    assert means["entailment"] > means["neutral"] > means["contradiction"]
