"""The query server as a FastAPI app: micro-batched dense search, structured filters, hot reload, metrics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from pipeline.batcher import BatcherClosedError, MicroBatcher, QueueFullError
from pipeline.errors import BmsearchError, FilterError, IndexNotFoundError, UsageError
from pipeline.filters import OPS, compile_filter
from pipeline.layout import DEFAULT_INDEX_DIR
from pipeline.metrics_registry import CONTENT_TYPE, ServerMetrics

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

    from pipeline.encode import EncoderConfig
    from pipeline.fusion import FusionConfig
    from pipeline.search import Live, Searcher

log = logging.getLogger(__name__)

MAX_QUERIES = 256
MAX_QUERY_CHARS = 10_000
MAX_K = 1000
# Most padded tokens per forward pass of a CPU server: a micro-batch is split into length-sorted sub-batches.
SERVING_TOKEN_BUDGET = 128
HIDDEN_COLUMNS = ("_key", "_hash")
ENDPOINTS = ("/search", "/indexes", "/health", "/metrics", "/openapi.json", "/docs", "/redoc")
METHODS = ("GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE")  # metric labels; any other is "other"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class ServerConfig:
    """How `create_app` serves: which indexes, auth, batching, reload and request limits."""

    index_dir: Path = DEFAULT_INDEX_DIR
    indexes: list[str] | None = None  # None: every committed index in index_dir
    api_key: str | None = None  # when set, every request must carry it
    max_batch: int = 64  # most requests encoded in one encoder call
    max_wait_ms: float | None = None  # how long a batch waits for more requests after its first; None: auto
    device: str = "auto"
    model: str | None = None  # None: the model recorded in each index's manifest
    reload_interval_s: float = 2.0  # how often to look for a newer generation; 0 disables hot reload
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 60.0
    max_queue: int = 10_000
    threads: int | None = None  # CPU threads per batch for the encoder and FAISS; None: see batch_plan
    workers: int | None = None  # batches processed at once; None: see batch_plan
    warmup: bool = True  # encode one text at load so the first request is not slow
    freeze_gc: bool = True  # after loading, hide the loaded objects from the cyclic GC (the server owns its process)
    fusion: FusionConfig | None = None  # how hybrid requests fuse; None: the library's defaults
    extra: dict[str, Any] = field(default_factory=dict)


# --- request and response models -----------------------------------------------------------------

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr | None


def _unicode(value: str, what: str) -> str:
    """Refuse text that is not valid Unicode (a lone surrogate, which JSON escapes allow) before it reaches
    the tokenizer or DuckDB, where it would fail the whole batch."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
    return value


