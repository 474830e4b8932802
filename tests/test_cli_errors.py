"""CLI defects found in review: each bad input gets one `Error:` line and the right exit code, fast."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from pipeline.cli.output import EXIT_BROKEN_PIPE, handle_errors
from pipeline.errors import FilterError
from tests.helpers import run, write_parquet


def one_line_error(result: Result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def fake_index(index_dir: Path, name: str, generation: str = "gen-000001") -> Path:
    """An index folder whose CURRENT names a generation folder: enough for the checks made before loading."""
    root = index_dir / name
    (root / "gen-000001").mkdir(parents=True)
    (root / "CURRENT").write_text(f"{generation}\n")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    root = tmp_path_factory.mktemp("cli-errors")
    data = write_parquet(root / "c.parquet", [{"id": i, "text": f"river city bank {i}"} for i in range(20)])
    args = ("index", data, "--name", "t", "--index-dir", root / "idx", "--model", tiny_model, "--backend", "torch")
    assert run(*args, "--id-column", "id", "-q").exit_code == 0
    return root / "idx"


# --- 1. a partial --weights keeps the default of the mode it does not name ----------------------------------


def test_partial_weights_keep_the_other_default() -> None:
    from pipeline.cli.options import hybrid_config

    assert dict(hybrid_config(None, "dense=1", None, None).weights) == {"dense": 1.0, "lexical": 0.2}
    assert dict(hybrid_config("rrf", "lexical=0.5", None, None).weights) == {"dense": 1.0, "lexical": 0.5}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`serve` up to uvicorn.run, which records its arguments instead of serving."""
    import uvicorn

    from pipeline import server

    seen: dict[str, Any] = {}
    monkeypatch.setattr(server, "create_app", lambda config: seen.setdefault("config", config))
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.setdefault("options", options))
    return seen


def test_serve_partial_weights(served: dict[str, Any], tmp_path: Path) -> None:
    fake_index(tmp_path, "demo")
    result = run("serve", "--index-dir", tmp_path, "--port", "0", "--weights", "dense=1")
    assert result.exit_code == 0, result.output
    assert dict(served["config"].fusion.weights) == {"dense": 1.0, "lexical": 0.2}


# --- 2. serve checks its indexes before starting --------------------------------------------------------------


def test_serve_unknown_or_uncommitted_index(served: dict[str, Any], tmp_path: Path) -> None:
    one_line_error(run("serve", "--index-dir", tmp_path, "--index", "nope"), 1, "no index named 'nope'")
    one_line_error(run("serve", "--index-dir", tmp_path), 1, "no index in")
    one_line_error(run("serve", "--index-dir", tmp_path, "--index", "bad/name"), 2, "invalid index name")
    (tmp_path / "unfinished").mkdir()
    one_line_error(run("serve", "--index-dir", tmp_path, "-i", "unfinished"), 1, "has no complete generation")
    fake_index(tmp_path, "dangling", generation="gen-000009")
    one_line_error(run("serve", "--index-dir", tmp_path), 1, "not a complete generation")
    assert "options" not in served


# --- 3. serve: port taken, host unknown, uvicorn's own exit code ----------------------------------------------


def test_serve_port_in_use(served: dict[str, Any], tmp_path: Path) -> None:
    fake_index(tmp_path, "demo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--index-dir", tmp_path, "--port", port)
    one_line_error(result, 1, f"port {port} on 127.0.0.1 is in use")
    assert "options" not in served


