"""Fine-tuning: each loss trains the tiny BERT, saves a loadable model with a card, resumes; bad input fails."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import DataError, ModelError, OutputExistsError, UsageError
from pipeline.finetune import FinetuneConfig, checkpoint_dir, finetune, nli_triplets
from pipeline.training_data import PairData
from tests.conftest import sample_texts

FAST = {"batch_size": 4, "lr": 5e-3, "warmup_ratio": 0.0, "max_seq_length": 32, "logging_steps": 1}


def nli_rows(n_premises: int, seed: int = 0) -> dict[str, list[Any]]:
    """Each premise gets an entailed hypothesis (its own words, one dropped), a neutral and a contradiction."""
    rng = random.Random(seed)
    premises = sample_texts(n_premises, seed=seed)
    others = sample_texts(2 * n_premises, seed=seed + 1)
    rows: dict[str, list[Any]] = {"premise": [], "hypothesis": [], "label": []}
    for i, premise in enumerate(premises):
        words = premise.split()
        entailed = " ".join(w for j, w in enumerate(words) if j != rng.randrange(len(words))) or premise
        for hypothesis, label in (
            (entailed, "entailment"),
            (others[2 * i], "neutral"),
            (others[2 * i + 1], "contradiction"),
        ):
            rows["premise"].append(premise)
            rows["hypothesis"].append(hypothesis)
            rows["label"].append(label)
    return rows


def write_parquet(path: Path, rows: dict[str, list[Any]]) -> Path:
    pq.write_table(pa.table(rows), path)
    return path


def write_sts(path: Path, n: int, seed: int = 0) -> Path:
    """STS benchmark layout: 7 tab-separated fields, score 0-5 from word overlap, some extra columns."""
    rng = random.Random(seed)
    lines = []
    for i, text in enumerate(sample_texts(n, seed=seed)):
        words = text.split()
        other = " ".join(words[: rng.randint(1, len(words))]) if i % 2 else sample_texts(1, seed=seed + i + 99)[0]
        score = 5.0 * len(set(words) & set(other.split())) / len(set(words) | set(other.split()))
        extra = "\tsource\textra" if i % 5 == 0 else ""
        lines.append(f"main-news\tfile\t2016\t{i:04d}\t{score:.3f}\t{text}\t{other}{extra}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """Tiny models train fastest on one thread; on a busy 2-core machine extra threads only spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nli_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_parquet(tmp_path_factory.mktemp("nli") / "nli.parquet", nli_rows(12))


@pytest.fixture(scope="module")
def sts_tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sts(tmp_path_factory.mktemp("sts") / "sts-train.csv", 24)


