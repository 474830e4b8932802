"""ONNX backends: fp32 and int8 agreement with sentence-transformers, cache location, atomic writes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from pipeline import onnx_backend
from pipeline.encode import Encoder, EncoderConfig
from pipeline.model import resolve_model
from tests.conftest import sample_texts

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bmsearch-cache")


@pytest.fixture(autouse=True)
def _cache_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BMSEARCH_CACHE", str(cache))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [*sample_texts(120, seed=11), "", "dog"]


@pytest.fixture(scope="module")
def reference(tiny_model: Path, texts: list[str]) -> np.ndarray:
    from pipeline.model import load_sentence_transformer

    st = load_sentence_transformer(resolve_model(str(tiny_model)), "cpu")
    return np.asarray(st.encode(texts, normalize_embeddings=True, convert_to_numpy=True))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_onnx_fp32_matches_sentence_transformers(
    tiny_model: Path, cache: Path, texts: list[str], reference: np.ndarray
) -> None:
    ref = resolve_model(str(tiny_model))
    encoder = Encoder(ref, EncoderConfig(device="cpu", backend="onnx"))
    assert encoder.identity["backend"] == "onnx"
    ours = encoder.encode(texts)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert _cos(ours, reference).min() >= 0.9999
    chunks = list(encoder.encode_chunks([texts[:50], texts[50:]]))
    assert np.allclose(np.concatenate(chunks), ours, atol=1e-5)
    # Cached under BMSEARCH_CACHE by the weights' hash, with no temp files left behind.
    exported = onnx_backend.cache_dir(ref) / "model-fp32.onnx"
    assert exported.is_file() and exported.is_relative_to(cache / "onnx")
    assert ref.content_hash and ref.content_hash in exported.parent.name
    assert not [p for p in exported.parent.iterdir() if ".tmp" in p.name]


def test_int8_agreement_bound(tiny_model: Path, texts: list[str], reference: np.ndarray) -> None:
    encoder = Encoder(resolve_model(str(tiny_model)), EncoderConfig(device="cpu", backend="onnx-int8"))
    assert encoder.identity["backend"] == "onnx-int8"
    assert encoder.int8_check is not None
    cos = _cos(encoder.encode(texts), reference)
    # Random tiny weights quantise worse than a trained model (MiniLM: mean 0.993); still close.
    assert cos.mean() >= 0.98
    assert cos.min() >= 0.9
    assert (onnx_backend.cache_dir(encoder.ref) / "model-int8-perchannel.onnx").is_file()


def test_cache_hit_skips_export(tiny_model: Path, monkeypatch: pytest.MonkeyPatch, texts: list[str]) -> None:
    ref = resolve_model(str(tiny_model))
    first = Encoder(ref, EncoderConfig(device="cpu", backend="onnx")).encode(texts[:10])
    import torch

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again despite a cached model")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    again = Encoder(ref, EncoderConfig(device="cpu", backend="onnx")).encode(texts[:10])
    assert np.array_equal(first, again)


def test_auto_falls_back_to_fp32_when_int8_check_fails(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, texts: list[str]
) -> None:
    monkeypatch.setattr(onnx_backend, "INT8_MIN_MEAN_COSINE", 1.01)
    monkeypatch.setattr("pipeline.encode.CPU_DEFAULT_BACKEND", "onnx-int8")
    encoder = Encoder(resolve_model(str(tiny_model)), EncoderConfig(device="cpu", backend="auto"))
    assert encoder.backend == encoder.identity["backend"] == "onnx"
    explicit = Encoder(resolve_model(str(tiny_model)), EncoderConfig(device="cpu", backend="onnx-int8"))
    assert explicit.identity["backend"] == "onnx-int8"


def test_no_spin_sessions_give_the_same_vectors(tiny_model: Path, texts: list[str]) -> None:
    ref = resolve_model(str(tiny_model))
    spinning = Encoder(ref, EncoderConfig(device="cpu", backend="onnx-int8", threads=2)).encode(texts)
    quiet = Encoder(ref, EncoderConfig(device="cpu", backend="onnx-int8", threads=2, spin=False))
    options = quiet._runner.runner.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert np.array_equal(quiet.encode(texts), spinning)


def _fresh_fp32_copy(tiny_model: Path, folder: Path) -> Path:
    """The tiny model's fp32 export, alone in a folder of its own: quantising it there is never a cache hit."""
    import shutil

    ref = resolve_model(str(tiny_model))
    Encoder(ref, EncoderConfig(device="cpu", backend="onnx"))
    folder.mkdir()
    return Path(shutil.copy(onnx_backend.cache_dir(ref) / "model-fp32.onnx", folder / "model-fp32.onnx"))


