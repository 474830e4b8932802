"""Retrieval metrics by hand, the per-mode search against an index, and `eval retrieval --beir`."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from pipeline.cli.eval_retrieval import retrieval
from pipeline.errors import UsageError
from pipeline.fusion import padded
from pipeline.retrieval_eval import score_run
from tests.conftest import sample_texts
from tests.test_beir import write_beir

pytest.importorskip("bm25s")


def test_score_run_means_graded_metrics_over_the_run() -> None:
    qrels = {"q1": {"a": 1, "c": 2, "d": 3, "z": 0}, "q2": {"y": 1}}
    means = score_run({"q1": ["a", "b", "c"], "q2": ["x"]}, qrels)
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert means["ndcg_at_10"] == pytest.approx(dcg / idcg / 2)
    assert means["recall_at_10"] == pytest.approx(2 / 3 / 2)
    assert means["mrr_at_10"] == pytest.approx(0.5)


def test_padded_accepts_ragged_rows() -> None:
    scores, keys = padded(
        [np.array([0.9, 0.5]), np.array([], np.float32)], [np.array([4, 2]), np.array([], np.int64)], 3
    )
    assert keys.tolist() == [[4, 2, -1], [-1, -1, -1]]
    np.testing.assert_allclose(scores[0], [0.9, 0.5, 0.0])


def tiny_beir(root: Path) -> Path:
    texts = sample_texts(30, seed=3)
    docs = [{"_id": f"doc-{i}", "title": f"item{i:03d}code", "text": t} for i, t in enumerate(texts)]
    queries = [{"_id": f"q{i}", "text": f"item{i:03d}code {texts[i].split()[0]}"} for i in range(0, 30, 3)]
    qrels = [f"q{i}\tdoc-{i}\t1" for i in range(0, 30, 3)] + ["q0\tdoc-missing\t2", "q3\tdoc-4\t0"]
    return write_beir(root, docs, queries, qrels)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(retrieval, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, Path, Result]:
    root = tmp_path_factory.mktemp("beir")
    folder = tiny_beir(root / "tiny-set")
    index_dir = root / "indexes"
    result = invoke("--beir", folder, "--model", tiny_model, "--backend", "torch", "--index-dir", index_dir, "--quiet")
    return folder, index_dir, result


def test_cli_beir_builds_and_prints_one_row_per_mode(built: tuple[Path, Path, Result]) -> None:
    _, index_dir, result = built
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["mode", "nDCG@10"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert list(rows) == ["dense", "lexical", "hybrid"]
    # every query names its document's code, so lexical ranks it first; q0 also judges an unknown doc at
    # grade 2, which stays in its ideal ranking (nDCG 1 / (2 + 1/log2 3) for q0)
    assert float(rows["lexical"][4]) == pytest.approx(100.0)
    assert float(rows["lexical"][1]) == pytest.approx(100 * (9 + 1 / (2 + 1 / math.log2(3))) / 10, abs=1e-3)
    assert (index_dir / "tiny-set" / "CURRENT").exists()


def test_cli_json_counts_unknown_qrels_and_reuses_the_index(built: tuple[Path, Path, Result], tiny_model: Path) -> None:
    folder, index_dir, _ = built
    result = invoke(
        "--beir", folder, "--model", tiny_model, "--index-dir", index_dir, "--modes", "lexical,dense", "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [m["mode"] for m in report["modes"]] == ["lexical", "dense"]
    assert report["qrels"]["unknown_docs"] == 1 and report["qrels"]["unknown_queries"] == 0
    assert report["queries_evaluated"] == 10 and report["modes"][0]["queries_per_s"] > 0


def test_cli_against_an_existing_index_and_bad_modes(built: tuple[Path, Path, Result]) -> None:
    folder, index_dir, _ = built
    common = ["--index", "tiny-set", "--index-dir", index_dir, "--queries", folder / "queries.jsonl"]
    result = invoke(*common, "--qrels", folder / "qrels" / "test.tsv", "--modes", "hybrid", "--lexical-weight", "0")
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.strip().splitlines()[2:]] == ["hybrid"]
    result = invoke(*common, "--qrels", folder / "qrels" / "test.tsv", "--modes", "sparse")
    assert result.exit_code == 2 and "--modes" in result.output
    result = invoke("--index", "tiny-set", "--index-dir", index_dir)
    assert result.exit_code == 2 and "--beir" in result.output


def test_dense_mode_agrees_with_searcher(built: tuple[Path, Path, Result]) -> None:
    from pipeline.layout import IndexPaths
    from pipeline.retrieval_eval import search_modes
    from pipeline.search import Searcher

    _, index_dir, _ = built
    searcher = Searcher(IndexPaths.of(index_dir, "tiny-set"))
    try:
        queries = ["river city music", "item007code"]
        hits = searcher.search(queries, k=5, columns=["doc_id"])
        found = search_modes(searcher, queries, 5, ["dense", "lexical"])
        _, keys = found["dense"]
        rows = searcher.generation.store.fetch([int(k) for k in keys.ravel()], ["doc_id"])
        assert [r["doc_id"] for r in rows] == [h["id"] for q in hits for h in q]
        _, lexical_keys = found["lexical"]
        assert searcher.generation.store.fetch([int(lexical_keys[1, 0])], ["doc_id"])[0]["doc_id"] == "doc-7"
        with pytest.raises(UsageError):
            search_modes(searcher, queries, 5, ["sparse"])
    finally:
        searcher.close()


def test_hybrid_of_the_evaluation_is_the_searchers(built: tuple[Path, Path, Result]) -> None:
    from pipeline.fusion import FusionConfig
    from pipeline.layout import IndexPaths
    from pipeline.retrieval_eval import search_modes
    from pipeline.search import Searcher

    _, index_dir, _ = built
    searcher = Searcher(IndexPaths.of(index_dir, "tiny-set"))
    try:
        queries = ["river city music", "item007code", "item012code music"]
        for config in (FusionConfig(), FusionConfig(lead_margin=None), FusionConfig(method="rrf")):
            hits = searcher.search(queries, k=5, columns=["doc_id"], mode="hybrid", fusion=config)
            _, keys = search_modes(searcher, queries, 5, ["hybrid"], config)["hybrid"]
            rows = searcher.generation.store.fetch([int(k) for k in keys.ravel() if k >= 0], ["doc_id"])
            assert [r["doc_id"] for r in rows] == [h["id"] for q in hits for h in q]
        assert hits[1][0]["id"] == "doc-7"
    finally:
        searcher.close()


def test_cli_lead_margin_option(built: tuple[Path, Path, Result]) -> None:
    folder, index_dir, _ = built
    result = invoke("--beir", folder, "--index-dir", index_dir, "--modes", "hybrid", "--json", "--lead-margin", "off")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fusion"]["lead_margin"] is None
    result = invoke("--beir", folder, "--index-dir", index_dir, "--modes", "hybrid", "--json", "-q")
    assert json.loads(result.stdout)["fusion"]["lead_margin"] == 0.15
    result = invoke("--beir", folder, "--index-dir", index_dir, "--lead-margin", "much")
    assert result.exit_code == 2 and "--lead-margin" in result.output


def test_cli_lead_sole_match_option(built: tuple[Path, Path, Result]) -> None:
    folder, index_dir, _ = built
    default = invoke("--beir", folder, "--index-dir", index_dir, "--modes", "hybrid", "--json", "-q")
    assert json.loads(default.stdout)["fusion"]["lead_sole_match"] is False
    result = invoke(
        "--beir", folder, "--index-dir", index_dir, "--modes", "hybrid", "--json", "-q", "--lead-sole-match"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["fusion"]["lead_sole_match"] is True


@pytest.mark.skipif(importlib.util.find_spec("pipeline.cli.eval_cmd") is None, reason="eval group not wired yet")
def test_registered_under_bmsearch_eval(built: tuple[Path, Path, Result]) -> None:
    from tests.helpers import run

    folder, index_dir, _ = built
    result = run("eval", "retrieval", "--beir", folder, "--index-dir", index_dir, "--modes", "lexical")
    assert result.exit_code == 0 and "lexical" in result.stdout


@pytest.mark.slow
def test_mini_msmarco_dense_reference_and_hybrid_target(shared_data: Path, minilm_path: Path, tmp_path: Path) -> None:
    result = invoke(
        "--beir", shared_data / "mini_msmarco", "--model", minilm_path, "--backend", "torch",
        "--index-dir", tmp_path, "--json", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ndcg = {m["mode"]: 100 * m["ndcg_at_10"] for m in json.loads(result.stdout)["modes"]}
    assert abs(ndcg["dense"] - 79.77) <= 0.5, ndcg
    assert ndcg["hybrid"] >= max(ndcg["dense"], ndcg["lexical"]) - 1.0, ndcg
