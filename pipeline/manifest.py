"""The manifest every index generation carries, and the checks applied when it is loaded."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import IndexCorruptError, ModelError
from pipeline.fsutil import atomic_write_json

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
REQUIRED = ("format_version", "generation", "model", "corpus", "counts", "index", "sources")
# Model fields that change what a vector means; a query encoder must agree on all of them.
MODEL_KEYS = ("pooling", "dimension", "normalized", "max_seq_length", "backend")


def new_manifest(**fields: Any) -> dict[str, Any]:
    manifest = {
        "format_version": FORMAT_VERSION,
        "bmsearch_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest.update(fields)
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(directory / MANIFEST_NAME, manifest)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexCorruptError(f"{path} is missing; the index is incomplete (rebuild it with --overwrite)") from None
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"{path} is unreadable ({exc}); rebuild the index with --overwrite") from None
    if not isinstance(manifest, dict) or any(k not in manifest for k in REQUIRED):
        raise IndexCorruptError(f"{path} lacks required fields; rebuild the index with --overwrite")
    if manifest["format_version"] != FORMAT_VERSION:
        raise IndexCorruptError(f"{path} has format {manifest['format_version']}, this bmsearch reads {FORMAT_VERSION}")
    return manifest


def same_model(recorded: dict[str, Any], identity: dict[str, Any]) -> bool:
    weights = (identity.get("revision") or identity.get("content_hash")) == (
        recorded.get("revision") or recorded.get("content_hash")
    )
    return weights and all(recorded.get(k) == identity.get(k) for k in MODEL_KEYS)


def check_model(recorded: dict[str, Any], identity: dict[str, Any], index_name: str) -> None:
    """Refuse an encoder whose vectors would not be comparable with the index's."""
    if same_model(recorded, identity):
        return
    diffs = [k for k in ("revision", "content_hash", *MODEL_KEYS) if recorded.get(k) != identity.get(k)]
    raise ModelError(
        f"index {index_name!r} was built with model {recorded.get('name')} "
        f"({describe_model(recorded)}); the query model {identity.get('name')} differs in {', '.join(diffs)}"
    )


def describe_model(model: dict[str, Any]) -> str:
    weights = model.get("revision") or (model.get("content_hash") or "")[:12]
    return f"{model.get('pooling')} pooling, dim {model.get('dimension')}, {model.get('backend')}, weights {weights}"