class FilterCondition(BaseModel):
    """`field op value`; conditions in a list are AND-ed. Dates and timestamps are ISO 8601 strings."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(min_length=1, max_length=256, description="A metadata column of the index.")
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "contains"] = Field(
        description="eq/ne with null test IS (NOT) NULL; in takes a list; contains: substring or list element."
    )
    value: Scalar | list[Scalar] = Field(default=None, description="Checked against the column's type.")

    @field_validator("field")
    @classmethod
    def _field_text(cls, value: str) -> str:
        return _unicode(value, "a filter field")


class SearchRequest(BaseModel):
    """One query or a list of queries against one index."""

    model_config = ConfigDict(extra="forbid")

    query: StrictStr | list[StrictStr] = Field(description=f"A query text or a list of 1..{MAX_QUERIES} texts.")
    k: Annotated[int, Field(strict=True, ge=1, le=MAX_K)] = Field(default=10, description="Hits per query.")
    index: str | None = Field(default=None, description="Index name; optional when the server has one index.")
    mode: Literal["dense", "lexical", "hybrid"] = Field(
        default="dense", description="dense (embeddings); lexical (BM25) and hybrid need a lexical side."
    )
    filter: list[FilterCondition] | None = Field(default=None, max_length=64, description="AND-ed conditions.")
    columns: list[StrictStr] | None = Field(
        default=None, max_length=256, description="Metadata columns to return (default: all; [] for none)."
    )

    @field_validator("query")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("the query list is empty")
        if len(texts) > MAX_QUERIES:
            raise ValueError(f"at most {MAX_QUERIES} queries per request")
        for text in texts:
            if not text.strip():
                raise ValueError("a query text is empty")
            if len(text) > MAX_QUERY_CHARS:
                raise ValueError(f"a query text is longer than {MAX_QUERY_CHARS} characters")
            _unicode(text, "a query text")
        return value

    @field_validator("index")
    @classmethod
    def _index_text(cls, value: str | None) -> str | None:
        return None if value is None else _unicode(value, "the index name")

    @field_validator("columns")
    @classmethod
    def _column_texts(cls, value: list[str] | None) -> list[str] | None:
        for column in value or []:
            _unicode(column, "a column name")
        return value

    def texts(self) -> list[str]:
        return [self.query] if isinstance(self.query, str) else list(self.query)


class Hit(BaseModel):
    """One result: rank (1 = best), score (inner product), id, and the chosen metadata columns (BLOB values as
    base64 text; a column named rank, score or id, other than the id column, appears with a trailing `_`)."""

    model_config = ConfigDict(extra="allow")

    rank: int
    score: float
    id: int | str | None


class QueryResult(BaseModel):
    query: str
    hits: list[Hit]


class SearchResponse(BaseModel):
    index: str
    generation: int = Field(description="The generation searched (as read when the batch ran).")
    mode: str
    k: int
    results: list[QueryResult] = Field(description="One entry per query, in request order.")
    took_ms: float


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_filter_value.")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class HealthResponse(BaseModel):
    status: Literal["ready", "loading", "error"]
    message: str | None = None


class IndexInfo(BaseModel):
    name: str
    generation: int
    rows: int | None
    columns: dict[str, str] = Field(description="Filterable metadata columns and their DuckDB types.")
    manifest: dict[str, Any]


class IndexesResponse(BaseModel):
    default: str | None = Field(description="The index used when a request names none.")
    indexes: list[IndexInfo]


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse} for s in statuses}


# --- errors ---------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as {"error": {"code", "message"}} with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _binary_as_base64(hits: list[dict[str, Any]]) -> None:
    """JSON has no bytes: BLOB values go out as base64 text."""
    for hit in hits:
        for key, value in hit.items():
            if isinstance(value, bytes | bytearray | memoryview):
                hit[key] = base64.b64encode(bytes(value)).decode("ascii")


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _library_error(exc: BmsearchError) -> ApiError:
    if isinstance(exc, FilterError):
        return ApiError(400, getattr(exc, "code", "invalid_filter"), str(exc))
    if isinstance(exc, IndexNotFoundError):
        return ApiError(404, "unknown_index", str(exc))
    if isinstance(exc, UsageError):
        return ApiError(400, "bad_request", str(exc))
    log.error("search failed: %s: %s", type(exc).__name__, exc)
    return ApiError(500, "internal_error", "the search failed on the server; see its log")


_FIELD_CODES = {
    "query": "invalid_query",
    "k": "invalid_k",
    "index": "invalid_index",
    "mode": "invalid_mode",
    "filter": "invalid_filter",
    "columns": "invalid_columns",
}


def _validation_error(errors: list[Any]) -> ApiError:
    """A pydantic error list as one ApiError: malformed JSON is 400, a well-formed but invalid body 422."""
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "JSON decode error")
            return ApiError(400, "malformed_json", f"the request body is not valid JSON: {detail}")
        if loc == ("body",) and err.get("type") == "missing":
            return ApiError(400, "missing_body", "a JSON body is required (Content-Type: application/json)")
        if loc == ("body",) and isinstance(err.get("input"), bytes):
            # FastAPI parses a body as JSON only when its Content-Type says so; other bodies arrive as raw bytes
            return ApiError(415, "unsupported_media_type", "send the JSON body with Content-Type: application/json")
    parts = []
    for err in errors[:5]:
        where = [str(p) for p in err.get("loc", ()) if p != "body"]
        parts.append(f"{'.'.join(where) or 'body'}: {err.get('msg', 'invalid')}")
    first = [str(p) for p in errors[0].get("loc", ()) if p != "body"] if errors else []
    code = _FIELD_CODES.get(first[0], "invalid_request") if first else "invalid_request"
    if first and first[0] == "filter" and first[-1] == "op":
        code = "unknown_operator"
    return ApiError(422, code, "; ".join(parts))


# --- jobs run by the batcher ----------------------------------------------------------------------


@dataclass
class SearchJob:
    """One request's work: its queries, encoded together with other requests' in one batch."""

    index: str
    searcher: Searcher
    queries: list[str]
    k: int
    where: str | None = None
    params: list[Any] = field(default_factory=list)
    columns: list[str] | None = None
    mode: str = "dense"


@dataclass
class JobResult:
    generation: int
    hits: list[list[dict[str, Any]]]


def process_jobs(
    jobs: list[SearchJob], metrics: ServerMetrics | None = None, fusion: FusionConfig | None = None
) -> list[JobResult | BaseException]:
    """Encode every job's queries with one encoder call per index, then search each group of jobs that
    share k, filter, columns and mode with one search_encoded call (hybrid ones fused by `fusion`).

    Lexical jobs need no vectors and are not encoded. If the shared encoder call fails, each job is encoded
    on its own, so one request's bad text fails that request only.
    """
    results: list[JobResult | BaseException | None] = [None] * len(jobs)
    by_searcher: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_searcher.setdefault(id(job.searcher), []).append(i)
    for members in by_searcher.values():
        searcher = jobs[members[0]].searcher
        dense = [i for i in members if jobs[i].mode != "lexical"]
        try:
            live = searcher.snapshot(need_encoder=bool(dense))
        except BaseException as exc:
            for i in members:
                results[i] = exc
            continue
        if metrics is not None:
            metrics.batch_queries.observe(sum(len(jobs[i].queries) for i in members))
        vectors = _encode_jobs(live.encoder, jobs, dense, results)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i in members:
            if results[i] is not None:
                continue
            job = jobs[i]
            key = (
                job.k,
                job.where,
                tuple(job.params),
                tuple(job.columns) if job.columns is not None else None,
                job.mode,
            )
            groups.setdefault(key, []).append(i)
        for group in groups.values():
            _search_group(live, jobs, group, vectors, fusion, results)
    return [r if r is not None else RuntimeError("job not processed") for r in results]


def _encode_jobs(
    encoder: Any, jobs: list[SearchJob], members: list[int], results: list[JobResult | BaseException | None]
) -> dict[int, Any]:
    """Query vectors of each job in one encoder call; after a failure, job by job (failures go to results)."""
    if not members:
        return {}
    try:
        stacked = encoder.encode([q for i in members for q in jobs[i].queries])
    except BaseException as exc:
        if len(members) == 1:
            results[members[0]] = exc
            return {}
        out = {}
        for i in members:
            try:
                out[i] = encoder.encode(jobs[i].queries)
            except BaseException as job_exc:
                results[i] = job_exc
        return out
    out, start = {}, 0
    for i in members:
        out[i] = stacked[start : start + len(jobs[i].queries)]
        start += len(jobs[i].queries)
    return out


def _search_group(
    live: Live,
    jobs: list[SearchJob],
    indices: list[int],
    vectors: dict[int, Any],
    fusion: FusionConfig | None,
    results: list[JobResult | BaseException | None],
) -> None:
    """One search_encoded call for the jobs at `indices`, which share k, filter, columns and mode, on the
    snapshot's generation."""
    import numpy as np

    group_jobs = [jobs[i] for i in indices]
    job = group_jobs[0]
    generation = live.generation
    try:
        texts = [q for j in group_jobs for q in j.queries]
        stacked = None
        if job.mode != "lexical":
            parts = [vectors[i] for i in indices]
            stacked = np.concatenate(parts) if len(parts) > 1 else parts[0]
        hits = job.searcher.search_encoded(
            texts, stacked, job.k, job.where, job.columns, job.params or None, job.mode, fusion, generation
        )
    except BaseException as exc:
        for i in indices:
            results[i] = exc
        return
    offset = 0
    for i, j in zip(indices, group_jobs, strict=True):
        results[i] = JobResult(generation.number, hits[offset : offset + len(j.queries)])
        offset += len(j.queries)


