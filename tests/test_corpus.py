"""Corpus reading: paths, schema checks, stable keys, empty texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.corpus import CorpusStats, corpus_schema, expand_paths, read_batches
from pipeline.errors import CorpusError
from tests.helpers import write_parquet


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": i, "text": f"text number {i}", "cat": "a" if i % 2 else "b"} for i in range(start, start + n)]


def test_expand_paths_files_dirs_globs_sorted_and_deduplicated(tmp_path: Path) -> None:
    write_parquet(tmp_path / "d" / "b.parquet", _rows(2))
    write_parquet(tmp_path / "d" / "sub" / "a.parquet", _rows(2))
    found = expand_paths([str(tmp_path / "d"), str(tmp_path / "d" / "*.parquet")])
    assert [s.rel for s in found] == ["b.parquet", "sub/a.parquet"]


@pytest.mark.parametrize("arg,message", [("missing.parquet", "does not exist"), ("nomatch*.parquet", "no files match")])
def test_expand_paths_errors(tmp_path: Path, arg: str, message: str) -> None:
    with pytest.raises(CorpusError, match=message):
        expand_paths([str(tmp_path / arg)])


def test_schema_names_existing_columns_when_text_column_absent(tmp_path: Path) -> None:
    sources = expand_paths([str(write_parquet(tmp_path / "a.parquet", _rows(3)))])
    with pytest.raises(CorpusError, match="no column 'body'; its columns are: id, text, cat"):
        corpus_schema(sources, "body", None)


def test_keys_without_id_column_do_not_depend_on_file_order(tmp_path: Path) -> None:
    a = write_parquet(tmp_path / "a.parquet", _rows(3))
    b = write_parquet(tmp_path / "b.parquet", _rows(3, 10))

    def keys(order: list[Path]) -> dict[str, int]:
        sources = expand_paths([str(p) for p in order])
        schema = corpus_schema(sources, "text", None)
        out: dict[str, int] = {}
        for batch in read_batches(sources, schema, "text", None):
            out.update(zip(batch.column("text").to_pylist(), batch.column("_key").to_pylist(), strict=True))
        return out

    assert keys([a, b]) == keys([b, a])
    assert len(set(keys([a, b]).values())) == 6


def test_blank_texts_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [{"text": "fine"}, {"text": None}, {"text": "   "}, {"text": "also fine"}]
    sources = expand_paths([str(write_parquet(tmp_path / "a.parquet", rows))])
    stats = CorpusStats()
    batches = list(read_batches(sources, corpus_schema(sources, "text", None), "text", None, "skip", stats=stats))
    assert [t for b in batches for t in b.column("text").to_pylist()] == ["fine", "also fine"]
    assert (stats.rows_read, stats.rows_kept, stats.skipped_empty) == (4, 2, 2)
    with pytest.raises(CorpusError, match="row 1 has a null or empty text"):
        list(read_batches(sources, corpus_schema(sources, "text", None), "text", None, "error"))


def test_string_ids_hash_to_stable_keys_and_negative_ids_fail(tmp_path: Path) -> None:
    sources = expand_paths([str(write_parquet(tmp_path / "s.parquet", [{"doc": "x1", "text": "a"}]))])
    first = next(read_batches(sources, corpus_schema(sources, "text", "doc"), "text", "doc")).column("_key")[0]
    again = next(read_batches(sources, corpus_schema(sources, "text", "doc"), "text", "doc")).column("_key")[0]
    assert first == again and first.as_py() >= 0
    neg = expand_paths([str(write_parquet(tmp_path / "n.parquet", [{"id": -3, "text": "a"}]))])
    with pytest.raises(CorpusError, match=r"outside 0\.\.2"):
        list(read_batches(neg, corpus_schema(neg, "text", "id"), "text", "id"))


def test_glob_names_files_relative_to_its_literal_folder(tmp_path: Path) -> None:
    write_parquet(tmp_path / "data" / "2023" / "part-0.parquet", _rows(2))
    write_parquet(tmp_path / "data" / "2024" / "part-0.parquet", _rows(2))
    sources = expand_paths([str(tmp_path / "data" / "*" / "part-0.parquet")])
    assert [s.rel for s in sources] == ["2023/part-0.parquet", "2024/part-0.parquet"]
    keys = [k for b in read_batches(sources, corpus_schema(sources, "text", None), "text", None) for k in b["_key"]]
    assert len(set(keys)) == 4


def test_a_file_found_twice_gets_one_name_whatever_the_argument_order(tmp_path: Path) -> None:
    folder, file = tmp_path / "data", write_parquet(tmp_path / "data" / "sub" / "x.parquet", _rows(1))
    rels = [[s.rel for s in expand_paths([str(a), str(b)])] for a, b in [(folder, file), (file, folder)]]
    assert rels == [["sub/x.parquet"], ["sub/x.parquet"]]


def test_same_named_files_without_id_column_are_refused(tmp_path: Path) -> None:
    a = write_parquet(tmp_path / "a" / "x.parquet", _rows(2))
    b = write_parquet(tmp_path / "b" / "x.parquet", _rows(2, 10))
    sources = expand_paths([str(a), str(b)])
    with pytest.raises(CorpusError, match=r"a/x\.parquet and .*b/x\.parquet .*parent folder or a glob.*--id-column"):
        corpus_schema(sources, "text", None)
    assert corpus_schema(sources, "text", "id").names == ["id", "text", "cat"]