def test_serve_unresolvable_host(served: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_index(tmp_path, "demo")

    def unknown(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    result = run("serve", "--index-dir", tmp_path, "--host", "no.such.host.invalid", "--api-key", "k")
    one_line_error(result, 1, "cannot resolve host 'no.such.host.invalid'")


def test_serve_maps_uvicorns_startup_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from pipeline import server

    def fails(app: object, **options: object) -> None:
        sys.exit(3)

    monkeypatch.setattr(server, "create_app", lambda config: None)
    monkeypatch.setattr(uvicorn, "run", fails)
    fake_index(tmp_path, "demo")
    one_line_error(run("serve", "--index-dir", tmp_path, "--port", "0"), 1, "the server could not start")


# --- 4. info takes --index as query and serve do ---------------------------------------------------------------


def test_info_takes_index_option(built: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    shutil.copytree(built, index_dir)
    shutil.copytree(index_dir / "t", index_dir / "u")
    one_line_error(run("info", "--index-dir", index_dir), 2, "choose one with --index")
    for args in (("--index", "u"), ("-i", "u"), ("u",), ("u", "-i", "u")):
        result = run("info", "--index-dir", index_dir, *args)
        assert result.exit_code == 0 and result.stdout.startswith("index       u "), (args, result.output)
    one_line_error(run("info", "t", "--index-dir", index_dir, "-i", "u"), 2, "two index names given")


# --- 5. query --output and --query-column need --queries; the format is known before any query runs ---------


def test_query_output_without_queries_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "hits.jsonl"
    one_line_error(run("query", "river", "--index-dir", tmp_path, "-o", out), 2, "--output goes with --queries")
    one_line_error(run("query", "river", "--index-dir", tmp_path, "--query-column", "q"), 2, "--query-column goes")
    assert not out.exists()


def test_query_output_format_and_folder_checked_first(tmp_path: Path) -> None:
    queries = tmp_path / "q.txt"
    queries.write_text("river\n")
    base = ("query", "--queries", queries, "--index-dir", tmp_path / "no-index-here")
    one_line_error(run(*base, "-o", tmp_path / "hits.csv"), 2, "cannot tell the format of hits.csv")
    one_line_error(run(*base, "-o", tmp_path / "missing" / "hits.jsonl"), 2, "does not exist")
    one_line_error(run(*base, "--format", "csv"), 2, "--queries writes parquet or jsonl, not csv")
    one_line_error(run(*base, "--format", "parquet"), 2, "--format parquet needs --output")
    # a known format reaches the index lookup, which fails here for want of an index
    one_line_error(run(*base, "-o", tmp_path / "hits.csv", "--format", "jsonl"), 1, "no index in")


def test_query_output_suffix_picks_the_format(built: Path, tmp_path: Path) -> None:
    queries = tmp_path / "q.txt"
    queries.write_text("river\ncity\n")
    for name, fmt in (("hits.parquet", "parquet"), ("hits.JSONL", "jsonl"), ("hits.csv", "jsonl")):
        out = tmp_path / name
        extra = ("--format", fmt) if name.endswith(".csv") else ()
        result = run("query", "--queries", queries, "--index-dir", built, "-k", "2", "-o", out, *extra)
        assert result.exit_code == 0, result.output
        if fmt == "parquet":
            assert pq.read_table(out).num_rows == 4
        else:
            assert [json.loads(line)["rank"] for line in out.read_text().splitlines()] == [1, 2, 1, 2]


# --- 6. a reader that closes the pipe early ------------------------------------------------------------------


def test_broken_pipe_exits_quietly_in_process() -> None:
    @click.command()
    @handle_errors
    def talk() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    result = CliRunner().invoke(talk, [], obj={})
    assert result.exit_code == EXIT_BROKEN_PIPE == 141 and result.output == ""


def test_broken_pipe_exits_quietly(tmp_path: Path) -> None:
    """`bmsearch list --json | (reader gone)`: exit 141, nothing on stderr (no 'unexpected BrokenPipeError')."""
    fake_index(tmp_path, "x", generation="gen-000009")  # listed with its error, so stdout gets a row
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write
    cmd = [sys.executable, "-m", "pipeline.cli", "list", "--json", "--index-dir", str(tmp_path)]
    proc = subprocess.run(cmd, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


# --- 7. bad values are usage errors, not "unexpected" ---------------------------------------------------------


def test_bench_memory_rows_must_be_numbers() -> None:
    one_line_error(run("bench", "memory", "--rows", "abc"), 2, "'abc' is not a comma-separated list of row counts")
    one_line_error(run("bench", "memory", "--rows", "0,10"), 2, "row counts must be at least 1")


def test_query_column_that_is_not_text(tmp_path: Path) -> None:
    queries = write_parquet(tmp_path / "intq.parquet", [{"text": 1}, {"text": 2}])
    result = run("query", "--queries", queries, "--index-dir", tmp_path)
    one_line_error(result, 1, "query column 'text' in")
    assert "is int64, not a string" in result.stderr


# --- 8. list shows every index, a broken one with its error ---------------------------------------------------


def test_list_shows_a_broken_index_and_fails_at_the_end(built: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    shutil.copytree(built, index_dir)
    (index_dir / "broken").mkdir()
    shutil.copytree(index_dir / "t" / "gen-000001", index_dir / "broken" / "gen-000001")
    (index_dir / "broken" / "CURRENT").write_text("gen-000002\n")
    table = run("list", "--index-dir", index_dir)
    one_line_error(table, 1, "1 of 2 indexes cannot be read: broken")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["name", "generation", "rows", "model", "index", "created", "error"]
    assert lines[2].startswith("broken") and "not a complete generation" in lines[2]
    assert lines[3].startswith("t ") and " 20 " in lines[3]
    listing = run("list", "--index-dir", index_dir, "--json")
    assert listing.exit_code == 1
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert "not a complete generation" in rows["broken"]["error"] and rows["broken"]["rows"] is None
    assert rows["t"]["error"] is None and rows["t"]["rows"] == 20
    shutil.rmtree(index_dir / "broken")
    healthy = run("list", "--index-dir", index_dir)
    assert healthy.exit_code == 0 and "error" not in healthy.stdout.splitlines()[0]


# --- 9. an invalid --where is a usage error, like an unknown --columns -----------------------------------------


def test_where_errors_are_usage_errors(built: Path) -> None:
    assert FilterError.exit_code == 2
    one_line_error(run("query", "river", "--index-dir", built, "--where", "nosuchcol = 1"), 2, "invalid filter")
    one_line_error(run("query", "river", "--index-dir", built, "--where", "text LIKE"), 2, "invalid filter")