def serving_encoder(device: str, threads: int | None) -> EncoderConfig:
    """How a server runs its encoder: tokenising in the calling thread, `threads` (default 1) ONNX Runtime
    threads per batch that sleep between calls, and short token-budget batches.

    A query is a few dozen tokens: a second thread on its forward pass buys 5-10% of latency for 25-40% more
    CPU, so a server gets its parallelism from several batches at once instead (see `batch_plan`).
    Length-sorted sub-batches of at most SERVING_TOKEN_BUDGET tokens spare the padding a batch of mixed
    lengths would pay (docs/benchmarks.md, "Server: one thread per batch").
    """
    from pipeline.encode import EncoderConfig, resolve_device

    return EncoderConfig(
        device=device,
        tokenizer_workers=0,
        threads=threads or 1,
        spin=False,
        token_budget=SERVING_TOKEN_BUDGET if resolve_device(device) == "cpu" else None,
    )


@dataclass(frozen=True)
class BatchPlan:
    """How a server batches on its device, every default resolved (see `batch_plan`)."""

    workers: int  # batches processed at once
    threads: int  # encoder threads per batch
    faiss_threads: int  # FAISS (OpenMP) threads in each worker
    max_wait_ms: float  # how long a batch waits for company

    def worker_setup(self) -> None:
        """Run first in each batch worker: OpenMP's thread count is per thread, so each worker sets its own."""
        import faiss

        faiss.omp_set_num_threads(self.faiss_threads)


