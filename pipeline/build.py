"""`bmsearch index` as a library call: ingest, encode what is new or changed, index, commit a generation."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.config import BuildOptions
from pipeline.corpus import (
    HASH,
    KEY,
    CorpusStats,
    SourceFile,
    corpus_schema,
    expand_paths,
    id_scheme,
    read_batches,
)
from pipeline.errors import CorpusError, IndexBuildError, IndexExistsError
from pipeline.fsutil import remove_tree
from pipeline.journal import open_work
from pipeline.layout import IndexPaths
from pipeline.lock import IndexLock
from pipeline.manifest import check_model, new_manifest, read_manifest, write_manifest
from pipeline.model import ModelRef, resolve_model
from pipeline.progress import NoProgress, Progress
from pipeline.shards import ShardWriter, read_shard
from pipeline.store import DB_NAME, Store, arrow_reader, quote
from pipeline.vector_build import VECTORS_FILE, build_vectors, check_index_options, shard_groups

log = logging.getLogger(__name__)

_RESOLVED = ("max_seq_length", "backend")  # settings that may be left unset; the manifest's model has their values


@dataclass
class BuildResult:
    """The run summary printed by the CLI and returned as --json."""

    name: str
    generation: int | None
    up_to_date: bool = False
    rows_read: int = 0
    skipped_empty: int = 0
    rows: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    encoded: int = 0
    resumed_rows: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    index_type: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Previous:
    number: int
    path: Path
    manifest: dict[str, Any]


def build_index(opts: BuildOptions, progress: Progress | None = None) -> BuildResult:
    """Build or incrementally update the index `opts.name`; safe to re-run and to resume after a crash."""
    progress = progress or NoProgress()
    started = time.monotonic()
    sources = expand_paths(opts.sources)
    schema = corpus_schema(sources, opts.text_column, opts.id_column)
    paths = IndexPaths.of(opts.index_dir, opts.name)
    paths.root.mkdir(parents=True, exist_ok=True)
    with IndexLock(paths.lock_file):
        ref = resolve_model(opts.model, opts.revision)
        settings = _settings(opts, ref, schema)
        prev = _previous(paths, opts, settings, sources)
        if prev and not opts.rebuild and _up_to_date(prev.manifest, sources, settings, opts):
            result = BuildResult(
                opts.name,
                prev.number,
                up_to_date=True,
                rows=prev.manifest["counts"]["rows"],
                unchanged=prev.manifest["counts"]["rows"],
                index_type=prev.manifest["index"]["type"],
            )
            result.seconds = time.monotonic() - started
            return result
        run = _Run(paths, opts, sources, schema, settings, ref, prev, progress)
        result = run.execute()
    result.seconds = time.monotonic() - started
    result.rows_per_s = result.rows_read / result.seconds if result.seconds else 0.0
    return result


def _settings(opts: BuildOptions, ref: ModelRef, schema: pa.Schema) -> dict[str, Any]:
    """What must stay the same for an index to be updated in place rather than replaced."""
    id_type = schema.field(opts.id_column).type if opts.id_column else None
    return {
        "text_column": opts.text_column,
        "id_column": opts.id_column,
        "id_scheme": id_scheme(opts.id_column, id_type),
        "model_name": ref.name,
        "model_weights": ref.fingerprint,
        "max_seq_length": opts.encoder.max_seq_length,
        "backend": None if opts.encoder.backend in (None, "auto") else opts.encoder.backend,
    }


def _previous(
    paths: IndexPaths, opts: BuildOptions, settings: dict[str, Any], sources: list[SourceFile]
) -> _Previous | None:
    number = paths.current()
    if number is None or opts.overwrite:
        return None
    manifest = read_manifest(paths.generation(number))
    old = _stored_settings(manifest)
    # max length and backend left unset mean "as before" on an update.
    differs = [
        k
        for k, v in settings.items()
        if v is not None
        and old.get(k) != v
        and not (k == "model_name" and settings["model_weights"] == old["model_weights"])
        and not (k == "id_scheme" and _same_derived_ids(manifest, sources))
    ]
    if differs:
        detail = ", ".join(f"{k} {old.get(k)!r} -> {settings[k]!r}" for k in differs)
        raise IndexExistsError(
            f"index {paths.name!r} exists with other settings ({detail}); pass --overwrite to replace it"
        )
    return _Previous(number, paths.generation(number), manifest)


# Derived ids before glob matches were named by their path below the glob's folder (a file argument or a glob
# match by its file name alone, a folder's files by their path below it).
LEGACY_DERIVED_SCHEME = "blake2b-63 of '<file name relative to its input argument>#<row number in file>'"


def _same_derived_ids(manifest: dict[str, Any], sources: list[SourceFile]) -> bool:
    """An index with the legacy derived-id scheme keeps its ids when every file it was built from that is
    still a source is named as before (true unless it came through a glob into a subfolder)."""
    if manifest["settings"].get("id_scheme") != LEGACY_DERIVED_SCHEME:
        return False
    before = {s["path"]: s["name"] for s in manifest["sources"]}
    return all(before.get(str(s.path), s.rel) == s.rel for s in sources)


def _stored_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """An index's settings, with a max length or backend left unset replaced by the value it resolved to."""
    settings = dict(manifest["settings"])
    for key in _RESOLVED:
        if settings.get(key) is None:
            settings[key] = manifest["model"].get(key)
    return settings


