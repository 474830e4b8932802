"""Re-runs are incremental and idempotent, killed runs resume, writers exclude each other, readers never see a torn index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import LockedError
from pipeline.layout import IndexPaths
from pipeline.lock import IndexLock
from pipeline.search import Searcher
from tests.conftest import sample_texts
from tests.helpers import run, write_parquet


def rows(n: int, start: int = 0, edit: set[int] | None = None) -> list[dict]:
    texts = sample_texts(start + n, seed=3)[start:]
    edit = edit or set()
    return [{"id": start + i, "text": t + (" edited" if start + i in edit else "")} for i, t in enumerate(texts)]


def index(data: Path, idx: Path, model: Path, *extra: object) -> dict:
    result = run(
        "index",
        data,
        "--name",
        "inc",
        "--index-dir",
        idx,
        "--model",
        model,
        "--id-column",
        "id",
        "--backend",
        "torch",
        "--json",
        *extra,
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def keys_of(idx: Path) -> set[int]:
    searcher = Searcher(IndexPaths.of(idx, "inc"))
    try:
        return {r[0] for r in searcher.generation.store.rows("SELECT id FROM docs")}
    finally:
        searcher.close()


def test_new_and_changed_rows_only_are_encoded(tmp_path: Path, tiny_model: Path) -> None:
    data = tmp_path / "c.parquet"
    write_parquet(data, rows(100))
    first = index(data, tmp_path / "idx", tiny_model)
    assert (first["new"], first["encoded"], first["generation"]) == (100, 100, 1)
    write_parquet(data, rows(110, edit={3, 4, 5, 6, 7}))
    second = index(data, tmp_path / "idx", tiny_model)
    assert (second["new"], second["changed"], second["unchanged"], second["encoded"]) == (10, 5, 95, 15)
    assert second["generation"] == 2 and second["rows"] == 110
    hits = json.loads(
        run(
            "query", rows(110, edit={5})[5]["text"], "--index-dir", tmp_path / "idx", "-k", "1", "--format", "json"
        ).stdout
    )
    assert hits[0]["id"] == 5 and hits[0]["text"].endswith("edited")
    third = index(data, tmp_path / "idx", tiny_model)
    assert third["up_to_date"] and third["encoded"] == 0


def test_vanished_ids_are_kept_unless_sync(tmp_path: Path, tiny_model: Path) -> None:
    data = tmp_path / "c.parquet"
    write_parquet(data, rows(50))
    index(data, tmp_path / "idx", tiny_model)
    write_parquet(data, rows(40))
    kept = index(data, tmp_path / "idx", tiny_model)
    assert kept["rows"] == 50 and kept["removed"] == 0 and kept["encoded"] == 0
    synced = index(data, tmp_path / "idx", tiny_model, "--sync")
    assert synced["rows"] == 40 and synced["removed"] == 10 and synced["encoded"] == 0
    assert keys_of(tmp_path / "idx") == set(range(40))


def test_rebuild_reencodes_nothing_and_overwrite_everything(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "c.parquet", rows(30))
    index(data, tmp_path / "idx", tiny_model)
    assert index(data, tmp_path / "idx", tiny_model, "--rebuild")["encoded"] == 0
    assert index(data, tmp_path / "idx", tiny_model, "--overwrite")["encoded"] == 30


def test_killed_run_resumes_to_the_same_index(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "big.parquet", rows(6_000))
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli.__main__",
        "index",
        str(data),
        "--name",
        "inc",
        "--index-dir",
        str(tmp_path / "idx"),
        "--model",
        str(tiny_model),
        "--id-column",
        "id",
        "--backend",
        "torch",
        "--shard-rows",
        "100",
        "--json",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journals = tmp_path / "idx" / "inc" / "work"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        shards = [
            line for j in journals.glob("*/journal.jsonl") for line in j.read_text().splitlines() if '"shard"' in line
        ]
        if len(shards) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed mid-encode"
    assert not (tmp_path / "idx" / "inc" / "CURRENT").exists()
    resumed = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
    assert resumed["resumed_rows"] >= 300 and resumed["encoded"] + resumed["resumed_rows"] == 6_000
    reference = json.loads(
        subprocess.run(
            [*cmd[:8], str(tmp_path / "ref"), *cmd[9:]], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert resumed["rows"] == reference["rows"] == 6_000
    a, b = Searcher(IndexPaths.of(tmp_path / "idx", "inc")), Searcher(IndexPaths.of(tmp_path / "ref", "inc"))
    ids = np.arange(0, 6_000, 97)
    assert np.allclose(
        [a.generation.index.reconstruct(int(i)) for i in ids],
        [b.generation.index.reconstruct(int(i)) for i in ids],
        atol=1e-5,
    )
    assert keys_of(tmp_path / "idx") == set(range(6_000))
    assert not list((tmp_path / "idx" / "inc" / "work").glob("*"))


def test_second_writer_fails_fast_naming_the_holder(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "c.parquet", rows(10))
    paths = IndexPaths.of(tmp_path / "idx", "inc")
    with IndexLock(paths.lock_file):
        result = run("index", data, "--name", "inc", "--index-dir", tmp_path / "idx", "--model", tiny_model)
        assert result.exit_code == 1
        assert f"being written by another run (pid {os.getpid()} on" in result.stderr
        with pytest.raises(LockedError):
            IndexLock(paths.lock_file).acquire()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "c.parquet", rows(10))
    paths = IndexPaths.of(tmp_path / "idx", "inc")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from pipeline.lock import IndexLock; "
            "IndexLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)",
            str(paths.lock_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert json.loads(paths.lock_file.read_text())["pid"] == holder.pid
    index(data, tmp_path / "idx", tiny_model)


def test_crash_leftovers_are_never_read_and_get_cleaned(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "c.parquet", rows(20))
    index(data, tmp_path / "idx", tiny_model)
    root = tmp_path / "idx" / "inc"
    (root / ".gen-000002.tmp").mkdir()
    (root / ".gen-000002.tmp" / "vectors.faiss").write_bytes(b"half")
    assert Searcher(IndexPaths.of(tmp_path / "idx", "inc")).generation.number == 1
    write_parquet(data, rows(25))
    summary = index(data, tmp_path / "idx", tiny_model)
    assert summary["generation"] == 3 and not (root / ".gen-000002.tmp").exists()


def test_vanished_source_keeps_last_good_generation(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "c.parquet", rows(20))
    index(data, tmp_path / "idx", tiny_model)
    data.unlink()
    result = run("index", data, "--name", "inc", "--index-dir", tmp_path / "idx", "--model", tiny_model)
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert run("query", "river", "--index-dir", tmp_path / "idx").exit_code == 0


def test_reader_keeps_its_generation_until_it_reloads(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "c.parquet", rows(20))
    index(data, tmp_path / "idx", tiny_model)
    searcher = Searcher(IndexPaths.of(tmp_path / "idx", "inc"))
    assert len(searcher.search(["river"], k=50)[0]) == 20
    write_parquet(data, rows(30))
    index(data, tmp_path / "idx", tiny_model)
    assert len(searcher.search(["river"], k=50)[0]) == 20
    assert searcher.reload_if_changed() and len(searcher.search(["river"], k=50)[0]) == 30


def test_trained_index_is_updated_in_place_with_measured_recall(tmp_path: Path, tiny_model: Path) -> None:
    data = write_parquet(tmp_path / "c.parquet", rows(2_000))
    first = index(data, tmp_path / "idx", tiny_model, "--index-type", "IVF16,Flat", "--target-recall", "0.9")
    manifest = json.loads((tmp_path / "idx" / "inc" / "gen-000001" / "manifest.json").read_text())["index"]
    assert (
        first["index_type"] == "IVF16,Flat" and manifest["recall"] >= 0.9 and manifest["search_params"]["nprobe"] >= 1
    )
    assert not manifest["updated_in_place"] and manifest["eval_queries"] > 0
    write_parquet(data, rows(2_020, edit={1, 2}))
    second = index(data, tmp_path / "idx", tiny_model, "--index-type", "IVF16,Flat", "--target-recall", "0.9")
    assert (second["new"], second["changed"], second["encoded"]) == (20, 2, 22)
    updated = json.loads((tmp_path / "idx" / "inc" / "gen-000002" / "manifest.json").read_text())["index"]
    assert updated["updated_in_place"] and updated["ntotal"] == 2_020 and updated["removed"] == 2
    assert updated["search_params"] == manifest["search_params"]
    info = run("info", "--index-dir", tmp_path / "idx")
    assert "IVF16,Flat" in info.stdout and "recall@10" in info.stdout
    hits = json.loads(
        run("query", rows(2_020)[2_010]["text"], "--index-dir", tmp_path / "idx", "-k", "1", "--format", "json").stdout
    )
    assert hits[0]["id"] == 2_010


def test_hnsw_takes_appends_in_place_and_rebuilds_when_rows_change(tmp_path: Path, tiny_model: Path) -> None:
    def manifest(gen: int) -> dict:
        return json.loads((tmp_path / "idx" / "inc" / f"gen-{gen:06d}" / "manifest.json").read_text())["index"]

    data = write_parquet(tmp_path / "c.parquet", rows(600))
    index(data, tmp_path / "idx", tiny_model, "--index-type", "HNSW16")
    write_parquet(data, rows(630))  # appends only: nothing to remove, so the graph grows in place
    index(data, tmp_path / "idx", tiny_model, "--index-type", "HNSW16")
    appended = manifest(2)
    assert appended["updated_in_place"] and appended["ntotal"] == 630 and appended["removed"] == 0
    assert appended["search_params"] == manifest(1)["search_params"]
    write_parquet(data, rows(630, edit={3}))  # a changed row must leave the graph: HNSW cannot, so rebuild
    index(data, tmp_path / "idx", tiny_model, "--index-type", "HNSW16")
    assert not manifest(3)["updated_in_place"] and manifest(3)["ntotal"] == 630
    hits = json.loads(
        run(
            "query", rows(630, edit={3})[3]["text"], "--index-dir", tmp_path / "idx", "-k", "1", "--format", "json"
        ).stdout
    )
    assert hits[0]["id"] == 3


@pytest.mark.parametrize(
    "extra,message",
    [
        (("--index-type", "IVF-nonsense"), "IVF-nonsense"),
        (("--memory-budget", "1K"), "memory budget"),
    ],
)
def test_bad_index_options_keep_the_last_good_generation(
    tmp_path: Path, tiny_model: Path, extra: tuple[str, ...], message: str
) -> None:
    data = write_parquet(tmp_path / "c.parquet", rows(30))
    index(data, tmp_path / "idx", tiny_model)
    write_parquet(data, rows(40))
    result = run(
        "index",
        data,
        "--name",
        "inc",
        "--index-dir",
        tmp_path / "idx",
        "--model",
        tiny_model,
        "--id-column",
        "id",
        *extra,
    )
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and message in lines[-1] and lines[-1].startswith("Error: ")
    assert not any(line.startswith("encoding") for line in lines), "options must be checked before encoding"
    assert (tmp_path / "idx" / "inc" / "CURRENT").read_text().strip() == "gen-000001"
    assert (
        len(json.loads(run("query", "river", "--index-dir", tmp_path / "idx", "-k", "50", "--format", "json").stdout))
        == 30
    )


def test_update_with_another_model_is_refused_and_keeps_the_index(tmp_path: Path, tiny_model: Path) -> None:
    from tests.conftest import build_tiny_bert

    data = write_parquet(tmp_path / "c.parquet", rows(20))
    index(data, tmp_path / "idx", tiny_model)
    other = build_tiny_bert(tmp_path / "other-model")
    (other / "config.json").write_text(
        (other / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 48')
    )
    from transformers import BertConfig, BertModel

    BertModel(BertConfig.from_pretrained(other)).save_pretrained(other)
    result = run("index", data, "--name", "inc", "--index-dir", tmp_path / "idx", "--model", other, "--id-column", "id")
    assert result.exit_code == 1 and "exists with other settings (model_name" in result.stderr
    assert "model_weights" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "pass --overwrite" in result.stderr
    assert (tmp_path / "idx" / "inc" / "CURRENT").read_text().strip() == "gen-000001"
