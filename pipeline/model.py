"""Find and load an embedding model: a hub id (cache first, fail fast offline) or a local directory."""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pipeline.errors import ModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "prajjwal1/bert-medium"
# Files that decide what a model computes; their bytes make a local directory's identity.
_IDENTITY_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")
_HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model", "1_Pooling/*", "2_Normalize/*"]
# Fetched only when a repo has no safetensors: older repos ship PyTorch pickles alone.
_HUB_BIN_PATTERNS = ["pytorch_model*.bin"]
_HUB_CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelRef:
    """A model resolved to a local directory, with what identifies its weights."""

    name: str  # as the user gave it: a hub id or a path
    path: str  # local directory holding the files
    source: str  # "hub" or "local"
    revision: str | None  # hub commit hash
    content_hash: str | None  # sha256 of a local directory's files

    @property
    def fingerprint(self) -> str:
        return self.revision or self.content_hash or ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_model(name: str, revision: str | None = None) -> ModelRef:
    """Turn a hub id or directory into a ModelRef without loading weights; raise ModelError fast."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelError(f"{name} is not a model directory (no config.json in it)")
        resolved = path.resolve()
        return ModelRef(name, str(resolved), "local", None, directory_hash(resolved))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model directory {name} does not exist")
    snapshot = _hub_snapshot(name, revision)
    return ModelRef(name, snapshot, "hub", Path(snapshot).name, None)


def directory_hash(path: Path) -> str:
    """sha256 over the relative names and bytes of the files that define a model."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _IDENTITY_SUFFIXES):
        if "onnx" in file.relative_to(path).parts:
            continue
        digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _hub_snapshot(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import constants

    advice = "pass a local model directory with --model PATH, or download it where the hub is reachable"
    what = f"{repo_id} at revision {revision}" if revision else repo_id
    cached = _cached_snapshot(repo_id, revision)
    if cached is not None and _has_weights(Path(cached)):
        return cached
    if _offline():
        if cached is not None:
            raise ModelError(_incomplete(repo_id, cached, "HF_HUB_OFFLINE is set"))
        raise ModelError(f"model {what} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; {advice}")
    if not _reachable(constants.ENDPOINT):
        if cached is not None:
            raise ModelError(_incomplete(repo_id, cached, f"{constants.ENDPOINT} cannot be reached"))
        raise ModelError(f"model {what} is not cached and {constants.ENDPOINT} cannot be reached; {advice}")
    return _download(repo_id, revision)


def _cached_snapshot(repo_id: str, revision: str | None) -> str | None:
    """The cached snapshot folder of a hub model, complete or not; None when there is none."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return str(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except HFValidationError as exc:
        raise ModelError(f"{repo_id!r} is neither a local directory nor a valid hub model id") from exc
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None


def _download(repo_id: str, revision: str | None) -> str:
    """Fetch a hub model's files: safetensors weights, or the PyTorch pickles where a repo has none."""
    from huggingface_hub import snapshot_download

    try:
        folder = str(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS, etag_timeout=5))
        if not _has_weights(Path(folder)):
            folder = str(
                snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_BIN_PATTERNS, etag_timeout=5)
            )
    except Exception as exc:  # the hub raises many kinds; all mean "could not fetch"
        raise ModelError(f"could not download model {repo_id}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    if not _has_weights(Path(folder)):
        # snapshot_download falls back to a partial cached copy when the hub answers with an error
        raise ModelError(
            f"could not download the weights of model {repo_id} (no *.safetensors or pytorch_model.bin in {folder}); "
            "check that the repository holds a model, or pass a local model directory with --model PATH"
        )
    return folder


def _has_weights(folder: Path) -> bool:
    """Whether a snapshot holds config.json and a complete set of weights (every shard its index names)."""
    if not (folder / "config.json").is_file():
        return False
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            return _shards_present(folder, folder / index)
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def _shards_present(folder: Path, index: Path) -> bool:
    import json

    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return bool(shards) and all((folder / str(shard)).is_file() for shard in shards)


def _incomplete(repo_id: str, folder: str, why: str) -> str:
    return (
        f"the cached copy of {repo_id} is incomplete (missing weights: no *.safetensors or pytorch_model.bin in "
        f"{folder}) and {why}; run once where the hub is reachable without HF_HUB_OFFLINE to complete it, "
        "or pass a local model directory with --model PATH"
    )


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the hub opens within a few seconds (fail fast when it cannot).

    Behind a proxy the hub's host is not ours to reach: huggingface_hub goes through the proxy, so its own
    short-timeout request decides instead.
    """
    url = urlparse(endpoint)
    if _proxied(url.scheme, url.hostname or ""):
        return True
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=_HUB_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _proxied(scheme: str, host: str) -> bool:
    """Whether HTTP(S)_PROXY / ALL_PROXY (less NO_PROXY) send requests to host through a proxy."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)


def load_sentence_transformer(
    ref: ModelRef, device: str = "cpu", max_seq_length: int | None = None
) -> SentenceTransformer:
    """Load a SentenceTransformer from the resolved directory; plain BERT dirs get Transformer + mean Pooling."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    Pooling, Transformer = _module_classes()
    path = Path(ref.path)
    try:
        if (path / "modules.json").exists():
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
        else:
            transformer = Transformer(str(path), max_seq_length=max_seq_length or _position_limit(path))
            dim_of = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
            pooling = Pooling(dim_of(), pooling_mode="mean")
            model = SentenceTransformer(modules=[transformer, pooling], device=device)
    except Exception as exc:
        raise ModelError(f"cannot load model from {ref.path}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    tokenizer = model.tokenizer
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        # transformers builds a tokenizer of special tokens alone when the files are missing: every word
        # would become [UNK] and every text the same vector
        raise ModelError(
            f"model {ref.name} has no tokenizer vocabulary in {ref.path} (tokenizer.json, vocab.txt, ...); "
            "copy the tokenizer files of the model into that directory"
        )
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def _position_limit(path: Path, default: int = 512) -> int:
    """The longest input a plain BERT directory's position table allows (capped at 512)."""
    import json

    try:
        positions = json.loads((path / "config.json").read_text()).get("max_position_embeddings", default)
    except (OSError, ValueError):
        return default
    return int(min(default, positions))


def pooling_mode(model: SentenceTransformer) -> str:
    """The pooling a SentenceTransformer applies, as a short name ('mean', 'cls', ...)."""
    pooling_cls, _ = _module_classes()
    for module in model:
        if isinstance(module, pooling_cls):
            mode = getattr(module, "pooling_mode", None)
            return str(mode if isinstance(mode, str) else module.get_pooling_mode_str())
    return "none"


def check_encoder_modules(model: SentenceTransformer, name: str) -> None:
    """Raise ModelError unless the model is Transformer -> mean Pooling [-> Normalize].

    That is all the encoder computes (the transformer, then its own mean pooling and L2 normalisation); a
    Dense, LayerNorm or any other module would be skipped and give wrong vectors without a word.
    """
    pooling_cls, transformer_cls = _module_classes()
    normalize_cls = _normalize_class()
    modules = list(model)
    shape_ok = (
        len(modules) in (2, 3)
        and isinstance(modules[0], transformer_cls)
        and isinstance(modules[1], pooling_cls)
        and (len(modules) == 2 or (normalize_cls is not None and isinstance(modules[2], normalize_cls)))
    )
    if not shape_ok:
        chain = " -> ".join(type(m).__name__ for m in modules) or "no modules"
        raise ModelError(
            f"model {name} runs {chain}; bmsearch computes only Transformer -> mean Pooling [-> Normalize], "
            "so it would give different vectors: use a model without extra modules"
        )
    mode = pooling_mode(model)
    if mode != "mean":
        raise ModelError(f"model {name} pools with {mode!r}; bmsearch computes mean pooling only")


def _st_modules() -> Any:
    """sentence-transformers' module namespace: version 6's, or the older `models`."""
    import importlib

    try:
        return importlib.import_module("sentence_transformers.sentence_transformer.modules")
    except ImportError:
        return importlib.import_module("sentence_transformers.models")


def _module_classes() -> tuple[Any, Any]:
    """(Pooling, Transformer) of sentence-transformers."""
    modules = _st_modules()
    return modules.Pooling, modules.Transformer


def _normalize_class() -> Any:
    """sentence-transformers' Normalize module class (None if this version has none)."""
    return getattr(_st_modules(), "Normalize", None)
