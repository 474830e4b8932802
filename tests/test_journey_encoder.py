"""Model loading and the encoder as an unattended job meets them: damaged or unwritable caches, bad model dirs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import onnx_backend
from pipeline.encode import Encoder, EncoderConfig
from pipeline.errors import ModelError
from pipeline.model import load_sentence_transformer, resolve_model
from tests.conftest import sample_texts

TEXTS = [*sample_texts(20, seed=5), "", "!!!", "dog " * 400]


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> np.ndarray:
    st = load_sentence_transformer(resolve_model(str(tiny_model)), "cpu")
    return np.asarray(st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True))


@pytest.fixture(scope="module")
def filled_cache(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the tiny model's fp32 and int8 exports and its int8 check."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cache = tmp_path_factory.mktemp("filled-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BMSEARCH_CACHE", str(cache))
        Encoder(resolve_model(str(tiny_model)), EncoderConfig(device="cpu", backend="onnx-int8")).close()
    return cache


def _copy_cache(filled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(filled, cache)
    monkeypatch.setenv("BMSEARCH_CACHE", str(cache))
    return cache


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b, axis=1).min())


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
@pytest.mark.parametrize("damaged", ["model-fp32.onnx", "model-int8-perchannel.onnx", "both"])
def test_damaged_cached_export_is_made_again(
    tiny_model: Path,
    filled_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reference: np.ndarray,
    damaged: str,
    backend: str,
) -> None:
    # A truncated file (disk full, copied while written) used to fail every later run with InvalidProtobuf.
    _copy_cache(filled_cache, tmp_path, monkeypatch)
    ref = resolve_model(str(tiny_model))
    folder = onnx_backend.cache_dir(ref)
    names = [onnx_backend.FP32_NAME, onnx_backend.INT8_NAME] if damaged == "both" else [damaged]
    for name in names:
        (folder / name).write_bytes((folder / name).read_bytes()[:1000])
    if damaged == "both":
        (folder / "int8-check.json").unlink()
    with Encoder(ref, EncoderConfig(device="cpu", backend=backend)) as encoder:
        got = encoder.encode(TEXTS)
    assert _min_cos(got, reference) >= (0.9999 if backend == "onnx" else 0.95)
    used = [onnx_backend.FP32_NAME] if backend == "onnx" else [onnx_backend.INT8_NAME]
    for name in set(names) & set(used):
        assert (folder / name).stat().st_size > 1000  # repaired in place for later runs


def test_unreadable_int8_check_record_is_computed_again(
    tiny_model: Path, filled_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_cache(filled_cache, tmp_path, monkeypatch)
    ref = resolve_model(str(tiny_model))
    record = onnx_backend.cache_dir(ref) / "int8-check.json"
    record.write_text('{"mean_cosine": null}')
    with Encoder(ref, EncoderConfig(device="cpu", backend="onnx-int8")) as encoder:
        assert encoder.int8_check is not None and encoder.int8_check["mean_cosine"] > 0.5
    assert '"mean_cosine": null' not in record.read_text()


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_unwritable_cache_still_encodes(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: np.ndarray, backend: str
) -> None:
    pytest.importorskip("onnxruntime")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("BMSEARCH_CACHE", str(blocker / "cache"))  # cannot be created, as on a read-only disk
    with Encoder(resolve_model(str(tiny_model)), EncoderConfig(device="cpu", backend=backend)) as encoder:
        got = encoder.encode(TEXTS)
    assert _min_cos(got, reference) >= (0.9999 if backend == "onnx" else 0.95)


def test_cache_folder_without_write_permission_is_used_read_only(
    tiny_model: Path, filled_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: np.ndarray
) -> None:
    # Only the fp32 export is there and the folder refuses writes: quantise privately, leave it untouched.
    cache = _copy_cache(filled_cache, tmp_path, monkeypatch)
    ref = resolve_model(str(tiny_model))
    folder = onnx_backend.cache_dir(ref)
    (folder / onnx_backend.INT8_NAME).unlink()
    (folder / "int8-check.json").unlink()
    real_access = onnx_backend.os.access
    monkeypatch.setattr(
        onnx_backend.os, "access", lambda p, mode: False if Path(p).is_relative_to(cache) else real_access(p, mode)
    )
    with Encoder(ref, EncoderConfig(device="cpu", backend="onnx-int8")) as encoder:
        got = encoder.encode(TEXTS)
    assert _min_cos(got, reference) >= 0.95
    assert sorted(p.name for p in folder.iterdir()) == [onnx_backend.FP32_NAME]


def test_model_directory_without_tokenizer_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    # transformers falls back to a tokenizer of special tokens alone: every text became [CLS] [UNK]... [SEP].
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model / name, bare / name)
    with pytest.raises(ModelError, match="no tokenizer vocabulary"):
        Encoder(resolve_model(str(bare)), EncoderConfig(device="cpu", backend="torch"))


def test_a_killed_quantisation_s_scratch_folder_is_swept(
    tiny_model: Path, filled_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time

    _copy_cache(filled_cache, tmp_path, monkeypatch)
    ref = resolve_model(str(tiny_model))
    folder = onnx_backend.cache_dir(ref)
    stale, live = folder / ".quantize-killed", folder / ".quantize-running"
    for scratch in (stale, live):
        scratch.mkdir()
        (scratch / onnx_backend.FP32_NAME).write_bytes(b"x" * 100)
    old = time.time() - onnx_backend.STALE_SCRATCH_S - 60
    os.utime(stale, (old, old))
    (folder / onnx_backend.INT8_NAME).unlink()  # the next int8 run quantises again
    Encoder(ref, EncoderConfig(device="cpu", backend="onnx-int8")).close()
    assert not stale.exists() and live.is_dir()  # a recent one may belong to a run still going
