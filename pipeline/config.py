"""Options of a build run, with defaults shared by the CLI and the library."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.encode import EncoderConfig
from pipeline.layout import DEFAULT_INDEX_DIR
from pipeline.model import DEFAULT_MODEL


@dataclass
class BuildOptions:
    """What `bmsearch index` was asked to do."""

    sources: list[str]
    name: str
    index_dir: Path = DEFAULT_INDEX_DIR
    text_column: str = "text"
    id_column: str | None = None
    model: str = DEFAULT_MODEL
    revision: str | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    on_empty: str = "skip"  # skip | error
    overwrite: bool = False  # start from nothing: re-encode everything
    rebuild: bool = False  # rebuild the vector index from all embeddings, none re-encoded
    sync: bool = False  # drop ids that are no longer in the sources
    index_type: str | None = None  # a FAISS factory string; None chooses by size and memory budget
    memory_budget: str | None = None  # e.g. "4G"
    target_recall: float = 0.95
    lexical: bool = True  # build the BM25 side when bm25s is installed
    shard_rows: int = 16_384
    read_rows: int = 8_192
