"""Failures at every step of a build leave an index that the same command completes, and never a wrong one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import pipeline.build as build_mod
import pipeline.encode as encode_mod
import pipeline.layout as layout_mod
from pipeline.build import BuildResult, build_index
from pipeline.config import BuildOptions
from pipeline.encode import EncoderConfig
from pipeline.errors import CorpusError, IndexExistsError
from pipeline.journal import Journal, open_work
from pipeline.layout import IndexPaths
from pipeline.manifest import read_manifest
from pipeline.search import Searcher
from tests.conftest import sample_texts
from tests.helpers import write_parquet


class Crash(Exception):
    """Stands for a failure or a kill at one point of a run."""


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "text": t} for i, t in enumerate(sample_texts(n, seed=3))]


def options(data: Path, idx: Path, model: Path, name: str = "inc", **kw: Any) -> BuildOptions:
    kw = {"id_column": "id", "encoder": EncoderConfig(backend="torch"), **kw}
    return BuildOptions([str(data)], name, idx, model=str(model), **kw)


def crash(*_a: Any, **_k: Any) -> None:
    raise Crash("simulated")


def crashed(opts: BuildOptions, monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> None:
    """Run a build that fails when `target.name` is called."""
    with monkeypatch.context() as m:
        m.setattr(target, name, crash)
        with pytest.raises(Crash):
            build_index(opts)


def self_hits(idx: Path, texts: list[str]) -> list[int]:
    """Row ids whose own text does not find them first."""
    searcher = Searcher(IndexPaths.of(idx, "inc"))
    try:
        return [i for i, hits in enumerate(searcher.search(texts, k=1)) if hits[0]["id"] != i]
    finally:
        searcher.close()


def assert_complete(result: BuildResult, idx: Path, texts: list[str]) -> None:
    paths = IndexPaths.of(idx, "inc")
    assert paths.current() == result.generation and result.rows == len(texts)
    assert self_hits(idx, texts) == []
    assert not list(paths.work.glob("*")) and not list(paths.root.glob(".gen-*.tmp"))


@pytest.mark.parametrize(
    "target,name",
    [
        (build_mod, "write_manifest"),  # the database has already been moved into the staging folder
        (layout_mod, "fsync_tree"),
        (layout_mod, "fsync_dir"),  # after the rename: an orphan generation
        (layout_mod, "atomic_write_bytes"),  # the CURRENT switch
    ],
)
def test_commit_failure_then_same_command_succeeds(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, target: object, name: str
) -> None:
    data, idx = write_parquet(tmp_path / "c.parquet", rows(30)), tmp_path / "idx"
    build_index(options(data, idx, tiny_model))
    write_parquet(data, rows(40))
    crashed(options(data, idx, tiny_model), monkeypatch, target, name)
    assert IndexPaths.of(idx, "inc").current() == 1
    retry = build_index(options(data, idx, tiny_model))
    assert retry.encoded == 0 and retry.resumed_rows == 10 and retry.new == 10
    assert_complete(retry, idx, [r["text"] for r in rows(40)])
    assert IndexPaths.of(idx, "inc").generations() == [1, retry.generation]


def test_overwrite_killed_after_commit_then_same_command_succeeds(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, idx = write_parquet(tmp_path / "c.parquet", rows(30)), tmp_path / "idx"
    build_index(options(data, idx, tiny_model))
    crashed(options(data, idx, tiny_model, overwrite=True), monkeypatch, build_mod, "remove_tree")
    assert IndexPaths.of(idx, "inc").current() == 2
    retry = build_index(options(data, idx, tiny_model, overwrite=True))
    assert retry.generation == 3 and retry.encoded == 0 and retry.resumed_rows == 30
    assert_complete(retry, idx, [r["text"] for r in rows(30)])


def _shard_digests(idx: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (idx / "inc" / "shards").glob("*.arrow")}


def test_no_run_rewrites_the_shards_of_a_committed_generation(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, idx = write_parquet(tmp_path / "c.parquet", rows(60)), tmp_path / "idx"
    build_index(options(data, idx, tiny_model, shard_rows=16))
    live = _shard_digests(idx)
    crashed(options(data, idx, tiny_model, shard_rows=32, overwrite=True), monkeypatch, build_mod._Run, "_finish")
    after = _shard_digests(idx)
    assert {k: after[k] for k in live} == live and len(after) == len(live) + 2
    rebuilt = build_index(options(data, idx, tiny_model, rebuild=True))
    assert rebuilt.encoded == 0
    assert self_hits(idx, [r["text"] for r in rows(60)]) == []
    assert _shard_digests(idx) == live  # the interrupted run's shards were collected


def test_run_id_is_kept_on_resume_and_new_for_another_run(tmp_path: Path) -> None:
    _, journal = open_work(tmp_path / "work", "fp-a")
    _, resumed = open_work(tmp_path / "work", "fp-a")
    _, other = open_work(tmp_path / "work", "fp-b")
    assert journal.run_id == resumed.run_id != other.run_id
    assert journal.events[0]["event"] == "run"


def test_journal_cuts_a_torn_last_line_so_later_entries_survive(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_text('{"event": "ingested", "rows": 10}\n{"event": "shard", "fi')
    journal = Journal(path)
    assert [e["event"] for e in journal.events] == ["ingested"]
    assert path.read_text() == '{"event": "ingested", "rows": 10}\n'
    journal.append({"event": "shard", "file": "a.arrow", "rows": 5})
    journal.append({"event": "shard", "file": "b.arrow", "rows": 5})
    assert [e.get("file") for e in Journal(path).all("shard")] == ["a.arrow", "b.arrow"]


def test_prune_keeps_the_live_and_the_previously_live_generation(tmp_path: Path) -> None:
    paths = IndexPaths(tmp_path / "inc")
    for number in (1, 2, 3, 4):
        paths.generation(number).mkdir(parents=True)
    paths.staging(5).mkdir()
    paths.current_file.write_text("gen-000004\n")
    paths.prune(previous=2)  # gen 3 was renamed into place but never made live
    assert paths.generations() == [2, 4] and not paths.staging(5).exists()


def test_orphan_generation_is_removed_and_the_one_readers_use_is_kept(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, idx = write_parquet(tmp_path / "c.parquet", rows(30)), tmp_path / "idx"
    build_index(options(data, idx, tiny_model))
    write_parquet(data, rows(35))
    build_index(options(data, idx, tiny_model))
    write_parquet(data, rows(40))
    crashed(options(data, idx, tiny_model), monkeypatch, layout_mod, "atomic_write_bytes")
    paths = IndexPaths.of(idx, "inc")
    assert (paths.generations(), paths.current()) == ([1, 2, 3], 2)
    result = build_index(options(data, idx, tiny_model))
    assert paths.generations() == [2, result.generation] == [2, 4]


def test_overwrite_keeps_the_generation_that_was_live(tmp_path: Path, tiny_model: Path) -> None:
    data, idx = write_parquet(tmp_path / "c.parquet", rows(20)), tmp_path / "idx"
    build_index(options(data, idx, tiny_model))
    build_index(options(data, idx, tiny_model, overwrite=True))
    build_index(options(data, idx, tiny_model, overwrite=True))
    assert IndexPaths.of(idx, "inc").generations() == [2, 3]


def test_carry_over_into_a_changed_column_type_names_the_column(tmp_path: Path, tiny_model: Path) -> None:
    data, idx = tmp_path / "c.parquet", tmp_path / "idx"
    write_parquet(data, [{**r, "year": "n/a" if r["id"] == 0 else str(2000 + r["id"])} for r in rows(20)])
    build_index(options(data, idx, tiny_model))
    write_parquet(data, [{**r, "year": 2000 + r["id"]} for r in rows(20)][1:])  # id 0 is carried over
    with pytest.raises(CorpusError, match=r"types: year \(VARCHAR -> BIGINT\); pass --sync .* or --overwrite"):
        build_index(options(data, idx, tiny_model))
    assert build_index(options(data, idx, tiny_model, sync=True)).rows == 19


def test_naming_the_resolved_backend_or_max_length_is_no_other_setting(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, idx = write_parquet(tmp_path / "c.parquet", rows(20)), tmp_path / "idx"
    monkeypatch.setattr(encode_mod, "_onnxruntime_installed", lambda: False)  # "auto" resolves to torch
    first = build_index(options(data, idx, tiny_model, encoder=EncoderConfig()))
    model = read_manifest(IndexPaths.of(idx, "inc").generation(first.generation or 0))["model"]
    assert model["backend"] == "torch"

    def again(**encoder: Any) -> BuildResult:
        return build_index(options(data, idx, tiny_model, encoder=replace(EncoderConfig(), **encoder)))

    assert again(backend="torch").up_to_date
    assert again(max_seq_length=model["max_seq_length"]).up_to_date
    with pytest.raises(IndexExistsError, match="backend 'torch' -> 'onnx'"):
        again(backend="onnx")
    with pytest.raises(IndexExistsError, match=f"max_seq_length {model['max_seq_length']} -> 16"):
        again(max_seq_length=16)
    assert IndexPaths.of(idx, "inc").current() == first.generation


def test_index_with_the_old_derived_id_scheme(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept where its files are named as before (the ids are the same); refused where a glob now names a file
    by its path below the glob's folder, so that rows are never duplicated under new ids."""
    from pipeline.build import LEGACY_DERIVED_SCHEME

    rows = [{"text": t} for t in sample_texts(10)]
    plain = write_parquet(tmp_path / "c.parquet", rows)
    write_parquet(tmp_path / "data" / "a" / "x.parquet", rows)
    for name, source in (("plain", plain), ("glob", tmp_path / "data" / "*" / "x.parquet")):
        with monkeypatch.context() as m:
            m.setattr(build_mod, "id_scheme", lambda *_: LEGACY_DERIVED_SCHEME)
            build_index(options(source, tmp_path / "idx", tiny_model, id_column=None, name=name))
    glob_gen = IndexPaths.of(tmp_path / "idx", "glob").require_current()
    manifest = read_manifest(glob_gen)
    for entry in manifest["sources"]:
        entry["name"] = Path(entry["name"]).name  # as the old naming had it
    (glob_gen / "manifest.json").write_text(json.dumps(manifest))

    assert build_index(options(plain, tmp_path / "idx", tiny_model, id_column=None, name="plain")).up_to_date
    glob = options(tmp_path / "data" / "*" / "x.parquet", tmp_path / "idx", tiny_model, id_column=None, name="glob")
    with pytest.raises(IndexExistsError, match=r"exists with other settings \(id_scheme .*pass --overwrite"):
        build_index(glob)
    assert build_index(replace(glob, overwrite=True)).rows == 10


