"""`bmsearch serve` app: search, filters, auth, health/indexes/metrics, OpenAPI, bad requests, fuzzing,
micro-batching and hot reload, against small indexes built with the tiny model."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.batcher import MicroBatcher
from pipeline.build import build_index
from pipeline.config import BuildOptions
from pipeline.encode import EncoderConfig
from pipeline.layout import IndexPaths
from pipeline.search import Searcher
from tests.conftest import sample_texts
from tests.helpers import run, write_parquet

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.server import ServerConfig, create_app  # noqa: E402

N_ROWS = 60
KEY = "s3cret-key"


def corpus_rows(n: int, start: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    texts = sample_texts(n, seed=seed)
    return [
        {
            "id": f"d{i}",
            "text": texts[i - start],
            "year": 2000 + i % 10,
            "rating": i / 4,
            "genre": ["drama", "comedy", "horror"][i % 3],
            "tags": ["a", "b"] if i % 4 == 0 else ["c"],
            "flag": i % 2 == 0,
            "day": dt.date(2020, 1, 1) + dt.timedelta(days=i),
        }
        for i in range(start, start + n)
    ]


def build(model: Path, index_dir: Path, name: str, rows: list[dict[str, Any]], source: Path) -> None:
    write_parquet(source, rows)
    build_index(
        BuildOptions(
            sources=[str(source)],
            name=name,
            index_dir=index_dir,
            model=str(model),
            id_column="id",
            encoder=EncoderConfig(backend="torch"),
        )
    )


def wait_ready(client: TestClient, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/health').json()}")


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return corpus_rows(N_ROWS)


@pytest.fixture(scope="module")
def index_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]) -> Path:
    base = tmp_path_factory.mktemp("serve")
    build(tiny_model, base / "indexes", "docs", rows, base / "docs.parquet")
    return base / "indexes"


@pytest.fixture(scope="module")
def client(index_dir: Path) -> Iterator[TestClient]:
    # A long wait window so that concurrent requests in the batching test surely meet in one batch.
    app = create_app(ServerConfig(index_dir=index_dir, max_wait_ms=50, reload_interval_s=0))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def search(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.gpu
def test_gpu_server_answers_like_the_cpu_one(index_dir: Path, client: TestClient, rows: list[dict[str, Any]]) -> None:
    """The same index served from CUDA (bf16 queries against fp32 document vectors) ranks like the CPU server."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    app = create_app(ServerConfig(index_dir=index_dir, device="cuda", max_wait_ms=20, reload_interval_s=0))
    with TestClient(app) as gpu:
        wait_ready(gpu)
        queries = [rows[i]["text"] for i in (1, 9, 23)]
        on_gpu = search(gpu, query=queries, k=3)["results"]
        on_cpu = search(client, query=queries, k=3)["results"]
        assert [r["hits"][0]["id"] for r in on_gpu] == [r["hits"][0]["id"] for r in on_cpu] == ["d1", "d9", "d23"]
        with ThreadPoolExecutor(8) as pool:  # concurrent requests batched on the GPU
            codes = list(pool.map(lambda q: gpu.post("/search", json={"query": q, "k": 2}).status_code, queries * 4))
        assert codes == [200] * 12


def test_cpu_serving_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import onnx_backend
    from pipeline.server import SERVING_TOKEN_BUDGET, batch_plan, serving_encoder

    monkeypatch.setattr(onnx_backend, "available_cores", lambda: 4)
    # one thread per forward pass, short length-sorted sub-batches, one batch worker per core, no wait
    config = serving_encoder("cpu", None)
    assert (config.threads, config.token_budget, config.spin, config.tokenizer_workers) == (
        1,
        SERVING_TOKEN_BUDGET,
        False,
        0,
    )
    assert serving_encoder("cpu", 2).threads == 2
    assert batch_plan("cpu").workers == 4 and batch_plan("cpu", workers=2).workers == 2
    assert batch_plan("cpu").max_wait_ms == 0.0 and batch_plan("cpu", workers=1).max_wait_ms == 5.0
    assert batch_plan("cpu", max_wait_ms=3.0).max_wait_ms == 3.0
    assert (batch_plan("cpu").threads, batch_plan("cpu").faiss_threads) == (1, 1)


