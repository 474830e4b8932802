"""Model loading: module lists the encoder can compute, partial hub caches, weight downloads, proxies."""

from __future__ import annotations

import fnmatch
import importlib
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import model as model_mod
from pipeline.encode import Encoder, EncoderConfig
from pipeline.errors import ModelError
from pipeline.model import check_encoder_modules, resolve_model

TORCH_CPU = EncoderConfig(device="cpu", backend="torch")
REPO = "someorg/some-bert"
COMMIT = "0123abcd"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _st_modules() -> Any:
    try:
        return importlib.import_module("sentence_transformers.sentence_transformer.modules")
    except ImportError:
        return importlib.import_module("sentence_transformers.models")


def _st_model(tiny_model: Path, *extra: Any, pooling: str = "mean") -> Any:
    from sentence_transformers import SentenceTransformer

    mods = _st_modules()
    transformer = mods.Transformer(str(tiny_model), max_seq_length=64)
    return SentenceTransformer(modules=[transformer, mods.Pooling(32, pooling_mode=pooling), *extra], device="cpu")


# --- modules after pooling -------------------------------------------------------------------------------


def test_dense_after_pooling_is_refused_not_skipped(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "st-dense"
    _st_model(tiny_model, _st_modules().Dense(32, 32)).save(str(folder))
    with pytest.raises(ModelError, match=r"runs Transformer -> Pooling -> Dense; bmsearch computes only") as info:
        Encoder(resolve_model(str(folder)), TORCH_CPU)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "extra",
    [
        lambda m: [m.Dense(32, 16)],  # a size change used to end in a raw numpy broadcast error
        lambda m: [m.LayerNorm(32)],
        lambda m: [m.Normalize(), m.Dense(32, 32)],
        lambda m: [m.Normalize(), m.Normalize()],
    ],
)
def test_other_module_lists_are_refused(tiny_model: Path, extra: Any) -> None:
    with pytest.raises(ModelError, match="bmsearch computes only Transformer -> mean Pooling"):
        check_encoder_modules(_st_model(tiny_model, *extra(_st_modules())), "m")


def test_cls_pooling_is_refused(tiny_model: Path) -> None:
    with pytest.raises(ModelError, match="pools with 'cls'"):
        check_encoder_modules(_st_model(tiny_model, pooling="cls"), "m")


