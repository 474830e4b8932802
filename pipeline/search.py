"""Query an index: encode with the manifest's model, pre-filter in DuckDB, search FAISS, join metadata."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import ann
from pipeline.corpus import HASH, KEY
from pipeline.encode import EncoderConfig
from pipeline.errors import IndexCorruptError, ModelError, UsageError
from pipeline.layout import IndexPaths
from pipeline.manifest import check_model, read_manifest, same_model
from pipeline.model import ModelRef, resolve_model
from pipeline.store import DB_NAME, Store
from pipeline.vector_build import VECTORS_FILE

if TYPE_CHECKING:
    from pipeline.fusion import FusionConfig

log = logging.getLogger(__name__)
HIDDEN_COLUMNS = (KEY, HASH)
MODES = ("dense", "lexical", "hybrid")
HIT_FIELDS = ("rank", "score", "id")  # every hit's own keys; metadata columns of these names are renamed


@dataclass
class Generation:
    """One opened, immutable generation: manifest, vector index and metadata store."""

    number: int
    path: Path
    manifest: dict[str, Any]
    index: Any
    store: Store
    _lexical: Any = None

    @classmethod
    def open(cls, paths: IndexPaths, lexical: bool = False) -> Generation:
        """The live generation; with `lexical`, its BM25 side is opened now rather than on first use, so it
        stays readable should the build prune this generation's folder while it is still being served."""
        path = paths.require_current()
        manifest = read_manifest(path)
        file = path / VECTORS_FILE
        try:
            index = ann.load_index(
                file, params=manifest["index"].get("search_params"), expected_bytes=manifest["index"].get("index_bytes")
            )
        except IndexCorruptError as exc:
            raise IndexCorruptError(f"{exc}; rebuild the index with --overwrite") from None
        if index.ntotal != manifest["counts"]["rows"]:
            raise IndexCorruptError(
                f"vector index {file} holds {index.ntotal} vectors, the manifest says "
                f"{manifest['counts']['rows']}; rebuild the index with --overwrite"
            )
        store = Store(path / DB_NAME, read_only=True)
        generation = cls(int(path.name[4:]), path, manifest, index, store)
        if lexical and manifest.get("lexical"):
            try:
                _ = generation.lexical
            except BaseException:
                store.close()
                raise
        return generation

    @property
    def lexical(self) -> Any:
        """The BM25 side, opened on first use; UsageError when the generation has none."""
        if self._lexical is None:
            from pipeline.lexical import LEXICAL_DIR, open_lexical

            if not self.manifest.get("lexical"):
                raise UsageError(
                    "this index has no lexical side (built without BM25, or where bm25s was not installed); "
                    "run `bmsearch index ... --rebuild` with bm25s installed (bmsearch[lexical]), or search dense only"
                )
            self._lexical = open_lexical(self.path / LEXICAL_DIR)
        return self._lexical

    def close(self) -> None:
        self.store.close()


@dataclass(frozen=True)
class Live:
    """A generation and the encoder for its model, read and switched together (encoder None until needed)."""

    generation: Generation
    encoder: Any = None