def test_batch_workers_search_on_their_own_faiss_thread_count(client: TestClient) -> None:
    import faiss

    # OpenMP's thread count is per thread: each batch worker sets its own, whatever the loading thread did
    batcher = client.app.state.bmsearch.batcher  # type: ignore[attr-defined]
    seen: list[int] = []
    probe: MicroBatcher[int, int] = MicroBatcher(
        lambda items: seen.append(faiss.omp_get_max_threads()) or items,
        max_wait_ms=0,
        thread_init=batcher.thread_init,
    )
    with probe:
        assert probe.submit(1).result(timeout=10) == 1
    assert seen == [1]


def test_behind_a_gpu_faiss_gets_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    from pipeline import encode, onnx_backend
    from pipeline.server import batch_plan

    monkeypatch.setattr(encode, "resolve_device", lambda device: device)
    monkeypatch.setattr(onnx_backend, "available_cores", lambda: 3)
    before = faiss.omp_get_max_threads()
    try:
        batch_plan("cuda").worker_setup()
        assert faiss.omp_get_max_threads() == 3
        batch_plan("cuda", threads=2).worker_setup()
        assert faiss.omp_get_max_threads() == 2
        batch_plan("cpu").worker_setup()
        assert faiss.omp_get_max_threads() == 1
    finally:
        faiss.omp_set_num_threads(before)


def test_loaded_objects_are_hidden_from_the_cyclic_gc(client: TestClient) -> None:
    import gc

    # the model and libraries loaded for serving no longer make every full collection pause requests
    assert client.get("/health").status_code == 200 and gc.get_freeze_count() > 0


# --- happy paths ----------------------------------------------------------------------------------