def test_transformer_mean_pooling_normalize_is_accepted(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "st-normalize"
    _st_model(tiny_model, _st_modules().Normalize()).save(str(folder))
    encoder = Encoder(resolve_model(str(folder)), TORCH_CPU)
    texts = ["the cat and the dog", "river mountain city"]
    theirs = encoder.st.encode(texts, convert_to_numpy=True)
    assert np.allclose(encoder.encode(texts), theirs, atol=1e-5)


def test_plain_bert_directory_is_accepted(tiny_model: Path) -> None:
    encoder = Encoder(resolve_model(str(tiny_model)), TORCH_CPU)
    assert encoder.pooling == "mean" and len(list(encoder.st)) == 2


# --- hub cache and downloads ----------------------------------------------------------------------------


@pytest.fixture
def hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache that huggingface_hub's own local lookup reads."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _snapshot(cache: Path, files: dict[str, bytes]) -> Path:
    """Put a snapshot in the cache as huggingface_hub lays it out (refs/main -> snapshots/<commit>)."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


PARTIAL = {"config.json": b"{}", "tokenizer.json": b"{}", "tokenizer_config.json": b"{}"}


def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


class FakeHub:
    """snapshot_download over a repo held in memory: the local lookup is huggingface_hub's real one."""

    def __init__(self, cache: Path, repo_files: dict[str, bytes]) -> None:
        import huggingface_hub

        self.real = huggingface_hub.snapshot_download
        self.cache = cache
        self.repo_files = repo_files
        self.downloads: list[list[str]] = []
        self.fetched: list[str] = []

    def __call__(self, repo_id: str, **kwargs: Any) -> str:
        if kwargs.get("local_files_only"):
            return str(self.real(repo_id, **kwargs))
        patterns = list(kwargs["allow_patterns"])
        self.downloads.append(patterns)
        wanted = {n: d for n, d in self.repo_files.items() if any(fnmatch.fnmatch(n, p) for p in patterns)}
        self.fetched += sorted(wanted)
        return str(_snapshot(self.cache, wanted))


@pytest.fixture
def no_probe(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    probes: list[str] = []

    def reachable(endpoint: str) -> bool:
        probes.append(endpoint)
        return True

    monkeypatch.setattr(model_mod, "_reachable", reachable)
    return probes


def test_complete_cached_snapshot_needs_no_network(hub_cache: Path, no_probe: list[str]) -> None:
    folder = _snapshot(hub_cache, {**PARTIAL, "model.safetensors": b"w"})
    ref = resolve_model(REPO)
    assert ref.path == str(folder) and ref.revision == COMMIT and ref.source == "hub"
    assert no_probe == []


def test_partial_cache_offline_says_incomplete(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _snapshot(hub_cache, PARTIAL)  # what AutoTokenizer.from_pretrained leaves behind
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(model_mod, "_reachable", lambda endpoint: pytest.fail("probed the hub while offline"))
    with pytest.raises(ModelError, match=f"the cached copy of {REPO} is incomplete \\(missing weights") as info:
        resolve_model(REPO)
    assert "HF_HUB_OFFLINE is set" in str(info.value) and "--model PATH" in str(info.value)


def test_partial_cache_and_unreachable_hub_says_incomplete(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _snapshot(hub_cache, PARTIAL)
    _online(monkeypatch)
    monkeypatch.setattr(model_mod, "_reachable", lambda endpoint: False)
    with pytest.raises(ModelError, match=f"cached copy of {REPO} is incomplete.*cannot be reached"):
        resolve_model(REPO)


def test_partial_cache_is_completed_online(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch, no_probe: list[str]
) -> None:
    _snapshot(hub_cache, PARTIAL)
    _online(monkeypatch)
    hub = FakeHub(hub_cache, {**PARTIAL, "model.safetensors": b"w", "vocab.txt": b"a"})
    monkeypatch.setattr("huggingface_hub.snapshot_download", hub)
    ref = resolve_model(REPO)
    assert (Path(ref.path) / "model.safetensors").exists()
    assert len(hub.downloads) == 1 and no_probe


def test_shard_missing_from_its_index_is_incomplete(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = b'{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}'
    _snapshot(hub_cache, {**PARTIAL, "model.safetensors.index.json": index, "model-00001-of-00002.safetensors": b"w"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="is incomplete"):
        resolve_model(REPO)


@pytest.mark.parametrize(
    ("weights", "fetched_weights", "downloads"),
    [
        (["model.safetensors"], ["model.safetensors"], 1),
        (["model.safetensors", "pytorch_model.bin"], ["model.safetensors"], 1),  # never both
        (["pytorch_model.bin"], ["pytorch_model.bin"], 2),  # older repos ship only the pickle
    ],
)
def test_download_prefers_safetensors_and_falls_back_to_pytorch_bin(
    hub_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_probe: list[str],
    weights: list[str],
    fetched_weights: list[str],
    downloads: int,
) -> None:
    _online(monkeypatch)
    hub = FakeHub(hub_cache, {**PARTIAL, "vocab.txt": b"a", **{name: b"w" for name in weights}})
    monkeypatch.setattr("huggingface_hub.snapshot_download", hub)
    ref = resolve_model(REPO)
    assert [n for n in hub.fetched if n not in (*PARTIAL, "vocab.txt")] == fetched_weights
    assert len(hub.downloads) == downloads
    assert all((Path(ref.path) / name).exists() for name in fetched_weights)


def test_repo_without_weights_is_a_model_error(
    hub_cache: Path, monkeypatch: pytest.MonkeyPatch, no_probe: list[str]
) -> None:
    _online(monkeypatch)
    monkeypatch.setattr("huggingface_hub.snapshot_download", FakeHub(hub_cache, dict(PARTIAL)))
    with pytest.raises(ModelError, match=f"could not download the weights of model {REPO}"):
        resolve_model(REPO)


# --- hub reachability behind a proxy ----------------------------------------------------------------------


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """No proxy settings, and a socket layer that records each connection attempt and refuses it."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    attempts: list[tuple[str, int]] = []

    def refuse(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append(address)
        raise OSError("no network in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_probe_without_proxy_fails_fast(probes: list[tuple[str, int]]) -> None:
    assert not model_mod._reachable("https://huggingface.co")
    assert probes == [("huggingface.co", 443)]


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_probe_is_skipped_behind_a_proxy(
    probes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "http://127.0.0.1:9")
    assert model_mod._reachable("https://huggingface.co")
    assert probes == []


def test_no_proxy_and_other_scheme_still_probe(probes: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # applies to http:// only
    assert not model_mod._reachable("https://huggingface.co")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "localhost,huggingface.co")
    assert not model_mod._reachable("https://huggingface.co")
    assert len(probes) == 2


def test_an_uncached_revision_is_named(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _snapshot(hub_cache, {**PARTIAL, "model.safetensors": b"w"})  # another revision is cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=f"model {REPO} at revision v9 is not in the Hugging Face cache"):
        resolve_model(REPO, revision="v9")
