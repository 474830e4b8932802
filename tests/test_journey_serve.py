"""A user's journey through searching and serving: the CLI's JSON output, the server's answers to odd requests and
the library's Searcher, on a small index built with the tiny model."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.build import build_index
from pipeline.config import BuildOptions
from pipeline.encode import EncoderConfig
from pipeline.errors import UsageError
from pipeline.filters import compile_filter
from pipeline.layout import IndexPaths
from pipeline.search import Searcher
from tests.conftest import sample_texts
from tests.helpers import run, write_parquet

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.server import ServerConfig, create_app  # noqa: E402

N_ROWS = 24
SPECIAL = [math.nan, math.inf, -math.inf, 1.5]


def corpus_rows() -> list[dict[str, Any]]:
    texts = sample_texts(N_ROWS, seed=3)
    return [
        {
            "id": f"d{i}",
            "text": texts[i],
            "year": 2000 + i % 5,
            "val": SPECIAL[i % 4],
            "blob": bytes([i, 0, 255]),
            "ts": dt.datetime(2021, 1, 1) + dt.timedelta(hours=i),
        }
        for i in range(N_ROWS)
    ]


@pytest.fixture(scope="module")
def index_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("journey-serve")
    source = write_parquet(base / "docs.parquet", corpus_rows())
    options = BuildOptions(
        sources=[str(source)],
        name="docs",
        index_dir=base / "indexes",
        model=str(tiny_model),
        id_column="id",
        encoder=EncoderConfig(backend="torch"),
    )
    build_index(options)
    return base / "indexes"


@pytest.fixture(scope="module")
def client(index_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ServerConfig(index_dir=index_dir, reload_interval_s=0))) as c:
        for _ in range(600):
            if c.get("/health").status_code == 200:
                break
            import time

            time.sleep(0.05)
        yield c


def _strict(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _expected(hit_id: str) -> dict[str, Any]:
    row = next(r for r in corpus_rows() if r["id"] == hit_id)
    return {"val": row["val"] if math.isfinite(row["val"]) else None, "blob": base64.b64encode(row["blob"]).decode()}


def test_cli_json_hits_are_strict_json_like_the_server(index_dir: Path, client: TestClient, tmp_path: Path) -> None:
    """NaN and infinite floats come out as null and BLOBs as base64, in json, jsonl and --queries output."""
    k = str(N_ROWS)
    common = ("--index-dir", index_dir, "-i", "docs", "-k", k, "--columns", "val,blob")
    single = run("query", "cat dog", *common, "--format", "json")
    assert single.exit_code == 0, single.output
    hits = _strict(single.stdout)
    assert len(hits) == N_ROWS
    for hit in hits:
        assert {"val": hit["val"], "blob": hit["blob"]} == _expected(hit["id"])
    lines = run("query", "cat dog", *common, "--format", "jsonl")
    assert [_strict(line) for line in lines.stdout.splitlines()] == hits
    queries = tmp_path / "q.txt"
    queries.write_text("cat dog\n")
    out = tmp_path / "hits.jsonl"
    batch = run("query", "--queries", queries, *common, "--output", out)
    assert batch.exit_code == 0, batch.output
    assert [_strict(line) for line in out.read_text().splitlines()] == [{"query_id": 0, **h} for h in hits]
    served = client.post("/search", json={"query": "cat dog", "k": N_ROWS, "columns": ["val", "blob"]}).json()
    assert {h["id"]: (h["val"], h["blob"]) for h in served["results"][0]["hits"]} == {
        h["id"]: (h["val"], h["blob"]) for h in hits
    }


def test_query_file_that_is_not_text_is_a_clear_error(index_dir: Path, tmp_path: Path) -> None:
    binary = tmp_path / "queries.bin"
    binary.write_bytes(b"cat\n\xbe\xef\x00\xff\n")
    result = run("query", "--queries", binary, "--index-dir", index_dir, "-i", "docs")
    assert result.exit_code == 1
    assert "is not UTF-8 text" in result.output and "unexpected" not in result.output


def test_an_empty_column_list_returns_no_metadata(index_dir: Path, client: TestClient) -> None:
    body = client.post("/search", json={"query": "cat dog", "k": 3, "columns": []}).json()
    assert [set(hit) for hit in body["results"][0]["hits"]] == [{"rank", "score", "id"}] * 3
    searcher = Searcher(IndexPaths.of(index_dir, "docs"), encoder=EncoderConfig(backend="torch"))
    try:
        assert [set(hit) for hit in searcher.search(["cat dog"], k=3, columns=[])[0]] == [{"rank", "score", "id"}] * 3
        assert "blob" in searcher.search(["cat dog"], k=1)[0][0]  # no list at all: every column
    finally:
        searcher.close()


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_sent_as_json_is_told_so(client: TestClient, content_type: str | None) -> None:
    """`curl -d '{...}'` without -H sends a form body: the error names the missing Content-Type."""
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/search", content=b'{"query": "cat", "k": 1}', headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in response.json()["error"]["message"]
    schema = client.get("/openapi.json").json()["paths"]["/search"]["post"]["responses"]
    assert schema["415"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_metrics_401_is_documented_as_the_json_it_is(index_dir: Path) -> None:
    app = create_app(ServerConfig(index_dir=index_dir, api_key="k", reload_interval_s=0, warmup=False))
    with TestClient(app) as c:
        denied = c.get("/metrics")
        assert denied.status_code == 401 and denied.headers["content-type"] == "application/json"
        responses = c.get("/openapi.json", headers={"X-API-Key": "k"}).json()["paths"]["/metrics"]["get"]["responses"]
    assert set(responses["401"]["content"]) == {"application/json"}
    assert responses["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_timestamp_filter_honours_a_utc_offset(client: TestClient) -> None:
    """A TIMESTAMP column is compared in UTC ("Z"): 10:00+02:00 is 08:00Z, not 10:00."""
    _, params = compile_filter([{"field": "ts", "op": "ge", "value": "2021-01-01T10:00:00+02:00"}], {"ts": "TIMESTAMP"})
    assert params == [dt.datetime(2021, 1, 1, 8)]
    edge = {"query": "cat", "filter": [{"field": "ts", "op": "le", "value": "9999-12-31T23:00:00-02:00"}]}
    response = client.post("/search", json=edge)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_filter_value")

    def ids(value: str) -> set[str]:
        body = {"query": "cat", "k": N_ROWS, "filter": [{"field": "ts", "op": "ge", "value": value}]}
        return {hit["id"] for hit in client.post("/search", json=body).json()["results"][0]["hits"]}

    assert ids("2021-01-01T10:00:00+02:00") == ids("2021-01-01T08:00:00Z") == {f"d{i}" for i in range(8, N_ROWS)}


def test_searcher_from_a_folder_refuses_a_bare_string_and_k_below_one(index_dir: Path) -> None:
    searcher = Searcher(index_dir / "docs", encoder=EncoderConfig(backend="torch"))
    try:
        assert searcher.paths.name == "docs"
        assert len(searcher.search(["cat dog"], k=2)[0]) == 2
        with pytest.raises(UsageError, match="list of texts"):
            searcher.search("cat dog", k=2)  # type: ignore[arg-type]
        for k in (0, -1):
            with pytest.raises(UsageError, match="k must be at least 1"):
                searcher.search(["cat dog"], k=k)
    finally:
        searcher.close()


@pytest.mark.parametrize(("value", "status", "found"), [(10**400, 400, 0), (10**100, 200, 12), (-(10**30), 200, 18)])
def test_huge_integers_on_a_float_column(client: TestClient, value: int, status: int, found: int) -> None:
    """JSON integers have no size limit: beyond a double they are a 400, not a 500; beyond 128 bits they still
    compare as numbers (lt: the finite values and -inf; gt: the finite ones, +inf and NaN, which DuckDB sorts
    above every number)."""
    body = {
        "query": "cat",
        "k": N_ROWS,
        "filter": [{"field": "val", "op": "lt" if value > 0 else "gt", "value": value}],
    }
    response = client.post("/search", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    if status == 200:
        assert len(response.json()["results"][0]["hits"]) == found
    else:
        assert response.json()["error"]["code"] == "invalid_filter_value"


def test_hybrid_weights_that_are_all_zero_are_refused(index_dir: Path) -> None:
    """Both weights 0 fused nothing: "no results" and exit 0, as if the index held no match."""
    result = run(
        "query", "cat dog", "--index-dir", index_dir, "-i", "docs", "--mode", "hybrid", "--weights", "dense=0,lexical=0"
    )
    assert result.exit_code == 2
    assert "both 0" in result.output


def test_a_damaged_metadata_database_is_reported_as_such(index_dir: Path, tmp_path: Path) -> None:
    import shutil

    damaged = tmp_path / "indexes"
    shutil.copytree(index_dir, damaged)
    db = next(damaged.glob("docs/gen-*/metadata.duckdb"))
    with db.open("r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    for extra in ([], ["--where", "year > 2001"]):
        result = run("query", "cat", "-i", "docs", "--index-dir", damaged, *extra)
        # with a filter too: not "invalid filter" with exit 2, since the condition is fine and the file is not
        assert result.exit_code == 1, result.output
        assert "is unreadable" in result.stderr and "rebuild the index with --overwrite" in result.stderr


def test_a_query_file_with_no_hits_writes_the_hit_columns(index_dir: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    queries = tmp_path / "queries.txt"
    queries.write_text("cat\ndog\n")
    out = tmp_path / "hits.parquet"
    result = run(
        "query", "--queries", queries, "-i", "docs", "--index-dir", index_dir, "--where", "year > 3000", "-o", out
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.column_names == ["query_id", "rank", "score", "id"]
