"""Dense, lexical and hybrid query modes through the CLI; filters apply to every mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run, write_parquet

ROWS = [
    {"id": 1, "text": "the river flows past the old mill", "kind": "a"},
    {"id": 2, "text": "order part number XK-4471 for the pump", "kind": "b"},
    {"id": 3, "text": "a quiet city garden in the rain", "kind": "a"},
    {"id": 4, "text": "bank interest rates and money markets", "kind": "b"},
    {"id": 5, "text": "football team wins the cup final", "kind": "a"},
    {"id": 6, "text": "replacement pump XK-4471 out of stock", "kind": "a"},
]


@pytest.fixture(scope="module")
def idx(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    root = tmp_path_factory.mktemp("modes")
    data = write_parquet(root / "c.parquet", ROWS)
    result = run(
        "index",
        data,
        "--index-dir",
        root / "idx",
        "--model",
        tiny_model,
        "--id-column",
        "id",
        "--backend",
        "torch",
        "-q",
    )
    assert result.exit_code == 0, result.output
    return root / "idx"


def query(idx: Path, *args: str) -> list[dict]:
    result = run("query", *args, "--index-dir", idx, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_lexical_mode_finds_exact_codes(idx: Path) -> None:
    hits = query(idx, "XK-4471", "--mode", "lexical", "-k", "5")
    assert {h["id"] for h in hits} == {2, 6}


def test_filters_apply_to_lexical_and_hybrid(idx: Path) -> None:
    assert [h["id"] for h in query(idx, "XK-4471", "--mode", "lexical", "--where", "kind = 'a'")] == [6]
    hybrid = query(
        idx, "XK-4471 pump", "--mode", "hybrid", "-k", "3", "--where", "kind = 'a'", "--weights", "dense=0.2,lexical=1"
    )
    assert len(hybrid) == 3 and all(h["kind"] == "a" for h in hybrid) and hybrid[0]["id"] == 6


def test_hybrid_ranks_lexical_matches_and_fills_k(idx: Path) -> None:
    hits = query(idx, "XK-4471", "--mode", "hybrid", "-k", "4", "--weights", "dense=0.2,lexical=1")
    assert [h["rank"] for h in hits] == [1, 2, 3, 4] and {hits[0]["id"], hits[1]["id"]} == {2, 6}
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_a_standout_bm25_hit_leads_hybrid_unless_turned_off(idx: Path) -> None:
    # "mill" is in one document only: BM25 has one hit, so it takes rank 1 even with lexical weight 0.01
    lead = query(idx, "mill", "--mode", "hybrid", "-k", "3", "--weights", "dense=1,lexical=0.01")
    assert lead[0]["id"] == 1 and lead[0]["score"] > lead[1]["score"]
    plain = query(idx, "mill", "--mode", "hybrid", "-k", "6", "--lead-margin", "off", "--weights", "dense=1,lexical=0")
    dense = query(idx, "mill", "--mode", "dense", "-k", "6")
    assert [h["id"] for h in plain] == [h["id"] for h in dense]
    result = run("query", "x", "--index-dir", idx, "--mode", "hybrid", "--lead-margin", "2")
    assert result.exit_code == 2 and "--lead-margin" in result.output


def test_the_sole_full_match_leads_hybrid_when_asked(idx: Path) -> None:
    # "pump stock": only document 6 holds both words (2 holds "pump"); margin 1.0 keeps the margin rule out. The
    # plain order is the tiny random model's, so the check is relative to it: 6 first, the others in that order.
    opts = ("--mode", "hybrid", "-k", "6", "--weights", "dense=1,lexical=0.01", "--lead-margin", "1")
    plain = query(idx, "pump stock", *opts)
    assert query(idx, "pump stock", *opts, "--no-lead-sole-match") == plain
    lead = query(idx, "pump stock", *opts, "--lead-sole-match")
    assert [h["id"] for h in lead] == [6, *(h["id"] for h in plain if h["id"] != 6)]
    assert lead[0]["score"] > lead[1]["score"]
    # "pump": two documents hold it, so there is no sole full match and the rule changes nothing
    assert query(idx, "pump", *opts, "--lead-sole-match") == query(idx, "pump", *opts)


def test_manifest_records_lexical_side(idx: Path) -> None:
    manifest = json.loads((idx / "default" / "gen-000001" / "manifest.json").read_text())
    assert manifest["lexical"]["type"] == "bm25" and manifest["lexical"]["docs"] == len(ROWS)


def test_bad_weights_are_a_usage_error(idx: Path) -> None:
    result = run("query", "x", "--index-dir", idx, "--mode", "hybrid", "--weights", "sparse=1")
    assert result.exit_code == 2 and "unknown mode(s) sparse" in result.output


def test_index_without_lexical_side_refuses_lexical_mode(idx: Path) -> None:
    manifest_file = idx / "default" / "gen-000001" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["lexical"] = None
    manifest_file.write_text(json.dumps(manifest))
    result = run("query", "XK-4471", "--index-dir", idx, "--mode", "lexical")
    assert result.exit_code == 2 and "has no lexical side" in result.stderr