def batch_plan(
    device: str, threads: int | None = None, workers: int | None = None, max_wait_ms: float | None = None
) -> BatchPlan:
    """The given settings, else the defaults for the device.

    On a CPU: one worker per core, each batch on one encoder and one FAISS thread, and no wait with several
    workers (while one computes, the requests arriving meanwhile gather for the next; waiting would only
    idle a worker). Behind a GPU: one worker (one batch already fills the device) that waits up to 5 ms, and
    whose search of a whole batch FAISS spreads over every core.
    """
    from pipeline.encode import resolve_device
    from pipeline.onnx_backend import available_cores

    on_cpu = resolve_device(device) == "cpu"
    workers = workers or (available_cores() if on_cpu else 1)
    return BatchPlan(
        workers=workers,
        threads=threads or 1,
        faiss_threads=threads or (1 if on_cpu else available_cores()),
        max_wait_ms=max_wait_ms if max_wait_ms is not None else (0.0 if workers > 1 else 5.0),
    )


def freeze_loaded() -> bool:
    """Collect once, then hide every live object from the cyclic GC; False when something froze them already.

    A full collection walks every object torch, the model and the indexes created, and the batch in flight
    waits (bench serve, 2 cores, 16 clients: p99 452-461 ms without the freeze, 129-130 ms with it); they live
    as long as the server. Only once: objects created later (new generations) stay collectable.
    `gc.unfreeze()` hands them back.
    """
    if gc.get_freeze_count():
        return False
    gc.collect()
    gc.freeze()
    return True


# --- server state ---------------------------------------------------------------------------------