def _up_to_date(
    manifest: dict[str, Any], sources: list[SourceFile], settings: dict[str, Any], opts: BuildOptions
) -> bool:
    same_sources = manifest["sources"] == [s.to_dict() for s in sources]
    # --sync has nothing to drop when the last run synced the same sources
    synced = not opts.sync or bool(manifest["build"].get("sync"))
    same_index = opts.index_type is None or opts.index_type == manifest["index"].get("factory")
    return same_sources and synced and same_index and manifest["build"].get("on_empty") == opts.on_empty


def _fingerprint(
    opts: BuildOptions, sources: list[SourceFile], settings: dict[str, Any], prev: _Previous | None
) -> str:
    blob = json.dumps(
        {
            "sources": [s.to_dict() for s in sources],
            "settings": settings,
            "on_empty": opts.on_empty,
            "sync": opts.sync,
            "rebuild": opts.rebuild,
            "prev": prev.number if prev else None,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Run:
    """One build run: its work folder, staging database and journal."""

    def __init__(
        self,
        paths: IndexPaths,
        opts: BuildOptions,
        sources: list[SourceFile],
        schema: pa.Schema,
        settings: dict[str, Any],
        ref: ModelRef,
        prev: _Previous | None,
        progress: Progress,
    ) -> None:
        self.paths, self.opts, self.sources, self.schema = paths, opts, sources, schema
        self.settings, self.ref, self.prev, self.progress = settings, ref, prev, progress
        self.fp = _fingerprint(opts, sources, settings, prev)
        self.work, self.journal = open_work(paths.work, self.fp)
        self.timings: dict[str, float] = {}
        self._encoder: Any = None

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from dataclasses import replace

            from pipeline.encode import Encoder

            config = self.opts.encoder
            if self.prev is not None:
                old = self.prev.manifest["model"]
                backend = old["backend"] if config.backend in (None, "auto") else config.backend
                config = replace(config, max_seq_length=config.max_seq_length or old["max_seq_length"], backend=backend)
            self._encoder = Encoder(self.ref, config)
            if self.prev is not None:
                check_model(self.prev.manifest["model"], self._encoder.identity, self.paths.name)
        return self._encoder

    def execute(self) -> BuildResult:
        self.paths.shards.mkdir(exist_ok=True)
        _collect_shards(self.paths, keep=self._journal_shards())
        store = self._ingest()
        try:
            counts = self._counts(store)
            dim = self.prev.manifest["model"]["dimension"] if self.prev else self.encoder.dim
            check_index_options(counts["rows"], dim, self.opts.index_type, self.opts.memory_budget)
            resumed = sum(e["rows"] for e in self.journal.all("shard"))
            encoded = self._encode(store)
            model = self._model_identity()
            index_info = self._finish(store, model)
        finally:
            store.close()
        number = self._commit(index_info, model, counts)
        result = BuildResult(
            self.opts.name,
            number,
            rows_read=self.ingest_stats["rows_read"],
            skipped_empty=self.ingest_stats["skipped_empty"],
            encoded=encoded,
            resumed_rows=resumed,
            index_type=index_info["type"],
            timings=self.timings,
            rows=counts["rows"],
            new=counts["new"],
            changed=counts["changed"],
            unchanged=counts["unchanged"],
            removed=counts["removed"],
        )
        return result

    # --- stages --------------------------------------------------------------------------------
    def _ingest(self) -> Store:
        """The staging database with the corpus in it (loaded now, or by the run this one resumes)."""
        db = self.work / DB_NAME
        done = self.journal.find("ingested")
        if not db.exists():
            done = None  # a commit that failed or was killed had moved it out; the journaled shards still hold
        if done is None:
            for stale in (db, db.with_name(DB_NAME + ".wal")):
                stale.unlink(missing_ok=True)
        store = Store(db, read_only=False)
        try:
            if self.prev is not None:
                store.rows("ATTACH ? AS prev (READ_ONLY)", [str(self.prev.path / DB_NAME)])
            self.ingest_stats = done if done is not None else self._load_corpus(store)
        except BaseException:
            store.close()
            raise
        return store

    def _load_corpus(self, store: Store) -> dict[str, Any]:
        t0 = time.monotonic()
        stats = CorpusStats()
        self.progress.stage("reading", total=None)
        for batch in read_batches(
            self.sources,
            self.schema,
            self.opts.text_column,
            self.opts.id_column,
            self.opts.on_empty,
            self.opts.read_rows,
            stats,
        ):
            store.append_docs(batch)
            self.progress.advance(batch.num_rows)
        if stats.rows_kept == 0:
            raise CorpusError(
                f"the corpus has no non-empty texts ({stats.rows_read} rows read, {stats.skipped_empty} empty)"
            )
        duplicates = store.duplicate_keys(self.opts.id_column)
        if duplicates:
            what = f"column {self.opts.id_column!r}" if self.opts.id_column else "derived row ids"
            raise CorpusError(f"duplicate ids in {what}: {', '.join(map(str, duplicates))}")
        if self.prev is not None and not self.opts.sync:
            self._carry_over(store, stats.skipped_keys)
        store.index_keys()
        store.checkpoint()
        event = {
            "event": "ingested",
            "rows_read": stats.rows_read,
            "skipped_empty": stats.skipped_empty,
            "rows": store.count(),
        }
        self.journal.append(event)
        self.timings["ingest_s"] = time.monotonic() - t0
        return event

    def _carry_over(self, store: Store, emptied: list[np.ndarray]) -> None:
        """Without --sync, rows of the previous generation whose ids are absent now are kept; an id still in
        the sources whose text is now null or blank is not absent: its old text must not stay searchable."""
        new_types = _column_types(store, "docs")
        old_types = _column_types(store, "prev.docs")
        shared = ", ".join(quote(c) for c in old_types if c in new_types)
        store.con.register("emptied", pa.table({KEY: np.concatenate([np.empty(0, np.int64), *emptied])}))
        try:
            store.rows(
                f"INSERT INTO docs BY NAME SELECT {shared} FROM prev.docs p "
                f"WHERE p.{KEY} NOT IN (SELECT {KEY} FROM docs) AND p.{KEY} NOT IN (SELECT {KEY} FROM emptied)"
            )
        except duckdb.Error as exc:
            changed = [f"{c} ({t} -> {new_types[c]})" for c, t in old_types.items() if new_types.get(c, t) != t]
            if not changed:
                raise
            raise CorpusError(
                f"rows kept from the previous generation do not fit the new column types: {', '.join(changed)}; "
                "pass --sync to drop the ids no longer in the sources, or --overwrite to start afresh"
            ) from exc
        finally:
            store.con.unregister("emptied")

    def _counts(self, store: Store) -> dict[str, int]:
        rows = store.count()
        if self.prev is None:
            return {"rows": rows, "new": rows, "changed": 0, "unchanged": 0, "removed": 0}
        row = store.rows(f"""
            SELECT count(*) FILTER (WHERE p.{KEY} IS NULL),
                   count(*) FILTER (WHERE p.{KEY} IS NOT NULL AND p.{HASH} <> d.{HASH}),
                   count(*) FILTER (WHERE p.{KEY} IS NOT NULL AND p.{HASH} = d.{HASH})
            FROM docs d LEFT JOIN prev.vectors p ON p.{KEY} = d.{KEY}""")[0]
        removed = store.scalar(f"SELECT count(*) FROM prev.vectors WHERE {KEY} NOT IN (SELECT {KEY} FROM docs)")
        return {"rows": rows, "new": row[0], "changed": row[1], "unchanged": row[2], "removed": removed}

    def _journal_shards(self) -> set[str]:
        return {e["file"] for e in self.journal.all("shard")}

    def _encode(self, store: Store) -> int:
        """Embed rows with no reusable vector, in key order, one journaled shard per chunk."""
        t0 = time.monotonic()
        done = [read_shard(self.paths.shards / f)[0] for f in sorted(self._journal_shards())]
        done_keys = pa.table({KEY: pa.array(np.concatenate(done) if done else np.empty(0, np.int64))})
        store.con.register("done_keys", done_keys)
        reuse = (
            f"LEFT JOIN prev.vectors p ON p.{KEY} = d.{KEY} AND p.{HASH} = d.{HASH} WHERE p.{KEY} IS NULL AND"
            if self.prev is not None
            else "WHERE"
        )
        where = f"{reuse} d.{KEY} NOT IN (SELECT {KEY} FROM done_keys)"
        total = int(store.scalar(f"SELECT count(*) FROM docs d {where}"))
        if total == 0:
            return 0
        text = quote(self.opts.text_column)
        reader = arrow_reader(
            store.con.sql(f"SELECT d.{KEY}, d.{text} FROM docs d {where} ORDER BY d.{KEY}"), self.opts.shard_rows
        )
        pending: deque[np.ndarray] = deque()

        def chunks() -> Iterator[list[str]]:
            for batch in _rebatch(reader, self.opts.shard_rows):
                pending.append(batch.column(0).to_numpy())
                yield batch.column(1).to_pylist()

        encoder = self.encoder
        self.progress.stage("encoding", total=total)
        seq = len(self._journal_shards())
        encoded = 0

        def journal(path: Path, rows: int) -> None:
            self.journal.append({"event": "shard", "file": path.name, "rows": rows})

        # Only the writer thread appends to the journal until the `with` block has written every shard.
        try:
            with ShardWriter(journal) as writer:
                for vectors in encoder.encode_chunks(chunks()):
                    keys = pending.popleft()
                    writer.submit(self.paths.shards / f"{self.journal.run_id}-{seq:06d}.arrow", keys, vectors)
                    seq += 1
                    encoded += len(keys)
                    self.progress.advance(len(keys))
        finally:
            encoder.close()  # no idle tokeniser processes through the index and lexical stages
        store.con.unregister("done_keys")
        self.timings["encode_s"] = time.monotonic() - t0
        return encoded

    def _model_identity(self) -> dict[str, Any]:
        if self._encoder is None and self.prev is not None:
            return dict(self.prev.manifest["model"])  # nothing was encoded: same weights, same settings
        return dict(self.encoder.identity)

    def _finish(self, store: Store, model: dict[str, Any]) -> dict[str, Any]:
        """Record where every row's vector is, then build the vector index from the shards."""
        t0 = time.monotonic()
        new_rows = []
        for name in sorted(self._journal_shards()):
            keys, _ = read_shard(self.paths.shards / name)
            new_rows.append(
                pa.table(
                    {
                        KEY: keys,
                        "shard": pa.array([name] * len(keys)),
                        "pos": pa.array(np.arange(len(keys), dtype=np.int32)),
                    }
                )
            )
        empty = pa.table(
            {KEY: pa.array([], pa.int64()), "shard": pa.array([], pa.string()), "pos": pa.array([], pa.int32())}
        )
        store.con.register("new_vecs", pa.concat_tables(new_rows) if new_rows else empty)
        if self.prev is not None:
            located = (
                f"coalesce(n.shard, p.shard) AS shard, coalesce(n.pos, p.pos) AS pos FROM docs d "
                f"LEFT JOIN new_vecs n ON n.{KEY} = d.{KEY} "
                f"LEFT JOIN prev.vectors p ON p.{KEY} = d.{KEY} AND p.{HASH} = d.{HASH}"
            )
        else:
            located = f"n.shard, n.pos FROM docs d LEFT JOIN new_vecs n ON n.{KEY} = d.{KEY}"
        store.rows(f"CREATE OR REPLACE TABLE vectors AS SELECT d.{KEY}, d.{HASH}, {located}")
        store.con.unregister("new_vecs")
        missing = store.scalar("SELECT count(*) FROM vectors WHERE shard IS NULL")
        if missing:
            raise IndexBuildError(f"{missing} rows have no embedding; rerun with --overwrite")
        groups = shard_groups(
            store.rows(
                f"SELECT shard, list(pos ORDER BY pos), list({KEY} ORDER BY pos) FROM vectors "
                "GROUP BY shard ORDER BY shard"
            )
        )
        self.shard_names = [g.shard for g in groups]
        fresh = self._journal_shards()
        remove = np.empty(0, np.int64)
        previous = None
        if self.prev is not None and not self.opts.rebuild:
            stale = store.rows(
                f"SELECT p.{KEY} FROM prev.vectors p LEFT JOIN vectors v ON v.{KEY} = p.{KEY} AND v.{HASH} = p.{HASH} "
                f"WHERE v.{KEY} IS NULL"
            )
            remove = np.asarray([r[0] for r in stale], dtype=np.int64)
            previous = {"path": self.prev.path / VECTORS_FILE, "index": self.prev.manifest["index"]}
        self.number = self.paths.next_number()
        self.staged = self.paths.staging(self.number)
        self.staged.mkdir()
        info = build_vectors(
            self.staged / VECTORS_FILE,
            self.paths.shards,
            groups,
            int(model["dimension"]),
            index_type=self.opts.index_type,
            memory_budget=self.opts.memory_budget,
            target_recall=self.opts.target_recall,
            previous=previous,
            remove=remove,
            new_groups=[g for g in groups if g.shard in fresh],
            progress=self.progress,
        )
        self.timings["index_s"] = time.monotonic() - t0
        self.lexical = self._build_lexical(store)
        store.checkpoint()
        return info

    def _build_lexical(self, store: Store) -> dict[str, Any] | None:
        """The BM25 side, rebuilt from the docs table each run (a pass over text, no model involved)."""
        if not self.opts.lexical:
            return None
        if importlib.util.find_spec("bm25s") is None:
            log.info("bm25s is not installed: no lexical side")
            return None
        from pipeline.lexical import LEXICAL_DIR, build_lexical, docs_chunks

        t0 = time.monotonic()
        self.progress.stage("lexical index", total=None)
        stats = build_lexical(docs_chunks(store.con, self.opts.text_column), self.staged / LEXICAL_DIR)
        self.timings["lexical_s"] = time.monotonic() - t0
        return {"type": "bm25", **stats.to_dict()}

    def _commit(self, index_info: dict[str, Any], model: dict[str, Any], counts: dict[str, int]) -> int:
        (self.work / DB_NAME).rename(self.staged / DB_NAME)
        number = self.number
        manifest = new_manifest(
            generation=number,
            previous_generation=self.prev.number if self.prev else None,
            model=model,
            settings=self.settings,
            corpus={
                "text_column": self.opts.text_column,
                "id_column": self.opts.id_column,
                "id_scheme": self.settings["id_scheme"],
                "columns": self.schema.names,
            },
            counts={
                **counts,
                "rows_read": self.ingest_stats["rows_read"],
                "skipped_empty": self.ingest_stats["skipped_empty"],
            },
            index=index_info,
            sources=[s.to_dict() for s in self.sources],
            shards=self.shard_names,
            lexical=self.lexical,
            build={
                "on_empty": self.opts.on_empty,
                "sync": self.opts.sync,
                "rebuild": self.opts.rebuild,
                "batch_size": self.opts.encoder.batch_size,
                "token_budget": self.opts.encoder.token_budget,
                "device": self.opts.encoder.device,
            },
            timings=self.timings,
        )
        write_manifest(self.staged, manifest)
        live_before = self.paths.current()  # under --overwrite too: a reader may still hold it
        self.paths.commit(self.staged, number)
        remove_tree(self.work)
        self.paths.prune(previous=live_before)
        _collect_shards(self.paths, keep=set())
        return number


def _column_types(store: Store, table: str) -> dict[str, str]:
    return {r[0]: r[1] for r in store.rows(f"SELECT column_name, column_type FROM (DESCRIBE {table})")}


def _rebatch(reader: Any, rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of exactly `rows` rows (the last may be shorter), whatever the reader yields."""
    buffer: list[pa.RecordBatch] = []
    held = 0
    for batch in reader:
        buffer.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(buffer).combine_chunks()
            yield table.slice(0, rows).to_batches()[0]
            rest = table.slice(rows)
            buffer = rest.to_batches() if rest.num_rows else []
            held = rest.num_rows
    if held:
        yield pa.Table.from_batches(buffer).combine_chunks().to_batches()[0]


def _collect_shards(paths: IndexPaths, keep: set[str]) -> None:
    """Delete shard files that no kept generation and no journaled run refers to."""
    referenced = set(keep)
    for number in paths.generations():
        try:
            referenced.update(read_manifest(paths.generation(number)).get("shards", []))
        except Exception:
            continue
    for file in paths.shards.glob("*.arrow"):
        if file.name not in referenced:
            file.unlink(missing_ok=True)
    for tmp in paths.shards.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)
