"""Every bad input gets a one-line message, the right exit code, no traceback, and loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tests.helpers import run, write_parquet


def _index(data: Path, idx: Path, model: Path, *extra: object) -> object:
    return run("index", data, "--name", "t", "--index-dir", idx, "--model", model, "--backend", "torch", "-q", *extra)


def _one_line_error(result: object, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output  # type: ignore[attr-defined]
    stderr = result.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert fragment in stderr, stderr
    assert len(stderr.splitlines()) == 1, stderr


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "good.parquet", [{"id": i, "text": f"river city bank {i}"} for i in range(20)])


def test_missing_file(tmp_path: Path, tiny_model: Path) -> None:
    _one_line_error(_index(tmp_path / "nope.parquet", tmp_path / "idx", tiny_model), 1, "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(good: Path, tmp_path: Path, tiny_model: Path) -> None:
    good.chmod(0)
    _one_line_error(_index(good, tmp_path / "idx", tiny_model), 1, "permission denied")


def test_not_parquet(tmp_path: Path, tiny_model: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("id,text\n1,hello\n")
    _one_line_error(_index(bad, tmp_path / "idx", tiny_model), 1, "is not a readable Parquet file")


def test_text_column_absent_names_the_columns(good: Path, tmp_path: Path, tiny_model: Path) -> None:
    result = _index(good, tmp_path / "idx", tiny_model, "--text-column", "body")
    _one_line_error(result, 1, "has no column 'body'; its columns are: id, text")


def test_text_column_not_a_string(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "n.parquet", [{"text": 1}, {"text": 2}])
    _one_line_error(_index(data, tmp_path / "idx", tiny_model), 1, "is int64, not a string")


def test_empty_texts_skipped_and_counted_or_refused(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "e.parquet", [{"text": "river"}, {"text": None}, {"text": " "}, {"text": "city"}])
    result = run("index", data, "--name", "t", "--index-dir", tmp_path / "idx", "--model", tiny_model, "--json")
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["skipped_empty"], summary["rows_read"]) == (2, 2, 4)
    result = _index(data, tmp_path / "idx2", tiny_model, "--on-empty", "error")
    _one_line_error(result, 1, "row 1 has a null or empty text")


def test_duplicate_ids(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(
        tmp_path / "d.parquet", [{"id": 7, "text": "a"}, {"id": 7, "text": "b"}, {"id": 8, "text": "c"}]
    )
    _one_line_error(
        _index(data, tmp_path / "idx", tiny_model, "--id-column", "id"), 1, "duplicate ids in column 'id': 7"
    )


def test_empty_corpus(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "z.parquet", pa.table({"text": pa.array([], pa.string())}))
    _one_line_error(_index(data, tmp_path / "idx", tiny_model), 1, "the corpus has no non-empty texts")


def test_existing_index_with_other_settings_needs_overwrite(good: Path, tmp_path: Path, tiny_model: Path) -> None:
    assert _index(good, tmp_path / "idx", tiny_model).exit_code == 0
    before = (tmp_path / "idx" / "t" / "CURRENT").read_text()
    other = write_parquet(tmp_path / "other.parquet", [{"body": "x", "text": "y"}])
    result = _index(other, tmp_path / "idx", tiny_model, "--text-column", "body")
    _one_line_error(result, 1, "exists with other settings (text_column 'text' -> 'body'); pass --overwrite")
    assert (tmp_path / "idx" / "t" / "CURRENT").read_text() == before
    assert _index(other, tmp_path / "idx", tiny_model, "--text-column", "body", "--overwrite").exit_code == 0


def test_model_that_cannot_be_loaded_fails_fast(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    result = run("index", good, "--index-dir", tmp_path / "idx", "--model", "prajjwal1/bert-medium-not-cached", "-q")
    _one_line_error(result, 1, "is not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    assert "--model PATH" in result.stderr
    assert time.monotonic() - started < 10
    _one_line_error(
        run("index", good, "--index-dir", tmp_path / "i2", "--model", tmp_path / "no-dir"), 1, "does not exist"
    )


def test_unreachable_hub_fails_fast(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("pipeline.model._reachable", lambda endpoint: False)
    result = run("index", good, "--index-dir", tmp_path / "idx", "--model", "prajjwal1/bert-medium-x", "-q")
    _one_line_error(result, 1, "cannot be reached")


@pytest.fixture
def built(good: Path, tmp_path: Path, tiny_model: Path) -> Path:
    assert _index(good, tmp_path / "idx", tiny_model, "--id-column", "id").exit_code == 0
    return tmp_path / "idx"


def test_truncated_or_corrupt_vector_index_at_query_time(built: Path) -> None:
    faiss_file = built / "t" / "gen-000001" / "vectors.faiss"
    good = faiss_file.read_bytes()
    faiss_file.write_bytes(good[:100])
    _one_line_error(run("query", "river", "--index-dir", built), 1, "(truncated?); rebuild the index with --overwrite")
    faiss_file.write_bytes(b"\x00" * len(good))
    _one_line_error(run("query", "river", "--index-dir", built), 1, "is corrupt or truncated")


def test_missing_vector_index_file(built: Path) -> None:
    (built / "t" / "gen-000001" / "vectors.faiss").unlink()
    _one_line_error(run("query", "river", "--index-dir", built), 1, "is missing")


def test_corrupt_manifest(built: Path) -> None:
    (built / "t" / "gen-000001" / "manifest.json").write_text("{not json")
    _one_line_error(run("query", "river", "--index-dir", built), 1, "manifest.json is unreadable")


def test_invalid_where(built: Path) -> None:
    _one_line_error(run("query", "river", "--index-dir", built, "--where", "text LIKE"), 2, "invalid filter")
    _one_line_error(run("query", "river", "--index-dir", built, "--where", "nosuchcol = 1"), 2, "invalid filter")


def test_where_cannot_write(built: Path) -> None:
    result = run("query", "river", "--index-dir", built, "--where", "1=1); DELETE FROM docs; SELECT (1")
    assert result.exit_code == 2
    assert run("query", "river", "--index-dir", built, "-k", "20", "--format", "json").stdout.count('"rank"') == 20


def test_unknown_index_and_usage_errors(built: Path) -> None:
    _one_line_error(run("query", "river", "--index-dir", built, "--index", "nope"), 1, "no index named 'nope'")
    assert run("query", "--index-dir", built).exit_code == 2
    assert run("query", "river", "--index-dir", built, "-k", "0").exit_code == 2
    assert run("index", "--index-dir", built).exit_code == 2


def test_debug_shows_traceback(built: Path) -> None:
    shutil.rmtree(built / "t" / "gen-000001")
    with pytest.raises(Exception, match="not a complete generation"):
        run("--debug", "query", "river", "--index-dir", built)
