"""Read Parquet corpora as a stream of record batches with validated text, stable int64 keys and hashes."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import CorpusError

KEY = "_key"
HASH = "_hash"
RESERVED = (KEY, HASH)
KEY_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class SourceFile:
    """One Parquet file of the corpus, with the name its row ids are derived from."""

    path: Path
    rel: str  # path relative to the argument (folder, glob's literal folder) that found it
    size: int
    mtime_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.rel, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass
class CorpusStats:
    rows_read: int = 0
    rows_kept: int = 0
    skipped_empty: int = 0
    per_file: dict[str, int] = field(default_factory=dict)
    skipped_keys: list[np.ndarray] = field(default_factory=list)  # rows present in the sources with no text


def expand_paths(paths: Sequence[str]) -> list[SourceFile]:
    """Files, directories (searched for *.parquet) and globs, deduplicated, in a stable sorted order.

    A file's `rel` is its path relative to the directory argument, or the glob's literal leading folder,
    that found it; a plain file argument gives its name. A file found by several arguments takes the name
    with the most folders in it (ties: the smallest), so the order of the arguments never changes an id.
    """
    names: dict[Path, set[str]] = {}
    for arg in paths:
        for file, rel in _expand_arg(arg):
            names.setdefault(file.resolve(), set()).add(rel)
    if not names:
        raise CorpusError("no input files given")
    found = [_source(path, min(rels, key=lambda r: (-r.count("/"), r))) for path, rels in names.items()]
    return sorted(found, key=lambda s: (s.rel, str(s.path)))


def _source(path: Path, rel: str) -> SourceFile:
    try:
        stat = path.stat()
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}") from None
    return SourceFile(path, rel, stat.st_size, stat.st_mtime_ns)


def _expand_arg(arg: str) -> list[tuple[Path, str]]:
    """(file, rel) pairs of one argument; one that names an existing path ('run [1]') is that path, not a glob."""
    if not glob.has_magic(arg) or Path(arg).exists():
        path = Path(arg)
        if path.is_dir():
            return _dir_files(path, path)
        if path.is_file():
            return [(path, path.name)]
        raise CorpusError(f"{path} does not exist")
    matches = sorted(glob.glob(arg, recursive=True))
    if not matches:
        raise CorpusError(f"no files match {arg}")
    base = _glob_base(arg)
    pairs: list[tuple[Path, str]] = []
    for match in matches:
        path = Path(match)
        if path.is_dir():
            pairs.extend(_dir_files(path, base))
        elif path.is_file():
            pairs.append((path, _relative(path, base)))
    return pairs


def _dir_files(folder: Path, base: Path) -> list[tuple[Path, str]]:
    """The .parquet files below a folder, leaving out those below a name starting with "_" or "." (Spark's
    _temporary attempts, Delta's _delta_log, hidden files), as pyarrow's dataset discovery does."""
    files = sorted(
        p
        for p in folder.rglob("*.parquet")
        if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(folder).parts)
    )
    if not files:
        raise CorpusError(f"directory {folder} holds no .parquet files (names starting with _ or . are skipped)")
    return [(f, _relative(f, base)) for f in files]


def _glob_base(pattern: str) -> Path:
    """The folder made of a glob's leading components that hold no wildcard ('data' of 'data/*/x.parquet')."""
    parts = Path(pattern).parts
    literal = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return Path(*parts[:literal]) if literal else Path(".")


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _check_distinct_names(sources: Sequence[SourceFile]) -> None:
    """Derived row ids hash a file's `rel`: two different files with the same one would share their ids."""
    seen: dict[str, SourceFile] = {}
    for source in sources:
        other = seen.setdefault(source.rel, source)
        if other is not source:
            raise CorpusError(
                f"{other.path} and {source.path} would get the same row ids (both are named {source.rel!r}); "
                "pass their parent folder or a glob that finds both, or give an --id-column"
            )


def _open(source: SourceFile) -> pq.ParquetFile:
    if not os.access(source.path, os.R_OK):
        raise CorpusError(f"cannot read {source.path}: permission denied")
    try:
        return pq.ParquetFile(source.path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorpusError(f"{source.path} is not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def corpus_schema(sources: Sequence[SourceFile], text_column: str, id_column: str | None) -> pa.Schema:
    """The unified schema of all files, checked for the text and id columns before any row is read."""
    if id_column is None:
        _check_distinct_names(sources)
    schemas = []
    for source in sources:
        schema = _open(source).schema_arrow
        names = schema.names
        for col in (text_column, id_column):
            if col and col not in names:
                raise CorpusError(f"{source.path} has no column {col!r}; its columns are: {', '.join(names)}")
        text_type = _as_string(schema.field(text_column).type)
        if text_type is None:
            raise CorpusError(
                f"text column {text_column!r} in {source.path} is {schema.field(text_column).type}, not a string"
            )
        schema = schema.set(schema.get_field_index(text_column), pa.field(text_column, text_type))
        if id_column:
            id_type = schema.field(id_column).type
            if not pa.types.is_integer(id_type):
                id_type = _as_string(id_type)
                if id_type is None:
                    raise CorpusError(
                        f"id column {id_column!r} in {source.path} is {schema.field(id_column).type}; "
                        "ids must be integers or strings"
                    )
                schema = schema.set(schema.get_field_index(id_column), pa.field(id_column, id_type))
        clash = [n for n in names if n in RESERVED]
        if clash:
            raise CorpusError(f"{source.path} has columns reserved by bmsearch: {', '.join(clash)}")
        schemas.append(schema)
    try:
        unified = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise CorpusError(f"the input files' schemas conflict: {str(exc).splitlines()[0]}") from None
    if pa.types.is_null(unified.field(text_column).type):  # every file's texts are null: no row is kept
        unified = unified.set(unified.get_field_index(text_column), pa.field(text_column, pa.string()))
    return unified


def _as_string(type_: pa.DataType) -> pa.DataType | None:
    """The plain string type a text or id column is read as, or None when it holds no strings.

    pandas writes a categorical column as a dictionary, and an object column with no value (an empty or
    all-null partition) as the null type; neither would unify with the string columns of other files.
    """
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_null(type_):
        return type_
    if str(type_) == "string_view":  # pa.types.is_string_view is missing from older pyarrow
        return pa.string()
    return None


def hash64(values: Sequence[str]) -> np.ndarray:
    """Stable non-negative 63-bit hashes (blake2b) of strings."""
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") & KEY_MASK
    return out


def id_scheme(id_column: str | None, id_type: pa.DataType | None) -> str:
    if id_column is None:
        return (
            "blake2b-63 of '<file path relative to its folder argument or glob's literal folder, "
            "or file name for a file argument>#<row number in file>'"
        )
    if id_type is not None and pa.types.is_integer(id_type):
        return f"integer column {id_column!r} used as is"
    return f"blake2b-63 of string column {id_column!r}"


def _keys(batch: pa.RecordBatch, source: SourceFile, first_row: int, id_column: str | None) -> np.ndarray:
    if id_column is None:
        return hash64([f"{source.rel}#{first_row + i}" for i in range(batch.num_rows)])
    ids = batch.column(id_column)
    if ids.null_count:
        raise CorpusError(f"id column {id_column!r} has null ids in {source.path}")
    if pa.types.is_integer(ids.type):
        keys = ids.to_numpy(zero_copy_only=False)
        if len(keys) and (keys.min() < 0 or (keys.dtype == np.uint64 and keys.max() > KEY_MASK)):
            raise CorpusError(f"id column {id_column!r} in {source.path} has ids outside 0..2^63-1")
        return keys.astype(np.int64)
    return hash64(ids.to_pylist())


def read_batches(
    sources: Sequence[SourceFile],
    schema: pa.Schema,
    text_column: str,
    id_column: str | None,
    on_empty: str = "skip",
    batch_rows: int = 8192,
    stats: CorpusStats | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of the corpus with `_key` and `_hash` columns; null or blank texts skipped and counted."""
    stats = stats if stats is not None else CorpusStats()
    out_schema = schema.append(pa.field(KEY, pa.int64())).append(pa.field(HASH, pa.int64()))
    for source in sources:
        row = 0
        try:
            batches = _open(source).iter_batches(batch_size=batch_rows)
            for raw in batches:
                batch = pa.RecordBatch.from_arrays([_conform(raw, f) for f in schema], schema=schema)
                texts = batch.column(text_column)
                keys = _keys(batch, source, row, id_column)
                blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(texts), ""), True)
                n_blank = pc.sum(blank).as_py() or 0
                if n_blank and on_empty == "error":
                    first = row + int(np.flatnonzero(blank.to_numpy(zero_copy_only=False))[0])
                    raise CorpusError(
                        f"{source.path} row {first} has a null or empty text (--on-empty skip skips such rows)"
                    )
                stats.rows_read += batch.num_rows
                stats.skipped_empty += n_blank
                row += batch.num_rows
                if n_blank:
                    keep = pc.invert(blank)
                    batch = batch.filter(keep)
                    kept = keep.to_numpy(zero_copy_only=False)
                    stats.skipped_keys.append(keys[~kept])
                    keys = keys[kept]
                if batch.num_rows == 0:
                    continue
                hashes = hash64(batch.column(text_column).to_pylist())
                columns = [*batch.columns, pa.array(keys), pa.array(hashes)]
                stats.rows_kept += batch.num_rows
                stats.per_file[source.rel] = stats.per_file.get(source.rel, 0) + batch.num_rows
                yield pa.RecordBatch.from_arrays(columns, schema=out_schema)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorpusError(f"error reading {source.path} at row {row}: {str(exc).splitlines()[0]}") from None


def _conform(batch: pa.RecordBatch, f: pa.Field) -> pa.Array:
    index = batch.schema.get_field_index(f.name)
    if index < 0:
        return pa.nulls(batch.num_rows, f.type)
    column = batch.column(index)
    return column if column.type == f.type else column.cast(f.type)
