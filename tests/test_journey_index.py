"""`bmsearch index` as a scheduled job sees it: odd but valid Parquet schemas, re-runs that must be no-ops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.layout import IndexPaths
from pipeline.search import Searcher
from tests.conftest import sample_texts
from tests.helpers import run, write_parquet


def index(paths: list[Path], idx: Path, model: Path, *extra: object) -> dict[str, Any]:
    args = [*paths, "--name", "j", "--index-dir", idx, "--model", model, "--backend", "torch", "--json", *extra]
    result = run("index", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stored(idx: Path, id_column: str = "id") -> dict[Any, str]:
    """id -> text of the live generation, after checking that each text finds its own row first."""
    searcher = Searcher(IndexPaths.of(idx, "j"))
    try:
        docs = dict(searcher.generation.store.rows(f"SELECT {id_column}, text FROM docs"))
        hits = searcher.search(list(docs.values()), k=1)
        assert [h[0]["id"] for h in hits] == list(docs)
        return docs
    finally:
        searcher.close()


def test_empty_and_all_null_partitions_written_by_pandas_are_read(tmp_path: Path, tiny_model: Path) -> None:
    # pandas writes an object column without any value as Arrow's null type: an empty day's partition, or a day
    # whose texts are all missing, must not stop a scheduled run over the folder.
    texts = sample_texts(6, seed=4)
    data = tmp_path / "data"
    write_parquet(data / "day1.parquet", pa.table({"id": [f"d{i}" for i in range(6)], "text": texts}))
    write_parquet(data / "day2.parquet", pa.table({"id": pa.nulls(0), "text": pa.nulls(0)}))
    write_parquet(data / "day3.parquet", pa.table({"id": ["x", "y"], "text": pa.nulls(2)}))
    out = index([data], tmp_path / "idx", tiny_model, "--id-column", "id")
    assert (out["rows"], out["rows_read"], out["skipped_empty"]) == (6, 8, 2)
    assert stored(tmp_path / "idx") == {f"d{i}": t for i, t in enumerate(texts)}


def test_categorical_and_view_string_columns_are_text(tmp_path: Path, tiny_model: Path) -> None:
    if not hasattr(pa, "string_view"):
        pytest.skip("this pyarrow has no string_view")
    texts = sample_texts(4, seed=5)
    categorical = pa.table(
        {"id": pa.array(["a", "b"]).dictionary_encode(), "text": pa.array(texts[:2]).dictionary_encode()}
    )
    view = pa.table({"id": pa.array(["c", "d"], pa.string_view()), "text": pa.array(texts[2:], pa.string_view())})
    files = [write_parquet(tmp_path / "cat.parquet", categorical), write_parquet(tmp_path / "view.parquet", view)]
    out = index(files, tmp_path / "idx", tiny_model, "--id-column", "id")
    assert out["rows"] == 4
    assert stored(tmp_path / "idx") == dict(zip("abcd", texts, strict=True))


def test_sync_on_unchanged_sources_is_up_to_date(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "c.parquet", pa.table({"text": sample_texts(5, seed=6)}))
    idx = tmp_path / "idx"
    index([data], idx, tiny_model)
    synced = index([data], idx, tiny_model, "--sync")  # the last run was not synced: a run is needed
    assert not synced["up_to_date"] and synced["generation"] == 2
    again = index([data], idx, tiny_model, "--sync")
    assert again["up_to_date"] and again["generation"] == 2


def test_another_index_type_on_unchanged_sources_is_built(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "c.parquet", pa.table({"text": sample_texts(20, seed=7)}))
    idx = tmp_path / "idx"
    assert index([data], idx, tiny_model)["index_type"] == "Flat"
    hnsw = index([data], idx, tiny_model, "--index-type", "HNSW32")
    assert (hnsw["up_to_date"], hnsw["index_type"], hnsw["encoded"]) == (False, "HNSW32", 0)
    assert index([data], idx, tiny_model, "--index-type", "HNSW32")["up_to_date"]
    assert index([data], idx, tiny_model)["up_to_date"]  # no --index-type: whatever the index has


def test_an_existing_path_with_glob_characters_is_taken_literally(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "export [2024]"
    texts = sample_texts(3, seed=8)
    write_parquet(folder / "part-*.parquet", pa.table({"text": texts}))
    assert index([folder / "part-*.parquet"], tmp_path / "idx", tiny_model)["rows"] == 3
    assert index([folder], tmp_path / "idx", tiny_model)["up_to_date"]  # same file, same name, same ids
    assert sorted(stored(tmp_path / "idx", "_key").values()) == sorted(texts)


def test_a_text_emptied_in_the_sources_is_not_kept_from_the_last_run(tmp_path: Path, tiny_model: Path) -> None:
    texts = sample_texts(4, seed=9)
    data = write_parquet(tmp_path / "c.parquet", pa.table({"id": [0, 1, 2, 3], "text": texts}))
    idx = tmp_path / "idx"
    index([data], idx, tiny_model, "--id-column", "id")
    write_parquet(data, pa.table({"id": [0, 1, 2], "text": [texts[0], None, " "]}))  # id 3 is gone: kept
    out = index([data], idx, tiny_model, "--id-column", "id")
    assert (out["rows"], out["skipped_empty"], out["removed"]) == (2, 2, 2)
    assert stored(idx) == {0: texts[0], 3: texts[3]}


def test_a_folder_skips_spark_and_delta_bookkeeping(tmp_path: Path, tiny_model: Path) -> None:
    texts = sample_texts(6, seed=9)
    data = tmp_path / "spark-out"
    write_parquet(data / "part-0.parquet", pa.table({"id": ["a", "b", "c"], "text": texts[:3]}))
    write_parquet(data / "year=2024" / "part-0.parquet", pa.table({"id": ["d"], "text": texts[3:4]}))
    # an unfinished attempt's copy of a part and a Delta checkpoint: reading them would duplicate or fail
    write_parquet(data / "_temporary" / "0" / "part-0.parquet", pa.table({"id": ["a"], "text": texts[:1]}))
    write_parquet(data / "_delta_log" / "00.checkpoint.parquet", pa.table({"add": ["x"], "text": ["y"]}))
    write_parquet(data / ".part-1.parquet", pa.table({"id": ["e"], "text": texts[4:5]}))
    out = index([data], tmp_path / "idx", tiny_model, "--id-column", "id")
    assert out["rows"] == 4 and sorted(stored(tmp_path / "idx")) == ["a", "b", "c", "d"]
    info = json.loads(run("info", "j", "--index-dir", tmp_path / "idx", "--json").stdout)
    assert sorted(source["name"] for source in info["sources"]) == ["part-0.parquet", "year=2024/part-0.parquet"]


def test_list_shows_an_index_whose_first_build_has_not_committed(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "docs.parquet", pa.table({"text": sample_texts(4, seed=1)}))
    index([data], tmp_path / "idx", tiny_model)
    pending = tmp_path / "idx" / "pending"
    (pending / "work").mkdir(parents=True)  # what a first build that was killed before its commit leaves
    (pending / "LOCK").write_text("{}")
    (tmp_path / "idx" / "notes").mkdir()  # any other folder is not an index
    listing = run("list", "--index-dir", tmp_path / "idx", "--json")
    assert listing.exit_code == 0, listing.output  # not broken: building, or to be resumed by its next run
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert set(rows) == {"j", "pending"} and rows["j"]["error"] is None
    assert "no complete generation yet" in rows["pending"]["error"] and rows["pending"]["rows"] is None
    table = run("list", "--index-dir", tmp_path / "idx")
    assert table.exit_code == 0 and "pending" in table.stdout and "no complete generation" in table.stdout
    assert run("query", "x", "--index-dir", tmp_path / "idx", "-i", "j").exit_code == 0  # serving ignores it
