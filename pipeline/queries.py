"""Batch queries: read a query file, search in batches, write one row per hit to Parquet or JSON lines."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import CorpusError, UsageError
from pipeline.fsutil import atomic_open
from pipeline.search import Searcher


def read_queries(path: Path, text_column: str = "text", id_column: str | None = None) -> list[tuple[Any, str]]:
    """(query id, text) pairs from Parquet (text and optional id column) or a text file, one query per line."""
    if not path.exists():
        raise CorpusError(f"query file {path} does not exist")
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorpusError(f"{path} is not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        if text_column not in table.column_names:
            raise CorpusError(f"{path} has no column {text_column!r}; its columns are: {', '.join(table.column_names)}")
        kind = table.schema.field(text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise CorpusError(f"query column {text_column!r} in {path} is {kind}, not a string")
        texts = table.column(text_column).to_pylist()
        if id_column is None and "id" in table.column_names:
            id_column = "id"
        ids = table.column(id_column).to_pylist() if id_column else list(range(len(texts)))
    else:
        try:
            texts = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as exc:
            raise CorpusError(
                f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); give one query per line, "
                "or a .parquet file"
            ) from None
        ids = list(range(len(texts)))
    pairs = [(qid, text) for qid, text in zip(ids, texts, strict=True) if text and text.strip()]
    if not pairs:
        raise CorpusError(f"{path} holds no non-empty queries")
    return pairs


EMPTY_HITS = pa.schema([("query_id", pa.null()), ("rank", pa.int64()), ("score", pa.float64()), ("id", pa.null())])


def run_queries(
    searcher: Searcher,
    queries: list[tuple[Any, str]],
    k: int,
    where: str | None,
    columns: list[str] | None,
    batch: int = 256,
    mode: str = "dense",
    fusion: Any = None,
) -> Iterator[dict[str, Any]]:
    """One dict per hit: query_id, rank, score, id and metadata; queries encoded `batch` at a time."""
    for start in range(0, len(queries), batch):
        chunk = queries[start : start + batch]
        results = searcher.search([text for _, text in chunk], k, where, columns, mode=mode, fusion=fusion)
        for (qid, _), hits in zip(chunk, results, strict=True):
            for hit in hits:
                yield {"query_id": qid, **hit}


def write_hits(rows: Iterator[dict[str, Any]], output: Path | None, fmt: str) -> int:
    """Write hits as parquet or jsonl (atomically to a file, or jsonl to stdout); returns the count."""
    if fmt == "parquet":
        if output is None:
            raise UsageError("--format parquet needs --output FILE")
        found = list(rows)
        # no hit at all still gives the columns a script reads; the id types are unknown then (null)
        table = pa.Table.from_pylist(found) if found else EMPTY_HITS.empty_table()
        with atomic_open(output) as fh:
            pq.write_table(table, fh)
        return table.num_rows
    count = 0
    if output is None:
        import click

        for row in rows:
            click.echo(json_text(row))
            count += 1
        return count
    with atomic_open(output) as fh:
        for row in rows:
            fh.write((json_text(row) + "\n").encode())
            count += 1
    return count


def json_text(value: Any, indent: int | None = None) -> str:
    """Hits as strict JSON, as the server sends them: BLOB values as base64 text and NaN or infinite floats
    as null (JSON has neither; Python's `NaN` token breaks other parsers); dates and decimals as text."""
    return json.dumps(_jsonable(value), default=str, ensure_ascii=False, indent=indent, allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value