class Searcher:
    """Answers queries against the live generation of one index; safe to share between threads."""

    def __init__(
        self,
        paths: IndexPaths | str | Path,
        model: str | None = None,
        encoder: EncoderConfig | None = None,
        preload_lexical: bool = False,
    ) -> None:
        """`paths`: the index, as IndexPaths (`layout.resolve_name`) or the path of its folder."""
        self.paths = paths if isinstance(paths, IndexPaths) else IndexPaths(Path(paths))
        self.model_arg = model
        self.encoder_config = encoder or EncoderConfig()
        self.preload_lexical = preload_lexical
        self._live = Live(Generation.open(self.paths, lexical=preload_lexical))
        self._lock = threading.Lock()

    @property
    def generation(self) -> Generation:
        return self._live.generation

    @property
    def manifest(self) -> dict[str, Any]:
        return self.generation.manifest

    @property
    def encoder(self) -> Any:
        return self.snapshot().encoder

    def snapshot(self, need_encoder: bool = True) -> Live:
        """The live generation with its encoder (loaded on first need): one consistent pair for a search."""
        live = self._live
        if need_encoder and live.encoder is None:
            with self._lock:
                live = self._live
                if live.encoder is None:
                    live = Live(live.generation, self._load_encoder(live.generation.manifest))
                    self._live = live
        return live

    def _load_encoder(self, manifest: dict[str, Any]) -> Any:
        from pipeline.encode import Encoder

        recorded = manifest["model"]
        ref = resolve_model(self.model_arg) if self.model_arg else _recorded_ref(recorded)
        if ref.fingerprint != (recorded.get("revision") or recorded.get("content_hash")):
            raise ModelError(
                f"index {self.paths.name!r} was built with model {recorded['name']}; "
                f"{ref.name} has other weights or model files (its content hash or revision differs) and cannot query it"
            )
        config = replace(self.encoder_config, max_seq_length=recorded["max_seq_length"], backend=recorded["backend"])
        encoder = Encoder(ref, config)
        check_model(recorded, encoder.identity, self.paths.name)
        return encoder

    def reload_if_changed(self) -> bool:
        """Switch to a newer committed generation if there is one; the old stays usable until dropped.

        A generation built with another model (an `index --overwrite` run) switches in with an encoder for
        that model, loaded before the switch; if it cannot be loaded the error is raised and nothing changes.
        """
        number = self.paths.current()
        if number is None or number == self.generation.number:
            return False
        generation = Generation.open(self.paths, lexical=self.preload_lexical)
        try:
            current = self._live
            encoder = current.encoder
            if encoder is not None and not same_model(
                current.generation.manifest["model"], generation.manifest["model"]
            ):
                encoder = self._load_encoder(generation.manifest)
        except BaseException:
            generation.close()
            raise
        with self._lock:
            self._live = Live(generation, encoder)
        return True

    def search(
        self,
        queries: Sequence[str],
        k: int = 10,
        where: str | None = None,
        columns: Sequence[str] | None = None,
        params: Sequence[Any] | None = None,
        mode: str = "dense",
        fusion: FusionConfig | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Hits for each query, best first: rank, score, id and the chosen metadata columns (None: all).

        `where` is an SQL condition on metadata columns, evaluated in DuckDB before the search in every
        mode; `params` binds its `?` placeholders. `mode` is dense, lexical (BM25) or hybrid (fusion).
        """
        _check_mode(mode)
        _check_request(queries, k)
        live = self.snapshot(need_encoder=mode != "lexical")
        vectors = live.encoder.encode(list(queries)) if mode != "lexical" else None
        return self.search_encoded(queries, vectors, k, where, columns, params, mode, fusion, live.generation)

    def search_encoded(
        self,
        queries: Sequence[str] | None,
        vectors: np.ndarray | None,
        k: int = 10,
        where: str | None = None,
        columns: Sequence[str] | None = None,
        params: Sequence[Any] | None = None,
        mode: str = "dense",
        fusion: FusionConfig | None = None,
        generation: Generation | None = None,
    ) -> list[list[dict[str, Any]]]:
        """As `search`, with the query vectors already encoded (None for lexical mode, which needs only text);
        `generation` is the one the vectors were encoded for (default: the live one)."""
        _check_mode(mode)
        _check_request(queries, k)
        if mode != "dense" and queries is None:
            raise UsageError(f"{mode} search needs the query texts")
        if mode != "lexical" and vectors is None:
            raise UsageError(f"{mode} search needs the query vectors")
        gen = generation or self.generation
        allowed = gen.store.filter_keys(where, params) if where else None
        scores, keys = self._ranked(gen, queries or [], vectors, k, allowed, mode, fusion)
        return self.hits(gen, scores, keys, columns)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        where: str | None = None,
        columns: Sequence[str] | None = None,
        params: Sequence[Any] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Dense search for query vectors already encoded."""
        return self.search_encoded(None, vectors, k, where, columns, params, "dense")

    def _ranked(
        self,
        gen: Generation,
        queries: Sequence[str],
        vectors: np.ndarray | None,
        k: int,
        allowed: np.ndarray | None,
        mode: str,
        fusion: FusionConfig | None,
    ) -> tuple[Sequence[np.ndarray] | np.ndarray, Sequence[np.ndarray] | np.ndarray]:
        if mode == "lexical" or vectors is None:
            return gen.lexical.search(list(queries), k, allowed)
        if mode == "dense":
            return ann.search(gen.index, vectors, k, allowed_ids=allowed)
        from pipeline.fusion import FusionConfig, fuse_modes, padded

        fusion = fusion or FusionConfig()
        depth = max(k, fusion.depth)
        dense = padded(*ann.search(gen.index, vectors, depth, allowed_ids=allowed), depth)
        lexical = gen.lexical.search(list(queries), depth, allowed)
        sole = gen.lexical.sole_matches(list(queries), allowed) if fusion.lead_sole_match else None
        return fuse_modes({"dense": dense, "lexical": lexical}, k, fusion, sole)

    def hits(
        self,
        gen: Generation,
        scores: Sequence[np.ndarray] | np.ndarray,
        keys: Sequence[np.ndarray] | np.ndarray,
        columns: Sequence[str] | None,
    ) -> list[list[dict[str, Any]]]:
        """Join ranked (score, key) rows to their metadata in one DuckDB query, keeping the order."""
        shown = self._shown_columns(gen, columns)
        id_column = gen.manifest["corpus"]["id_column"]
        flat_keys = [int(key) for row in keys for key in row if key >= 0]
        fetched = [KEY, *shown] + ([id_column] if id_column and id_column not in shown else [])
        rows = iter(gen.store.fetch(flat_keys, fetched))
        names = hit_names([c for c in shown if c != id_column])
        results = []
        for row_scores, row_keys in zip(scores, keys, strict=True):
            hits = []
            for rank, (score, key) in enumerate(zip(row_scores, row_keys, strict=True), start=1):
                if key < 0:
                    continue
                meta = next(rows)
                hit = {"rank": rank, "score": float(score), "id": meta.get(id_column) if id_column else int(key)}
                hit.update({name: meta.get(c) for c, name in names.items()})
                hits.append(hit)
            results.append(hits)
        return results

    def _shown_columns(self, gen: Generation, columns: Sequence[str] | None) -> list[str]:
        available = [c for c in gen.store.columns() if c not in HIDDEN_COLUMNS]
        if columns is None:
            return available
        unknown = [c for c in columns if c not in available]
        if unknown:
            raise UsageError(f"unknown column(s) {', '.join(unknown)}; the index has: {', '.join(available)}")
        return list(columns)

    def close(self) -> None:
        self.generation.close()


def hit_names(columns: Sequence[str]) -> dict[str, str]:
    """The key each metadata column takes in a hit: its own name, or with a trailing `_` (more where needed)
    when that name is one of the hit's own fields (rank, score, id) or taken by such a renamed column."""
    taken = set(HIT_FIELDS) | set(columns)
    names = {}
    for column in columns:
        name = column
        if column in HIT_FIELDS:
            while name in taken:
                name += "_"
            taken.add(name)
        names[column] = name
    return names


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"unknown search mode {mode!r}: use {', '.join(MODES)}")


def _check_request(queries: Sequence[str] | None, k: int) -> None:
    # a str is a Sequence[str] too: searched as it is, each character would be a query of its own
    if isinstance(queries, str):
        raise UsageError("queries is a list of texts; pass [text] for one query")
    if k < 1:
        raise UsageError(f"k must be at least 1, not {k}")


def _recorded_ref(recorded: dict[str, Any]) -> ModelRef:
    if recorded.get("source") == "local":
        path = Path(recorded["path"])
        if not path.is_dir():
            raise ModelError(f"the index's model directory {path} no longer exists; pass --model PATH to a copy of it")
        return resolve_model(str(path))
    return resolve_model(recorded["name"], recorded.get("revision"))
