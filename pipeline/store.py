"""Metadata in DuckDB: the `docs` table (text and columns by key) and `vectors` (where each key's embedding is)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.corpus import HASH, KEY
from pipeline.errors import FilterError, IndexCorruptError

DB_NAME = "metadata.duckdb"
VECTORS_SCHEMA = pa.schema([(KEY, pa.int64()), (HASH, pa.int64()), ("shard", pa.string()), ("pos", pa.int32())])


def arrow_table(relation: Any) -> pa.Table:
    """A relation's rows as Arrow (DuckDB 2 renamed `arrow()` to `to_arrow_table()`)."""
    method = getattr(relation, "to_arrow_table", None) or relation.arrow
    return method()


def arrow_reader(relation: Any, rows: int) -> pa.RecordBatchReader:
    """A relation's rows as a stream of record batches of about `rows` rows."""
    method = getattr(relation, "to_arrow_reader", None) or relation.record_batch
    return method(rows)


def quote(name: str) -> str:
    """A DuckDB identifier, quoted; identifiers cannot be bound as parameters."""
    return '"' + name.replace('"', '""') + '"'


class Store:
    """A DuckDB database of one index generation (read-only) or of a build in progress (writable)."""

    def __init__(self, path: Path, read_only: bool = True) -> None:
        import duckdb

        self.path = Path(path)
        self._schema: list[tuple[str, str]] | None = None  # a read-only generation's, read once when opened
        if read_only and not self.path.exists():
            raise IndexCorruptError(f"metadata database {self.path} is missing; rebuild the index with --overwrite")
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
            if read_only:
                self.scalar("SELECT count(*) FROM docs")
                # its columns never change: read here, the schema is safe to share between threads
                self._schema = self._read_schema()
        except duckdb.Error as exc:
            raise self._unreadable(exc) from None

    def close(self) -> None:
        self.con.close()

    def _unreadable(self, exc: Exception) -> IndexCorruptError:
        return IndexCorruptError(
            f"metadata database {self.path} is unreadable ({str(exc).splitlines()[0]}); "
            "rebuild the index with --overwrite"
        )

    def _names_database(self, exc: Exception) -> bool:
        text = str(exc)
        return str(self.path) in text or str(self.path.resolve()) in text

    def rows(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """All result rows; DuckDB wants every result fully fetched before the next statement."""
        return self.con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    # --- writing -------------------------------------------------------------------------------
    def append_docs(self, batch: pa.RecordBatch) -> None:
        view = self.con.register("_batch", batch)
        if not self._has_table("docs"):
            view.execute("CREATE TABLE docs AS SELECT * FROM _batch").fetchall()
        else:
            view.execute("INSERT INTO docs BY NAME SELECT * FROM _batch").fetchall()
        self.con.unregister("_batch")

    def _has_table(self, name: str) -> bool:
        sql = "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND database_name = current_database()"
        return bool(self.scalar(sql, [name]))

    def duplicate_keys(self, id_column: str | None, limit: int = 5) -> list[Any]:
        shown = quote(id_column) if id_column else KEY
        rows = self.rows(f"SELECT any_value({shown}) FROM docs GROUP BY {KEY} HAVING count(*) > 1 LIMIT ?", [limit])
        return [r[0] for r in rows]

    def count(self, table: str = "docs") -> int:
        return int(self.scalar(f"SELECT count(*) FROM {quote(table)}"))

    def columns(self) -> list[str]:
        return [name for name, _ in self.schema()]

    def schema(self) -> list[tuple[str, str]]:
        """(name, DuckDB type) of the docs columns; a read-only store's as read when it was opened."""
        return self._schema if self._schema is not None else self._read_schema()

    def _read_schema(self) -> list[tuple[str, str]]:
        return [(str(r[0]), str(r[1])) for r in self.rows("SELECT column_name, column_type FROM (DESCRIBE docs)")]

    def index_keys(self) -> None:
        """An ART index on `_key`: the metadata join of every query is a handful of point lookups."""
        self.rows(f"CREATE INDEX IF NOT EXISTS docs_key ON docs({KEY})")

    def checkpoint(self) -> None:
        self.rows("CHECKPOINT")

    # --- reading -------------------------------------------------------------------------------
    def filter_keys(self, where: str, params: Sequence[Any] | None = None) -> np.ndarray:
        """Keys of the rows matching an SQL condition (with `?` parameters), on a read-only connection."""
        import duckdb

        sql = f"SELECT {KEY} FROM docs WHERE ({where})"
        try:
            cursor = self.con.cursor()
            if len(cursor.extract_statements(sql)) != 1:
                raise FilterError("a filter is a single SQL condition")
            table = arrow_table(cursor.sql(sql, params=list(params) if params else None))
        except duckdb.Error as exc:
            if self._names_database(exc):  # the file is damaged: not the user's condition
                raise self._unreadable(exc) from None
            raise FilterError(f"invalid filter: {str(exc).splitlines()[0]}") from None
        return np.asarray(table.column(0).to_numpy(), dtype=np.int64)

    def fetch(self, keys: Sequence[int], columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Rows for keys, in the order of keys (a key may repeat; missing keys give empty dicts)."""
        if len(keys) == 0:
            return []
        wanted = list(columns) if columns else self.columns()
        selected = ", ".join(quote(c) for c in dict.fromkeys([KEY, *wanted]))
        key_list = [int(k) for k in keys]
        import duckdb

        try:
            # list_contains on the ART-indexed key runs as point lookups, not as a join over the whole table
            cursor = self.con.cursor().execute(
                f"SELECT {selected} FROM docs WHERE list_contains(?::BIGINT[], {KEY})", [sorted(set(key_list))]
            )
            names = [d[0] for d in cursor.description]
            found = cursor.fetchall()
        except duckdb.Error as exc:  # our own query on known columns: only a damaged file fails it
            raise self._unreadable(exc) from None
        by_key: dict[int, dict[str, Any]] = {}
        for row in found:
            record = dict(zip(names, row, strict=True))
            by_key[record[KEY]] = {c: record[c] for c in wanted}
        return [by_key.get(k, {}) for k in key_list]