def test_quantizer_advice_stays_off_the_root_logger(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # onnxruntime logs "Please consider to run pre-processing before quantization" on the root logger,
    # which the CLI prints on stderr even with --quiet.
    fp32 = _fresh_fp32_copy(tiny_model, tmp_path / "m")
    root = logging.getLogger()
    filters, handlers = list(root.filters), list(root.handlers)
    with caplog.at_level(logging.DEBUG):
        int8 = onnx_backend.quantize_int8(resolve_model(str(tiny_model)), fp32)
    assert int8.is_file()
    assert [r.getMessage() for r in caplog.records if "onnxruntime" in r.pathname] == []
    assert (root.filters, root.handlers) == (filters, handlers)


def test_quantizer_leaves_an_unconfigured_root_logger_unconfigured(
    tiny_model: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # logging.warning() on a root logger without handlers would install a stderr handler for good.
    fp32 = _fresh_fp32_copy(tiny_model, tmp_path / "m")
    root = logging.getLogger()
    saved = list(root.handlers)
    for handler in saved:
        root.removeHandler(handler)
    try:
        onnx_backend.quantize_int8(resolve_model(str(tiny_model)), fp32)
        left = list(root.handlers)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
    assert left == []
    assert "pre-processing" not in capfd.readouterr().err


def test_quiet_quantizer_keeps_errors_and_our_own_warnings(caplog: pytest.LogCaptureFixture) -> None:
    ort_file = str(Path("site-packages") / "onnxruntime" / "quantization" / "quantize.py")

    def ort_record(level: int, msg: str) -> logging.LogRecord:
        record = logging.makeLogRecord({"name": "root", "levelno": level, "pathname": ort_file, "msg": msg})
        record.levelname = logging.getLevelName(level)
        return record

    with caplog.at_level(logging.DEBUG), onnx_backend._quiet_onnxruntime_root_logs():
        logging.getLogger().handle(ort_record(logging.WARNING, "advice"))
        logging.getLogger().handle(ort_record(logging.ERROR, "ort failed"))
        logging.getLogger("pipeline.encode").warning("ours")
        logging.getLogger().warning("ours on the root logger")
    assert [r.getMessage() for r in caplog.records] == ["ort failed", "ours", "ours on the root logger"]


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.onnx"
    with pytest.raises(RuntimeError), onnx_backend._atomic_target(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    with onnx_backend._atomic_target(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]


def test_cache_root_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BMSEARCH_CACHE", str(tmp_path))
    assert onnx_backend.cache_root() == tmp_path / "onnx"
    monkeypatch.delenv("BMSEARCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert onnx_backend.cache_root() == tmp_path / "home" / ".cache" / "bmsearch" / "onnx"


@pytest.mark.slow
def test_minilm_int8_agreement(minilm_path: Path, shared_data: Path) -> None:
    from pipeline.bench_encode import sts_sentences
    from pipeline.model import load_sentence_transformer

    texts = sts_sentences(shared_data, 1000)
    ref = resolve_model(str(minilm_path))
    reference = load_sentence_transformer(ref, "cpu").encode(texts, normalize_embeddings=True)
    fp32 = Encoder(ref, EncoderConfig(device="cpu", backend="onnx")).encode(texts)
    assert _cos(fp32, reference).min() >= 0.9999
    int8 = Encoder(ref, EncoderConfig(device="cpu", backend="onnx-int8")).encode(texts)
    assert _cos(int8, reference).mean() >= 0.99


def test_two_processes_quantising_one_model_at_once(tiny_model: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "BMSEARCH_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    code = (
        "import sys; from pipeline.model import resolve_model; from pipeline.encode import Encoder, EncoderConfig; "
        "e = Encoder(resolve_model(sys.argv[1]), EncoderConfig(backend='onnx-int8')); print(e.encode(['a b']).shape)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tiny_model)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-500:]
        assert out.decode().strip() == "(1, 32)"