def test_single_and_list_queries(client: TestClient, rows: list[dict[str, Any]]) -> None:
    one = search(client, query=rows[5]["text"], k=3)
    assert one["index"] == "docs" and one["generation"] == 1 and one["k"] == 3
    assert len(one["results"]) == 1
    hits = one["results"][0]["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == "d5" and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert hits[0]["text"] == rows[5]["text"] and hits[0]["genre"] == rows[5]["genre"]
    many = search(client, query=[rows[1]["text"], rows[2]["text"]], k=2)
    assert [r["query"] for r in many["results"]] == [rows[1]["text"], rows[2]["text"]]
    assert [r["hits"][0]["id"] for r in many["results"]] == ["d1", "d2"]


def test_columns_choose_metadata(client: TestClient, rows: list[dict[str, Any]]) -> None:
    hit = search(client, query=rows[0]["text"], k=1, columns=["year", "day"])["results"][0]["hits"][0]
    assert set(hit) == {"rank", "score", "id", "year", "day"}
    assert hit["year"] == 2000 and hit["day"] == "2020-01-01"


PREDICATES = [
    ("year", "eq", 2003, lambda r: r["year"] == 2003),
    ("year", "ne", 2003, lambda r: r["year"] != 2003),
    ("year", "lt", 2002, lambda r: r["year"] < 2002),
    ("year", "le", 2002, lambda r: r["year"] <= 2002),
    ("rating", "gt", 10, lambda r: r["rating"] > 10),
    ("rating", "ge", 10.5, lambda r: r["rating"] >= 10.5),
    ("genre", "in", ["drama", "horror"], lambda r: r["genre"] in ("drama", "horror")),
    ("id", "in", ["d1", "d7", "zz"], lambda r: r["id"] in ("d1", "d7")),
    ("text", "contains", "the", lambda r: "the" in r["text"]),
    ("tags", "contains", "a", lambda r: "a" in r["tags"]),
    ("flag", "eq", False, lambda r: not r["flag"]),
    ("day", "ge", "2020-02-15", lambda r: r["day"] >= dt.date(2020, 2, 15)),
]


@pytest.mark.parametrize(("field", "op", "value", "keep"), PREDICATES, ids=[f"{p[0]}-{p[1]}" for p in PREDICATES])
def test_filter_each_operator(
    client: TestClient, rows: list[dict[str, Any]], field: str, op: str, value: Any, keep: Any
) -> None:
    expected = {r["id"] for r in rows if keep(r)}
    assert 0 < len(expected) < len(rows)
    body = search(client, query="cat dog river", k=N_ROWS, filter=[{"field": field, "op": op, "value": value}])
    assert {h["id"] for h in body["results"][0]["hits"]} == expected


def test_filters_are_anded(client: TestClient, rows: list[dict[str, Any]]) -> None:
    conditions = [{"field": "genre", "op": "eq", "value": "drama"}, {"field": "flag", "op": "eq", "value": True}]
    body = search(client, query="music", k=N_ROWS, filter=conditions)
    assert {h["id"] for h in body["results"][0]["hits"]} == {
        r["id"] for r in rows if r["genre"] == "drama" and r["flag"]
    }


def test_indexes_health_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ready"}
    listing = client.get("/indexes").json()
    assert listing["default"] == "docs"
    (info,) = listing["indexes"]
    assert info["name"] == "docs" and info["rows"] == N_ROWS and info["generation"] == 1
    assert info["columns"]["year"] == "BIGINT" and info["columns"]["day"] == "DATE" and "_key" not in info["columns"]
    assert info["manifest"]["counts"]["rows"] == N_ROWS
    client.post("/search", json={"query": ""})
    text = client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    body = text.text
    assert 'bmsearch_http_requests_total{endpoint="/search",method="POST",status="200"}' in body
    assert 'bmsearch_http_requests_total{endpoint="/search",method="POST",status="422"}' in body
    assert 'bmsearch_errors_total{endpoint="/search",code="invalid_query"}' in body
    assert 'bmsearch_http_request_duration_seconds_bucket{endpoint="/search",le="+Inf"}' in body
    assert "bmsearch_batch_size_count" in body and 'bmsearch_index_generation{index="docs"} 1' in body
    assert "bmsearch_ready 1" in body


def test_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/search", "/indexes", "/health", "/metrics"} <= set(schema["paths"])
    post = schema["paths"]["/search"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchRequest")
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchResponse")
    for status in ("400", "401", "404", "413", "422", "503"):
        assert post["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components  # errors are documented as they are sent
    assert components["SearchRequest"]["properties"]["mode"]["enum"] == ["dense", "lexical", "hybrid"]
    assert set(components["FilterCondition"]["properties"]["op"]["enum"]) == {
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "in",
        "contains",
    }
    assert components["SearchRequest"]["properties"]["k"]["maximum"] == 1000


# --- bad requests ---------------------------------------------------------------------------------

BAD = [
    (b"{not json", 400, "malformed_json"),
    (b"", 400, "missing_body"),
    (b"\xff\xfe\x00garbage", 400, "malformed_json"),
    (b"[1, 2]", 422, "invalid_request"),
    (b'{"k": 3}', 422, "invalid_query"),
    (b'{"query": ""}', 422, "invalid_query"),
    (b'{"query": "   "}', 422, "invalid_query"),
    (b'{"query": []}', 422, "invalid_query"),
    (b'{"query": ["ok", ""]}', 422, "invalid_query"),
    (b'{"query": 5}', 422, "invalid_query"),
    (b'{"query": "x", "k": 0}', 422, "invalid_k"),
    (b'{"query": "x", "k": 1001}', 422, "invalid_k"),
    (b'{"query": "x", "k": "5"}', 422, "invalid_k"),
    (b'{"query": "x", "k": true}', 422, "invalid_k"),
    (b'{"query": "x", "surprise": 1}', 422, "invalid_request"),
    (b'{"query": "x", "index": "nope"}', 404, "unknown_index"),
    (b'{"query": "x", "mode": "fuzzy"}', 422, "invalid_mode"),
    (b'{"query": "x", "columns": ["nope"]}', 400, "unknown_column"),
    (b'{"query": "x", "columns": ["_key"]}', 400, "unknown_column"),
    (b'{"query": "x", "filter": [{"field": "nope", "op": "eq", "value": 1}]}', 400, "unknown_field"),
    (b'{"query": "x", "filter": [{"field": "_key", "op": "eq", "value": 1}]}', 400, "unknown_field"),
    (b'{"query": "x", "filter": [{"field": "year", "op": "like", "value": 1}]}', 422, "unknown_operator"),
    (b'{"query": "x", "filter": [{"field": "year", "op": "eq", "value": "1999"}]}', 400, "invalid_filter_value"),
    (b'{"query": "x", "filter": [{"field": "year", "op": "eq", "value": NaN}]}', 400, "invalid_filter_value"),
    (b'{"query": "x", "filter": [{"field": "day", "op": "eq", "value": "soon"}]}', 400, "invalid_filter_value"),
    (b'{"query": "x", "filter": [{"field": "genre", "op": "in", "value": []}]}', 400, "invalid_filter_value"),
    (b'{"query": "x", "filter": [{"field": "year\\" OR 1=1 --", "op": "eq", "value": 1}]}', 400, "unknown_field"),
    (b'{"query": "x", "filter": {"field": "year"}}', 422, "invalid_filter"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_json_errors(client: TestClient, body: bytes, status: int, code: str) -> None:
    response = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
    assert response.json()["error"]["message"]
    assert client.post("/search", json={"query": "still here", "k": 1}).status_code == 200


def test_lexical_and_hybrid_modes_with_filters(client: TestClient, rows: list[dict[str, Any]]) -> None:
    target = rows[7]
    word = max(target["text"].split(), key=len)
    lexical = client.post("/search", json={"query": word, "k": 5, "mode": "lexical"}).json()["results"][0]["hits"]
    assert lexical and all(word in h["text"].split() for h in lexical)
    body = {"query": word, "k": 4, "mode": "hybrid", "filter": [{"field": "genre", "op": "eq", "value": "comedy"}]}
    hybrid = client.post("/search", json=body).json()["results"][0]["hits"]
    assert len(hybrid) == 4 and all(h["genre"] == "comedy" for h in hybrid)


def test_hybrid_requests_fuse_with_the_servers_fusion_config(
    index_dir: Path, client: TestClient, rows: list[dict[str, Any]]
) -> None:
    from pipeline.fusion import FusionConfig
    from pipeline.layout import IndexPaths
    from pipeline.search import Searcher

    query = " ".join(rows[7]["text"].split()[:5])  # several words: many BM25 hits to order
    bm25_only = FusionConfig(weights={"dense": 0.0, "lexical": 1.0}, lead_sole_match=True)
    searcher = Searcher(IndexPaths.of(index_dir, "docs"))
    try:
        expected = [h["id"] for h in searcher.search([query], 8, mode="hybrid", fusion=bm25_only)[0]]
        default = [h["id"] for h in searcher.search([query], 8, mode="hybrid")[0]]
    finally:
        searcher.close()
    assert expected != default, "the test needs a query whose fused order depends on the weights"
    assert [h["id"] for h in search(client, query=query, k=8, mode="hybrid")["results"][0]["hits"]] == default
    app = create_app(ServerConfig(index_dir=index_dir, reload_interval_s=0, fusion=bm25_only))
    with TestClient(app) as configured:
        wait_ready(configured)
        hits = search(configured, query=query, k=8, mode="hybrid")["results"][0]["hits"]
    assert [h["id"] for h in hits] == expected


def test_serve_command_passes_its_hybrid_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    from pipeline import server

    seen: dict[str, Any] = {}
    monkeypatch.setattr(server, "create_app", lambda config: seen.setdefault("config", config))
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    (tmp_path / "x" / "gen-000001").mkdir(parents=True)  # serve checks that its indexes exist before starting
    (tmp_path / "x" / "CURRENT").write_text("gen-000001\n")
    args = ("--weights", "dense=1,lexical=0.5", "--lead-margin", "off", "--lead-sole-match", "--port", "0")
    result = run("serve", "--index-dir", tmp_path, *args)
    assert result.exit_code == 0, result.output
    fusion = seen["config"].fusion
    assert fusion.weights == {"dense": 1.0, "lexical": 0.5} and fusion.lead_margin is None and fusion.lead_sole_match
    bad = run("serve", "--index-dir", tmp_path, "--weights", "dense=x")
    assert bad.exit_code == 2 and "--weights" in bad.output


def test_mode_needs_a_lexical_side(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import server

    monkeypatch.setattr(server, "_has_lexical_side", lambda searcher: False)
    response = client.post("/search", json={"query": "x", "mode": "lexical"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "mode_unavailable"


def test_oversized_body_is_413(client: TestClient) -> None:
    huge = json.dumps({"query": "x" * (1 << 20)}).encode()
    response = client.post("/search", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        for _ in range(20):
            yield b" " * 100_000

    response = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert client.post("/search", json={"query": "ok", "k": 1}).status_code == 200


def test_unknown_route_and_method(client: TestClient) -> None:
    assert client.get("/nope").json()["error"]["code"] == "not_found"
    response = client.get("/search")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_unexpected_error_is_a_generic_500(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    searcher = client.app.state.bmsearch.searchers["docs"]  # type: ignore[attr-defined]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(searcher, "search_encoded", broken)
    response = client.post("/search", json={"query": "x"})
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    monkeypatch.undo()
    assert client.post("/search", json={"query": "x", "k": 1}).status_code == 200


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_condition = st.fixed_dictionaries(
    {
        "field": st.sampled_from(["year", "rating", "genre", "tags", "flag", "day", "id", "nope", ""]),
        "op": st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge", "in", "contains", "xx"]),
        "value": _json,
    }
)
_request = st.fixed_dictionaries(
    {"query": st.one_of(st.text(max_size=30), st.lists(st.text(max_size=10), max_size=3), _json)},
    optional={
        "k": st.one_of(st.integers(-5, 1005), _json),
        "filter": st.lists(_condition, max_size=3) | _json,
        "columns": st.lists(st.sampled_from(["year", "text", "nope"]), max_size=3) | _json,
        "index": st.sampled_from(["docs", "nope", ""]) | _json,
        "mode": st.sampled_from(["dense", "lexical"]),
    },
)
_bodies = st.one_of(
    st.binary(max_size=64), _json.map(lambda v: json.dumps(v).encode()), _request.map(lambda v: json.dumps(v).encode())
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(body=_bodies)
def test_fuzzed_bodies_never_break_the_server(client: TestClient, body: bytes) -> None:
    response = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert 200 <= response.status_code < 300 or 400 <= response.status_code < 500, response.text
    payload = response.json()
    assert ("results" in payload) if response.status_code == 200 else set(payload["error"]) == {"code", "message"}


# --- auth and loading -----------------------------------------------------------------------------


def test_api_key_is_required(index_dir: Path) -> None:
    with TestClient(create_app(ServerConfig(index_dir=index_dir, api_key=KEY, reload_interval_s=0))) as c:
        for path in ("/health", "/metrics", "/indexes"):
            response = c.get(path)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
        assert c.get("/health", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/search", json={"query": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        deadline = time.monotonic() + 60
        while c.get("/health", headers={"X-API-Key": KEY}).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.post("/search", json={"query": "x"}, headers={"X-API-Key": KEY}).status_code == 200
        assert c.post("/search", json={"query": "x"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_health_is_503_until_loaded(index_dir: Path, tmp_path: Path) -> None:
    app = create_app(ServerConfig(index_dir=index_dir, reload_interval_s=0))
    c = TestClient(app)  # no lifespan: nothing is loaded
    assert c.get("/health").status_code == 503 and c.get("/health").json()["status"] == "loading"
    response = c.post("/search", json={"query": "x"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
    with TestClient(create_app(ServerConfig(index_dir=tmp_path / "empty", reload_interval_s=0))) as empty:
        deadline = time.monotonic() + 30
        while empty.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        health = empty.get("/health")
        assert (
            health.status_code == 503 and health.json()["status"] == "error" and "no index" in health.json()["message"]
        )


# --- micro-batching -------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_match_unbatched(
    client: TestClient, index_dir: Path, rows: list[dict[str, Any]]
) -> None:
    metrics = client.app.state.bmsearch.metrics  # type: ignore[attr-defined]
    before = metrics.batch_size.count_above(1)
    queries = [rows[i]["text"] for i in range(0, 48, 3)]
    results: dict[int, Any] = {}
    barrier = threading.Barrier(len(queries))

    def one(i: int) -> None:
        barrier.wait(timeout=30)
        results[i] = client.post("/search", json={"query": queries[i], "k": 5, "columns": ["genre"]}).json()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == len(queries)
    assert metrics.batch_size.count_above(1) > before  # some batch held more than one request

    reference = Searcher(IndexPaths.of(index_dir, "docs"), encoder=EncoderConfig(backend="torch"))
    try:
        for i, query in enumerate(queries):
            expected = reference.search([query], 5, columns=["genre"])[0]
            got = results[i]["results"][0]["hits"]
            assert [h["id"] for h in got] == [h["id"] for h in expected]
            assert [h["genre"] for h in got] == [h["genre"] for h in expected]
            np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in expected], atol=1e-4)
    finally:
        reference.close()


# --- hot reload -----------------------------------------------------------------------------------


def test_hot_reload_during_requests(tiny_model: Path, tmp_path: Path) -> None:
    first = corpus_rows(30)
    build(tiny_model, tmp_path / "indexes", "live", first, tmp_path / "src" / "live.parquet")
    added = corpus_rows(20, start=30, seed=7)
    added_ids = [r["id"] for r in added]
    app = create_app(ServerConfig(index_dir=tmp_path / "indexes", max_wait_ms=2, reload_interval_s=0.05))
    failures: list[str] = []
    generations: set[int] = set()
    stop = threading.Event()
    done = [0]

    with TestClient(app) as c:
        wait_ready(c)

        def stream(seed: int) -> None:
            deadline = time.monotonic() + 60
            for n in range(2000):  # bounded in count and time
                if stop.is_set() or time.monotonic() > deadline:
                    return
                response = c.post("/search", json={"query": first[(seed + n) % 30]["text"], "k": 3})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    generations.add(response.json()["generation"])
                    done[0] += 1

        workers = [threading.Thread(target=stream, args=(s,)) for s in range(4)]
        for w in workers:
            w.start()
        try:
            time.sleep(0.3)
            build(tiny_model, tmp_path / "indexes", "live", first + added, tmp_path / "src" / "live.parquet")
            deadline = time.monotonic() + 30
            visible: list[str] = []
            while time.monotonic() < deadline:
                body = c.post(
                    "/search",
                    json={
                        "query": added[0]["text"],
                        "k": 5,
                        "filter": [{"field": "id", "op": "in", "value": added_ids}],
                    },
                ).json()
                visible = [h["id"] for h in body["results"][0]["hits"]]
                if visible:
                    break
                time.sleep(0.05)
            time.sleep(0.3)  # keep streaming on the new generation for a moment
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)
        assert failures == []
        assert done[0] > 20
        assert generations == {1, 2}
        assert visible and visible[0] == added[0]["id"]
        listing = c.get("/indexes").json()["indexes"][0]
        assert listing["generation"] == 2 and listing["rows"] == 50
        assert 'bmsearch_reloads_total{index="live"} 1' in c.get("/metrics").text


# --- found in review: reload with another model, one bad text in a batch, odd columns, odd clients ---------


def perturbed_copy(model: Path, path: Path) -> Path:
    """The tiny model with other weights: the same tokenizer, so only the vectors tell them apart."""
    import shutil

    import torch
    from transformers import BertModel

    shutil.copytree(model, path)
    bert = BertModel.from_pretrained(path)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in bert.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    bert.save_pretrained(path)
    return path


def self_hits(searcher: Searcher, rows: list[dict[str, Any]]) -> int:
    results = searcher.search([r["text"] for r in rows], k=1)
    return sum(hits[0]["id"] == r["id"] for hits, r in zip(results, rows, strict=True))


def test_reload_to_a_generation_of_another_model_switches_the_encoder(tiny_model: Path, tmp_path: Path) -> None:
    other = perturbed_copy(tiny_model, tmp_path / "other-model")
    rows = corpus_rows(20)
    build(tiny_model, tmp_path / "indexes", "m", rows, tmp_path / "m.parquet")
    paths = IndexPaths.of(tmp_path / "indexes", "m")
    searcher = Searcher(paths, encoder=EncoderConfig(backend="torch"))
    pinned = Searcher(paths, model=str(tiny_model), encoder=EncoderConfig(backend="torch"))
    assert self_hits(searcher, rows) == self_hits(pinned, rows) == 20
    build_index(
        BuildOptions(
            sources=[str(tmp_path / "m.parquet")],
            name="m",
            index_dir=tmp_path / "indexes",
            model=str(other),
            id_column="id",
            overwrite=True,
            encoder=EncoderConfig(backend="torch"),
        )
    )
    assert searcher.reload_if_changed()
    # queries now encode with the new generation's model, not the one loaded for the old generation
    assert searcher.snapshot().encoder.identity["content_hash"] == searcher.manifest["model"]["content_hash"]
    assert self_hits(searcher, rows) == 20
    # a server pinned to --model keeps its generation rather than answer with the wrong model
    from pipeline.errors import ModelError

    before = pinned.generation.number
    with pytest.raises(ModelError):
        pinned.reload_if_changed()
    assert pinned.generation.number == before and self_hits(pinned, rows) == 20


def test_one_failing_text_fails_only_its_own_request(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.server import SearchJob, process_jobs

    searcher = Searcher(IndexPaths.of(index_dir, "docs"), encoder=EncoderConfig(backend="torch"))
    encoder = searcher.snapshot().encoder
    real = encoder.encode
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> Any:
        calls.append(list(texts))
        if any("boom" in t for t in texts):
            raise TypeError("the tokenizer refused a text")
        return real(texts)

    monkeypatch.setattr(encoder, "encode", encode)
    jobs = [
        SearchJob("docs", searcher, ["cat dog"], 3),
        SearchJob("docs", searcher, ["boom"], 3),
        SearchJob("docs", searcher, ["river bird"], 3),
        SearchJob("docs", searcher, ["boom cat river"], 3, mode="lexical"),
    ]
    results = process_jobs(jobs)
    assert isinstance(results[1], TypeError)
    assert [len(r.hits[0]) for r in (results[0], results[2], results[3])] == [3, 3, 3]  # type: ignore[union-attr]
    assert all("boom cat river" not in texts for texts in calls)  # lexical requests are not encoded


def test_texts_that_are_not_unicode_are_refused(client: TestClient) -> None:
    for body in (
        '{"query": "\\ud800"}',
        '{"query": ["cat", "dog \\udfff"]}',
        '{"query": "cat", "columns": ["\\ud800"]}',
        '{"query": "cat", "filter": [{"field": "\\ud800", "op": "eq", "value": 1}]}',
    ):
        response = client.post("/search", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, (body, response.text)
        assert "unicode" in response.json()["error"]["message"].lower()
    assert client.post("/search", json={"query": "cat dog"}).status_code == 200


def test_columns_named_like_hit_fields_and_blobs(tiny_model: Path, tmp_path: Path) -> None:
    import base64

    rows = [
        {"id": f"d{i}", "text": t, "score": f"grade {i}", "rank": 100 + i, "blob": bytes([i, 255, 0])}
        for i, t in enumerate(sample_texts(12))
    ]
    build(tiny_model, tmp_path / "indexes", "odd", rows, tmp_path / "odd.parquet")
    app = create_app(ServerConfig(index_dir=tmp_path / "indexes", reload_interval_s=0))
    with TestClient(app) as c:
        wait_ready(c)
        hits = search(c, query=rows[3]["text"], k=3)["results"][0]["hits"]
        assert [h["rank"] for h in hits] == [1, 2, 3] and all(isinstance(h["score"], float) for h in hits)
        top = hits[0]
        assert (top["id"], top["score_"], top["rank_"]) == ("d3", "grade 3", 103)
        assert base64.b64decode(top["blob"]) == bytes([3, 255, 0])
        assert search(c, query="cat", k=1, columns=["rank"])["results"][0]["hits"][0]["rank"] == 1


def test_lexical_side_survives_the_pruning_of_a_served_generation(index_dir: Path, tmp_path: Path) -> None:
    import shutil

    source = index_dir / "docs"
    copy = tmp_path / "indexes" / "docs"
    shutil.copytree(source, copy)
    eager = Searcher(IndexPaths.of(tmp_path / "indexes", "docs"), preload_lexical=True)
    lazy = Searcher(IndexPaths.of(tmp_path / "indexes", "docs"))
    shutil.rmtree(eager.generation.path)  # what a build's prune does to a generation two commits old
    assert len(eager.search(["cat dog"], k=3, mode="lexical")[0]) == 3
    from pipeline.errors import IndexCorruptError

    with pytest.raises(IndexCorruptError):
        lazy.search(["cat dog"], k=3, mode="lexical")


def test_odd_methods_share_one_metric_label_and_utf8_keys_work(index_dir: Path) -> None:
    key = "clé-secrète"
    with TestClient(create_app(ServerConfig(index_dir=index_dir, api_key=key, reload_interval_s=0))) as c:
        auth = {"X-API-Key": key.encode("utf-8")}
        deadline = time.monotonic() + 60
        while c.get("/health", headers=auth).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.post("/search", json={"query": "cat"}, headers=auth).status_code == 200
        # (TestClient re-encodes header text as UTF-8, so the Latin-1 spelling is checked on the guard itself)
        from pipeline.server import GuardMiddleware

        guard = GuardMiddleware(app=None, state=c.app.state.bmsearch)  # type: ignore[arg-type, attr-defined]
        assert guard._deny({"headers": [(b"x-api-key", b"cl\xe9-secr\xe8te")]}) is not None
        assert guard._deny({"headers": [(b"x-api-key", key.encode("utf-8"))]}) is None
        for method in ("BREW", "FOO", "BAR"):
            c.request(method, "/health")
        metrics = c.get("/metrics", headers=auth).text
        assert 'method="other"' in metrics and "BREW" not in metrics
        schema = c.get("/openapi.json", headers=auth).json()
        assert schema["components"]["securitySchemes"]["ApiKeyHeader"]["name"] == "X-API-Key"
        assert {"ApiKeyHeader": []} in schema["security"]
        assert "application/json" in schema["paths"]["/metrics"]["get"]["responses"]["401"]["content"]