def _spy(monkeypatch: pytest.MonkeyPatch, target: object, name: str, log: list[str]) -> None:
    original: Callable[..., Any] = getattr(target, name)

    def spy(*a: Any, **k: Any) -> Any:
        log.append(name)
        return original(*a, **k)

    monkeypatch.setattr(target, name, spy)


def test_tokenizer_workers_stop_before_the_index_is_built(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, idx = write_parquet(tmp_path / "c.parquet", rows(20)), tmp_path / "idx"
    calls: list[str] = []
    _spy(monkeypatch, encode_mod.Encoder, "close", calls)
    _spy(monkeypatch, build_mod, "build_vectors", calls)
    build_index(options(data, idx, tiny_model, encoder=EncoderConfig(backend="torch", tokenizer_workers=1)))
    assert calls == ["close", "build_vectors"]


def test_tokenizer_workers_stop_when_encoding_fails(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, idx = write_parquet(tmp_path / "c.parquet", rows(20)), tmp_path / "idx"
    calls: list[str] = []
    _spy(monkeypatch, encode_mod.Encoder, "close", calls)
    monkeypatch.setattr(build_mod, "ShardWriter", lambda *_a, **_k: crash())
    with pytest.raises(Crash):
        build_index(options(data, idx, tiny_model))
    assert calls == ["close"]


def test_an_in_place_update_that_loses_vectors_is_rebuilt(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import ann

    data, idx = write_parquet(tmp_path / "c.parquet", rows(20)), tmp_path / "idx"
    build_index(options(data, idx, tiny_model))
    write_parquet(data, rows(25))
    monkeypatch.setattr(ann, "update_index", lambda index, remove, source: True)  # adds nothing
    result = build_index(options(data, idx, tiny_model))
    manifest = read_manifest(IndexPaths.of(idx, "inc").require_current())
    assert result.rows == manifest["index"]["ntotal"] == 25 and not manifest["index"].get("updated_in_place")


def test_an_unreadable_previous_index_is_rebuilt_from_the_embeddings(tmp_path: Path, tiny_model: Path) -> None:
    data, idx = write_parquet(tmp_path / "c.parquet", rows(20)), tmp_path / "idx"
    first = build_index(options(data, idx, tiny_model))
    faiss_file = IndexPaths.of(idx, "inc").require_current() / "vectors.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])  # a torn copy, as a bad disk might leave it
    write_parquet(data, rows(22))
    result = build_index(options(data, idx, tiny_model))
    assert result.generation == first.generation + 1 and result.encoded == 2  # the 20 were not re-encoded
    searcher = Searcher(IndexPaths.of(idx, "inc"), encoder=EncoderConfig(backend="torch"))
    assert searcher.generation.index.ntotal == 22
