"""Encoder: agreement with sentence-transformers, order, empty input, tokeniser pool, token-budget batches."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from pipeline import encode as encode_mod
from pipeline.encode import Encoder, EncoderConfig, default_tokenizer_workers, plan_batches, resolve_backend
from pipeline.errors import UsageError
from pipeline.model import resolve_model
from pipeline.tokenize_pool import TokenBatch, TokenizerPool
from tests.conftest import sample_texts

TORCH_CPU = EncoderConfig(device="cpu", backend="torch")


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> Encoder:
    return Encoder(resolve_model(str(tiny_model)), TORCH_CPU)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_matches_sentence_transformers_in_order(encoder: Encoder) -> None:
    texts = [*sample_texts(150, seed=1), "", "   ", "x"]
    ours = encoder.encode(texts)
    theirs = encoder.st.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=7)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), encoder.dim)
    assert _cos(ours, theirs).min() >= 0.9999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # Order: a permuted input gives the permuted output.
    perm = np.random.default_rng(0).permutation(len(texts))
    assert np.allclose(encoder.encode([texts[i] for i in perm]), ours[perm], atol=1e-5)


def test_rows_differ_so_order_is_observable(encoder: Encoder) -> None:
    emb = encoder.encode(sample_texts(20, seed=2))
    sims = emb @ emb.T
    assert (sims[~np.eye(20, dtype=bool)] < 0.99999).all()


def test_empty_input(encoder: Encoder) -> None:
    assert encoder.encode([]).shape == (0, encoder.dim)
    assert [e.shape for e in encoder.encode_chunks([[], ["a cat"], []])] == [
        (0, encoder.dim),
        (1, encoder.dim),
        (0, encoder.dim),
    ]
    assert list(encoder.encode_chunks([])) == []


def test_small_token_budget_and_batch_size_give_same_vectors(tiny_model: Path, encoder: Encoder) -> None:
    texts = sample_texts(40, seed=3)
    config = EncoderConfig(device="cpu", backend="torch", token_budget=128, batch_size=5)
    small = Encoder(resolve_model(str(tiny_model)), config)
    assert _cos(small.encode(texts), encoder.encode(texts)).min() >= 0.99999


def test_worker_pool_equals_in_process(tiny_model: Path, encoder: Encoder) -> None:
    texts = sample_texts(700, seed=4)
    chunks = [texts[:300], texts[300:301], [], texts[301:]]
    config = EncoderConfig(device="cpu", backend="torch", tokenizer_workers=2, prefetch_chunks=1)
    with Encoder(resolve_model(str(tiny_model)), config) as pooled:
        assert pooled.tokenizer_workers == 2
        parts = list(pooled.encode_chunks(iter(chunks)))
        assert pooled._pool is not None and pooled._pool.workers == 2
    assert [len(p) for p in parts] == [len(c) for c in chunks]
    assert np.allclose(np.concatenate(parts), encoder.encode(texts), atol=1e-6)


def test_long_input_pipelines_through_chunks(monkeypatch: pytest.MonkeyPatch, encoder: Encoder) -> None:
    texts = sample_texts(130, seed=5)
    whole = encoder.embed_tokens(encoder.tokenize(texts))
    calls: list[int] = []
    original = encoder.embed_tokens

    def spy(tokens: TokenBatch) -> np.ndarray:
        calls.append(len(tokens))
        return original(tokens)

    monkeypatch.setattr(encode_mod, "_ENCODE_PIPELINE_ROWS", 40)
    monkeypatch.setattr(encoder, "embed_tokens", spy)
    assert np.allclose(encoder.encode(texts), whole, atol=1e-6)
    assert calls == [40, 40, 40, 10]


def test_pool_ids_match_hf_tokenizer(encoder: Encoder) -> None:
    texts = [*sample_texts(50, seed=6), " ".join(["river"] * 100), ""]
    limit = 32  # below the longest text, so truncation is exercised
    hf = encoder.tokenizer(texts, truncation=True, max_length=limit, padding=False)["input_ids"]
    pool = TokenizerPool(encoder.tokenizer, limit, workers=1)
    try:
        batch = pool.submit(texts).result()
    finally:
        pool.close()
    assert batch.ids.dtype == np.int32 and batch.lengths.dtype == np.int32
    assert batch.lengths.tolist() == [len(r) for r in hf]
    assert max(batch.lengths) == limit
    offsets = batch.offsets
    assert [batch.ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(texts))] == [list(r) for r in hf]


def test_padded_layout() -> None:
    batch = TokenBatch(np.array([1, 2, 3, 4, 5, 6], np.int32), np.array([3, 1, 2], np.int32))
    ids, mask = batch.padded(np.array([2, 0]))
    assert ids.tolist() == [[5, 6, 0], [1, 2, 3]]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert ids.dtype == np.int64 and mask.dtype == np.int64


@pytest.mark.parametrize("seed", range(5))
def test_token_budget_batches_cover_every_row_once(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=int(rng.integers(1, 2000)))
    budget = int(rng.integers(1, 5000))
    max_rows = [None, 7][seed % 2]
    batches = plan_batches(lengths, budget, max_rows)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in batches:
        padded = len(b) * int(lengths[b].max())
        assert padded <= budget or len(b) == 1
        if max_rows:
            assert len(b) <= max_rows
    # Longest first: each batch's longest row is no longer than the previous batch's shortest.
    for prev, cur in itertools.pairwise(batches):
        assert lengths[cur].max() <= lengths[prev].min()


def test_backend_resolution() -> None:
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("auto", "cpu") == encode_mod.CPU_DEFAULT_BACKEND
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(UsageError):
        resolve_backend("onnx", "cuda")
    with pytest.raises(UsageError):
        resolve_backend("tensorrt", "cpu")
    assert default_tokenizer_workers("cpu", 2) == 0
    assert default_tokenizer_workers("cuda", 16) >= 2


def test_identity_names_backend(encoder: Encoder) -> None:
    identity = encoder.identity
    assert identity["backend"] == "torch"
    assert identity["pooling"] == "mean" and identity["normalized"] is True
    assert identity["dimension"] == encoder.dim == 32


def test_onnx_backend_rejects_half_precision(tiny_model: Path) -> None:
    with pytest.raises(UsageError):
        Encoder(resolve_model(str(tiny_model)), EncoderConfig(device="cpu", backend="onnx", precision="bf16"))


@pytest.mark.slow
def test_minilm_fp32_matches_sentence_transformers(minilm_path: Path, shared_data: Path) -> None:
    from pipeline.bench_encode import sts_sentences

    texts = sts_sentences(shared_data, 1500)
    encoder = Encoder(resolve_model(str(minilm_path)), TORCH_CPU)
    ours = encoder.encode(texts)
    theirs = encoder.st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert _cos(ours, theirs).min() >= 0.9999


@pytest.mark.gpu
def test_gpu_bf16_agrees_with_fp32(minilm_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from pipeline.model import load_sentence_transformer

    ref = resolve_model(str(minilm_path))
    texts = [*sample_texts(500, seed=7), "", "a much longer sentence " * 40]
    reference = load_sentence_transformer(ref, "cpu").encode(texts, normalize_embeddings=True)
    encoder = Encoder(ref, EncoderConfig(device="cuda", precision="bf16"))
    assert encoder.identity["backend"] == "torch" and encoder.precision == "bf16"
    parts = list(encoder.encode_chunks([texts[:200], texts[200:]]))
    ours = np.concatenate(parts)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert _cos(ours, reference).min() >= 0.99
    assert _cos(encoder.encode(texts), reference).min() >= 0.99


@pytest.mark.gpu
def test_gpu_fp16_and_compile_options(tiny_model: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ref = resolve_model(str(tiny_model))
    texts = sample_texts(100, seed=8)
    cpu = Encoder(ref, TORCH_CPU).encode(texts)
    gpu = Encoder(ref, EncoderConfig(device="cuda", precision="fp16", multi_gpu=False)).encode(texts)
    assert _cos(gpu, cpu).min() >= 0.99