class ServerState:
    """Loaded searchers, the batcher, the reload thread and the metrics of one app."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.searchers: dict[str, Searcher] = {}
        self.status: Literal["ready", "loading", "error"] = "loading"
        self.message: str | None = None
        self.batcher: MicroBatcher[SearchJob, JobResult] | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._froze_gc = False

    # lifecycle
    def start(self) -> None:
        loader = threading.Thread(target=self._load, name="bmsearch-load", daemon=True)
        self._threads.append(loader)
        loader.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.batcher is not None:
            self.batcher.close()
        for searcher in self.searchers.values():
            with contextlib.suppress(Exception):
                searcher.close()
        if self._froze_gc:
            # give the loaded objects back to the collector, so shutdown frees them like any others
            gc.unfreeze()
            self._froze_gc = False

    def _load(self) -> None:
        from pipeline.layout import serving_paths
        from pipeline.search import Searcher

        try:
            cfg = self.config
            paths = serving_paths(cfg.index_dir, cfg.indexes)
            plan = batch_plan(cfg.device, cfg.threads, cfg.workers, cfg.max_wait_ms)
            encoder = serving_encoder(cfg.device, plan.threads)
            searchers: dict[str, Searcher] = {}
            for p in paths:
                if self._stop.is_set():
                    return
                searcher = Searcher(p, model=cfg.model, encoder=encoder, preload_lexical=True)
                if cfg.warmup:
                    searcher.encoder.encode(["warm up"])
                else:
                    _ = searcher.encoder
                searchers[p.name] = searcher
                self._publish(p.name, searcher)
            self.searchers = searchers
            self.batcher = MicroBatcher(
                lambda jobs: process_jobs(jobs, self.metrics, self.config.fusion),
                max_batch=cfg.max_batch,
                max_wait_ms=plan.max_wait_ms,
                max_queue=cfg.max_queue,
                on_batch=self._on_batch,
                name="bmsearch-batcher",
                workers=plan.workers,
                thread_init=plan.worker_setup,
            )
            if cfg.freeze_gc:
                self._froze_gc = freeze_loaded()
        except Exception as exc:
            self.status = "error"
            self.message = str(exc) if isinstance(exc, BmsearchError) else f"{type(exc).__name__}: {exc}"
            log.error("loading the indexes failed: %s", self.message, exc_info=log.isEnabledFor(logging.DEBUG))
            return
        self.status = "ready"
        self.metrics.ready.set(1)
        batcher = self.batcher
        log.info(
            "ready: %s (%d batch worker(s), at most %d requests per batch, wait %g ms)",
            ", ".join(self.searchers),
            len(batcher.workers) if batcher is not None else 0,
            self.config.max_batch,
            batcher.max_wait_s * 1000 if batcher is not None else 0.0,
        )
        if self.config.reload_interval_s > 0:
            watcher = threading.Thread(target=self._watch, name="bmsearch-reload", daemon=True)
            self._threads.append(watcher)
            watcher.start()

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    def _publish(self, name: str, searcher: Searcher) -> None:
        gen = searcher.generation
        self.metrics.generation.set(gen.number, index=name)
        self.metrics.rows.set(int(gen.manifest.get("counts", {}).get("rows", 0)), index=name)

    def _watch(self) -> None:
        while not self._stop.wait(self.config.reload_interval_s):
            self.check_reload()

    def check_reload(self) -> list[str]:
        """Switch every index with a newer committed generation; the old one stays alive for in-flight
        searches (they hold a reference) and is closed by garbage collection."""
        switched = []
        for name, searcher in list(self.searchers.items()):
            try:
                if searcher.reload_if_changed():
                    switched.append(name)
                    self.metrics.reloads.inc(index=name)
                    self._publish(name, searcher)
                    log.info("index %s: now serving generation %d", name, searcher.generation.number)
            except Exception as exc:
                # A half-written or broken generation must not take the server down: keep the old one.
                self.metrics.reload_errors.inc(index=name)
                log.warning("index %s: reload failed, still serving the previous generation: %s", name, exc)
        return switched

    # lookups
    def require_ready(self) -> None:
        if self.status != "ready":
            raise ApiError(503, "not_ready", self.message or "the server is still loading its model and indexes")

    def searcher(self, name: str | None) -> tuple[str, Searcher]:
        if name is None:
            if len(self.searchers) == 1:
                return next(iter(self.searchers.items()))
            raise ApiError(
                400, "index_required", f"several indexes are served; name one of: {', '.join(self.searchers)}"
            )
        found = self.searchers.get(name)
        if found is None:
            raise ApiError(404, "unknown_index", f"no index named {name!r}; served: {', '.join(self.searchers)}")
        return name, found

    @staticmethod
    def column_types(searcher: Searcher) -> dict[str, str]:
        """Filterable columns and DuckDB types of the live generation (read when it was opened)."""
        return {c: t for c, t in searcher.generation.store.schema() if c not in HIDDEN_COLUMNS}


def _has_lexical_side(searcher: Searcher) -> bool:
    return bool(searcher.manifest.get("lexical"))


def check_mode(name: str, searcher: Searcher, mode: str) -> None:
    """Lexical and hybrid modes need the index's BM25 side; refuse them clearly where it is absent."""
    if mode != "dense" and not _has_lexical_side(searcher):
        raise ApiError(400, "mode_unavailable", f"mode {mode!r} needs a lexical (BM25) side; index {name!r} has none")