def embed(model_dir: Path | str, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return np.asarray(SentenceTransformer(str(model_dir), device="cpu").encode(texts))


def base_embed(tiny_model: Path, texts: list[str]) -> np.ndarray:
    from pipeline.model import load_sentence_transformer, resolve_model

    return np.asarray(load_sentence_transformer(resolve_model(str(tiny_model))).encode(texts))


@pytest.mark.parametrize(
    ("loss", "card_name", "per_epoch"),
    # steps per epoch at batch 4: 12 triplets, 36 labelled pairs, 24 scored pairs
    [("mnrl", "MultipleNegativesRankingLoss", 3), ("softmax", "SoftmaxLoss", 9), ("cosine", "CosineSimilarityLoss", 6)],
)
def test_each_loss_trains_saves_and_reloads(
    tiny_model: Path, nli_parquet: Path, sts_tsv: Path, tmp_path: Path, loss: str, card_name: str, per_epoch: int
) -> None:
    steps = 3 * per_epoch
    train = sts_tsv if loss == "cosine" else nli_parquet
    dev = write_sts(tmp_path / "sts-dev.csv", 12, seed=5) if loss == "cosine" else None
    out = tmp_path / f"model-{loss}"
    result = finetune(
        FinetuneConfig(
            base=str(tiny_model),
            train=str(train),
            out=str(out),
            loss=loss,
            dev=str(dev) if dev else None,
            max_steps=steps,
            save_steps=per_epoch,
            **FAST,
        )
    )

    assert result.steps == steps
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) == steps  # logged every step
    assert result.train_loss_start == losses[0] and result.train_loss_end == losses[-1]
    assert np.mean(losses[-per_epoch:]) < np.mean(losses[:per_epoch]), losses  # last epoch below the first

    texts = ["the cat sat by the river", "election vote law court"]
    trained = embed(out, texts)
    assert trained.shape == (2, 32)
    assert not np.allclose(trained, base_embed(tiny_model, texts), atol=1e-4)
    card = (out / "README.md").read_text()
    assert card_name in card and f"| steps | {steps} " in card and str(train) in card
    assert (out / "modules.json").exists()
    from pipeline.model import load_sentence_transformer as load
    from pipeline.model import pooling_mode, resolve_model

    assert pooling_mode(load(resolve_model(str(out)))) == "mean"
    assert not checkpoint_dir(out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left beside
    if dev is not None:
        assert result.dev_before is not None and result.dev_after is not None
        assert -1 <= result.dev_after <= 1 and result.dev_after != result.dev_before
        assert [h["step"] for h in result.log_history if "eval_dev_spearman_cosine" in h] == [6, 12, 18]
        assert f"{100 * result.dev_after:.2f} after" in card


class Interrupted(Exception):
    pass


class StopAt:
    """A trainer callback that raises at a given step, as a crash would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise Interrupted


def test_resume_continues_from_last_checkpoint(tiny_model: Path, nli_parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    config = FinetuneConfig(
        base=str(tiny_model), train=str(nli_parquet), out=str(out), loss="softmax", max_steps=4, save_steps=2, **FAST
    )
    with pytest.raises(Interrupted):
        finetune(config, callbacks=[StopAt(3)])
    assert not out.exists()
    assert sorted(p.name for p in checkpoint_dir(out).glob("checkpoint-*")) == ["checkpoint-2"]

    with pytest.raises(UsageError, match="--resume"):
        finetune(config)  # a fresh start would silently drop the checkpoints

    config.resume = True
    result = finetune(config)
    assert result.resumed_from == "checkpoint-2"
    assert result.steps == 4
    steps_logged = [h["step"] for h in result.log_history if "loss" in h]
    assert steps_logged == [1, 2, 3, 4]  # history up to step 2 carried over from the checkpoint
    assert "Resumed from checkpoint-2" in (out / "README.md").read_text()
    assert embed(out, ["a cat"]).shape == (1, 32)
    assert not checkpoint_dir(out).exists()


def test_resume_without_checkpoint_is_a_usage_error(tiny_model: Path, nli_parquet: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no checkpoint"):
        finetune(FinetuneConfig(base=str(tiny_model), train=str(nli_parquet), out=str(tmp_path / "m"), resume=True))


def test_nli_triplets_group_by_premise() -> None:
    data = PairData(
        ["p1", "p1", "p1", "p2", "p2", "p3"], ["e1", "c1", "e1b", "e2", "n2", "c3"], labels=[0, 2, 0, 0, 1, 2]
    )
    assert nli_triplets(data) == {"anchor": ["p1", "p1"], "positive": ["e1", "e1b"], "negative": ["c1", "c1"]}


# ---- bad input through the CLI: typed errors, one-line messages, exit codes --------------------------------


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(cli, ["finetune", *args])


def test_cli_trains_and_refuses_existing_output(tiny_model: Path, nli_parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    args = [
        "--base",
        str(tiny_model),
        "--train",
        str(nli_parquet),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-seq-length",
        "32",
        "--json",
        "--quiet",
    ]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["loss"] == "mnrl"
    weights = (out / "model.safetensors").read_bytes()

    again = run_cli(*args)
    assert again.exit_code == OutputExistsError.exit_code == 1
    assert "exists" in again.stderr and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert (out / "model.safetensors").read_bytes() == weights

    replaced = run_cli(*args, "--overwrite", "--seed", "7", "--lr", "1e-3")
    assert replaced.exit_code == 0, replaced.output
    assert (out / "model.safetensors").read_bytes() != weights


def test_unknown_labels_are_named(tiny_model: Path, tmp_path: Path) -> None:
    rows = nli_rows(4)
    rows["label"][1] = "maybe"
    rows["label"][4] = "maybe"
    data = write_parquet(tmp_path / "bad.parquet", rows)
    result = run_cli("--base", str(tiny_model), "--train", str(data), "--out", str(tmp_path / "m"))
    assert result.exit_code == DataError.exit_code
    assert "'maybe' (2x)" in result.stderr and "entailment" in result.stderr
    assert not (tmp_path / "m").exists()


def test_missing_columns_name_those_present(tiny_model: Path, tmp_path: Path) -> None:
    data = write_parquet(tmp_path / "nli.parquet", {"text_a": ["x"], "text_b": ["y"], "gold": ["entailment"]})
    result = run_cli("--base", str(tiny_model), "--train", str(data), "--out", str(tmp_path / "m"))
    assert result.exit_code == DataError.exit_code
    assert "premise" in result.stderr and "text_a, text_b, gold" in result.stderr

    named = run_cli(
        "--base",
        str(tiny_model),
        "--train",
        str(data),
        "--out",
        str(tmp_path / "m"),
        "--premise-column",
        "text_a",
        "--hypothesis-column",
        "text_b",
        "--label-column",
        "lbl",
    )
    assert named.exit_code == DataError.exit_code
    assert "label column 'lbl'" in named.stderr and "premise" not in named.stderr.split(";")[0]


def test_configurable_columns_train(tiny_model: Path, tmp_path: Path) -> None:
    rows = nli_rows(4)
    data = write_parquet(
        tmp_path / "nli.parquet",
        {
            "a": rows["premise"],
            "b": rows["hypothesis"],
            "y": [["entailment", "neutral", "contradiction"].index(v) for v in rows["label"]],
        },
    )
    result = run_cli(
        "--base",
        str(tiny_model),
        "--train",
        str(data),
        "--out",
        str(tmp_path / "m"),
        "--quiet",
        "--premise-column",
        "a",
        "--hypothesis-column",
        "b",
        "--label-column",
        "y",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--loss",
        "softmax",
    )
    assert result.exit_code == 0, result.output
    assert "SoftmaxLoss" in (tmp_path / "m" / "README.md").read_text()


def test_too_few_triplets_for_mnrl(tiny_model: Path, tmp_path: Path) -> None:
    rows = nli_rows(1)  # one premise: one triplet
    data = write_parquet(tmp_path / "nli.parquet", rows)
    result = run_cli("--base", str(tiny_model), "--train", str(data), "--out", str(tmp_path / "m"))
    assert result.exit_code == DataError.exit_code
    assert "at least 2" in result.stderr and "triplets" in result.stderr and "gives 1" in result.stderr


def test_loss_needs_matching_data(tiny_model: Path, nli_parquet: Path, sts_tsv: Path, tmp_path: Path) -> None:
    cosine = run_cli(
        "--base", str(tiny_model), "--train", str(nli_parquet), "--out", str(tmp_path / "m"), "--loss", "cosine"
    )
    assert cosine.exit_code == 1 and "needs similarity scores" in cosine.stderr
    mnrl = run_cli("--base", str(tiny_model), "--train", str(sts_tsv), "--out", str(tmp_path / "m"))
    assert mnrl.exit_code == 1 and "needs NLI labels" in mnrl.stderr


def test_base_model_that_cannot_be_loaded(nli_parquet: Path, tmp_path: Path) -> None:
    missing = run_cli("--base", str(tmp_path / "nope"), "--train", str(nli_parquet), "--out", str(tmp_path / "m"))
    assert missing.exit_code == ModelError.exit_code and "does not exist" in missing.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    bad = run_cli("--base", str(broken), "--train", str(nli_parquet), "--out", str(tmp_path / "m"))
    assert bad.exit_code == ModelError.exit_code
    assert "cannot load model" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_bad_numbers_are_usage_errors(tiny_model: Path, nli_parquet: Path, tmp_path: Path) -> None:
    result = run_cli(
        "--base", str(tiny_model), "--train", str(nli_parquet), "--out", str(tmp_path / "m"), "--batch-size", "0"
    )
    assert result.exit_code == UsageError.exit_code == 2 and "--batch-size" in result.stderr


def test_missing_training_file(tiny_model: Path, tmp_path: Path) -> None:
    result = run_cli("--base", str(tiny_model), "--train", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "m"))
    assert result.exit_code == DataError.exit_code and "does not exist" in result.stderr


# ---- real data -------------------------------------------------------------------------------------------


def test_shared_layouts_build_training_columns(shared_data: Path) -> None:
    from pipeline.finetune import build_training_columns
    from pipeline.training_data import load_pairs

    snli = load_pairs(shared_data / "nli" / "snli_devtest", split="dev")
    triplets = build_training_columns(snli, "mnrl")
    assert len(snli) == 9842 and 1000 < len(triplets["anchor"]) < 4000
    sts = load_pairs(shared_data / "stsbenchmark" / "sts-train.csv")
    scored = build_training_columns(sts, "cosine")
    assert len(sts) == 5749 and min(scored["score"]) == 0.0 and max(scored["score"]) == 1.0
    sick = load_pairs(shared_data / "nli" / "sick" / "SICK.txt", split="train")
    assert len(sick) == 4439 and len(build_training_columns(sick, "softmax")["label"]) == 4439


@pytest.mark.slow
def test_snli_mnrl_smoke_on_minilm(minilm_path: Path, shared_data: Path, tmp_path: Path) -> None:
    result = finetune(
        FinetuneConfig(
            base=str(minilm_path),
            train=str(shared_data / "nli" / "snli_devtest"),
            split="dev",
            out=str(tmp_path / "m"),
            loss="mnrl",
            batch_size=16,
            max_steps=20,
            save_steps=1000,
            max_examples=2000,
            dev=str(shared_data / "stsbenchmark" / "sts-dev.csv"),
        )
    )
    assert result.steps == 20 and result.dev_after is not None and result.dev_after > 0.8