# --- the ASGI guard: auth, body limit, metrics, last-resort 500 ----------------------------------


class GuardMiddleware:
    """Checks the API key and the body size before the app runs, counts every response in the metrics
    and turns any unhandled exception into a generic JSON 500 (logged, never sent to the client)."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        scope.setdefault("state", {})
        status = {"code": 500, "started": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                status["started"] = True
            await send(message)

        try:
            denied = self._deny(scope)
            if denied is not None:
                await _send_error(tracking_send, scope, denied)
                return
            body_or_error = await self._read_body(scope, receive)
            if isinstance(body_or_error, ApiError):
                await _send_error(tracking_send, scope, body_or_error)
                return
            await self.app(scope, _replay(body_or_error, receive), tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            if not status["started"]:
                await _send_error(tracking_send, scope, ApiError(500, "internal_error", "internal server error"))
        finally:
            code = int(status["code"])
            metrics = self.state.metrics
            method = str(scope.get("method", ""))
            metrics.requests.inc(endpoint=endpoint, method=method if method in METHODS else "other", status=str(code))
            metrics.latency.observe(time.perf_counter() - started, endpoint=endpoint)
            if code >= 400:
                error_code = scope["state"].get("error_code") or f"http_{code}"
                metrics.errors.inc(endpoint=endpoint, code=str(error_code))

    def _deny(self, scope: Scope) -> ApiError | None:
        key = self.state.config.api_key
        if not key:
            return None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        # headers were decoded as latin-1, so encoding back gives the bytes sent; the key is UTF-8 text
        if given is not None and hmac.compare_digest(given.encode("latin-1"), key.encode("utf-8")):
            return None
        return ApiError(401, "unauthorized", "a valid API key is required (X-API-Key or Authorization: Bearer)")

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | ApiError:
        limit = self.state.config.max_body_bytes
        too_large = ApiError(413, "body_too_large", f"the request body is larger than {limit} bytes")
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                try:
                    if int(value) > limit:
                        return too_large
                except ValueError:
                    return ApiError(400, "bad_request", "invalid Content-Length header")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, scope: Scope, error: ApiError) -> None:
    scope.setdefault("state", {})["error_code"] = error.code
    body = json.dumps(error_body(error.code, error.message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- the app --------------------------------------------------------------------------------------


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """The server app; its lifespan loads the model and indexes in the background (GET /health says
    when they are ready), runs the batch worker and the hot-reload watcher, and stops them."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from pipeline import __version__

    config = config or ServerConfig()
    state = ServerState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.stop)

    app = FastAPI(
        title="bmsearch",
        version=__version__,
        description="Semantic search over Parquet corpora: micro-batched encoding, FAISS, DuckDB filters.",
        lifespan=lifespan,
    )
    app.state.bmsearch = state

    class ErrorJSON(JSONResponse):
        def render(self, content: Any) -> bytes:
            return json.dumps(content, ensure_ascii=True).encode("ascii")

    def respond(request: Request, error: ApiError) -> JSONResponse:
        request.state.error_code = error.code
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return ErrorJSON(error_body(error.code, error.message), status_code=error.status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(BmsearchError)
    async def _bmsearch_error(request: Request, exc: BmsearchError) -> JSONResponse:
        return respond(request, _library_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, _validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "malformed_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = respond(request, ApiError(exc.status_code, code, str(exc.detail)))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses=_error_responses(400, 401, 404, 413, 415, 422, 500, 503),
        summary="Nearest neighbours of one query or a list of queries",
    )
    async def search(body: SearchRequest) -> Any:
        started = time.perf_counter()
        state.require_ready()
        name, searcher = state.searcher(body.index)
        check_mode(name, searcher, body.mode)
        types = state.column_types(searcher)
        where, params = compile_filter([c.model_dump() for c in body.filter or []], types)
        if body.columns is not None:
            unknown = [c for c in body.columns if c not in types]
            if unknown:
                raise ApiError(
                    400, "unknown_column", f"unknown column(s) {', '.join(unknown)}; the index has: {', '.join(types)}"
                )
        texts = body.texts()
        job = SearchJob(name, searcher, texts, body.k, where, params, body.columns, body.mode)
        batcher = state.batcher
        if batcher is None:
            raise ApiError(503, "not_ready", "the server is still loading")
        try:
            result = await asyncio.wait_for(batcher.run(job), timeout=config.request_timeout_s)
        except QueueFullError:
            raise ApiError(503, "overloaded", "too many requests are waiting; retry later") from None
        except BatcherClosedError:
            raise ApiError(503, "shutting_down", "the server is shutting down") from None
        except asyncio.TimeoutError:
            raise ApiError(503, "timeout", f"the search took longer than {config.request_timeout_s:g} s") from None
        state.metrics.queries.inc(len(texts), index=name)
        if "BLOB" in types.values():
            for hits in result.hits:
                _binary_as_base64(hits)
        return {
            "index": name,
            "generation": result.generation,
            "mode": body.mode,
            "k": body.k,
            "results": [{"query": q, "hits": h} for q, h in zip(texts, result.hits, strict=True)],
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    @app.get("/indexes", response_model=IndexesResponse, responses=_error_responses(401, 503))
    async def indexes() -> Any:
        """The served indexes: live generation, filterable columns and manifest."""
        state.require_ready()
        items = []
        for name, searcher in state.searchers.items():
            gen = searcher.generation
            items.append(
                {
                    "name": name,
                    "generation": gen.number,
                    "rows": gen.manifest.get("counts", {}).get("rows"),
                    "columns": state.column_types(searcher),
                    "manifest": gen.manifest,
                }
            )
        default = next(iter(state.searchers)) if len(state.searchers) == 1 else None
        return {"default": default, "indexes": items}

    @app.get(
        "/health",
        response_model=HealthResponse,
        response_model_exclude_none=True,
        responses={
            503: {"model": HealthResponse, "description": "Loading, or loading failed"},
            401: {"model": ErrorResponse},
        },
    )
    async def health() -> Any:
        """200 {"status": "ready"} once the model and indexes are loaded; 503 before (or if loading failed)."""
        if state.status == "ready":
            return {"status": "ready"}
        payload: dict[str, Any] = {"status": state.status}
        if state.message:
            payload["message"] = state.message
        return JSONResponse(payload, status_code=503)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        response_model=None,
        responses={
            200: {"content": {CONTENT_TYPE.split(";")[0]: {}}},
            # not "model": this route's media type is text/plain, and FastAPI would file the model under it
            401: {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}},
        },
    )
    async def metrics() -> PlainTextResponse:
        """Prometheus text exposition: requests, latency, batch sizes, errors, generations."""
        return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)

    if config.api_key:
        _declare_api_key(app)
    app.add_middleware(GuardMiddleware, state=state)
    return app


def _declare_api_key(app: FastAPI) -> None:
    """Tell OpenAPI clients how to send the key the guard checks."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            }
            schema["security"] = [{"ApiKeyHeader": []}, {"Bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = [
    "OPS",
    "ApiError",
    "BatchPlan",
    "ErrorResponse",
    "FilterCondition",
    "SearchJob",
    "SearchRequest",
    "SearchResponse",
    "ServerConfig",
    "ServerState",
    "batch_plan",
    "create_app",
    "freeze_loaded",
    "process_jobs",
    "serving_encoder",
]
