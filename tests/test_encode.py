"""Encoder: agreement with sentence-transformers, order, empty input, tokeniser pool, token-budget batches."""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest

from pipeline import encode as encode_mod
from pipeline.encode import (
    Encoder,
    EncoderConfig,
    Running,
    default_tokenizer_workers,
    plan_batches,
    resolve_backend,
)
from pipeline.errors import EncoderError, UsageError
from pipeline.model import resolve_model
from pipeline.tokenize_pool import TokenBatch, TokenizerPool
from tests.conftest import sample_texts

TORCH_CPU = EncoderConfig(device="cpu", backend="torch")


@pytest.fixture(scope="module")
def encoder(tiny_model: Path) -> Encoder:
    return Encoder(resolve_model(str(tiny_model)), TORCH_CPU)


def _require_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


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


# Parents that tokenise forever and print their tokeniser workers' pids once those have done some work:
# a TokenizerPool alone (starts in a second), and a whole Encoder (imports torch: slow on a small machine).
_POOL_PARENT = """
import multiprocessing, sys, types
from tokenizers import Tokenizer
from pipeline.tokenize_pool import TokenizerPool
from tests.conftest import sample_texts

tokenizer = types.SimpleNamespace(backend_tokenizer=Tokenizer.from_file(sys.argv[1] + "/tokenizer.json"))
pool = TokenizerPool(tokenizer, 128, workers=2)
texts = sample_texts(2000)
for i in range(10**9):
    pool.submit(texts).result()
    if i == 0:
        print(*[p.pid for p in multiprocessing.active_children()], flush=True)
"""
_ENCODER_PARENT = """
import multiprocessing, sys
from pipeline.encode import Encoder, EncoderConfig
from pipeline.model import resolve_model
from tests.conftest import sample_texts

config = EncoderConfig(device="cpu", backend="torch", tokenizer_workers=2)
encoder = Encoder(resolve_model(sys.argv[1]), config)
texts = sample_texts(2000)
for i, _ in enumerate(encoder.encode_chunks(iter(lambda: texts, None))):
    if i == 0:
        print(*[p.pid for p in multiprocessing.active_children()], flush=True)
"""


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def _alive(pid: int) -> bool:
    psutil = pytest.importorskip("psutil")
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize(
    "script", [_POOL_PARENT, pytest.param(_ENCODER_PARENT, marks=pytest.mark.slow)], ids=["pool", "encoder"]
)
def test_tokenizer_workers_die_with_a_killed_parent(tiny_model: Path, script: str) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tiny_model)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    workers: list[int] = []
    try:
        workers = [int(pid) for pid in _read_line(parent, timeout=120).split()]
        assert len(workers) == 2, "the parent never reported its tokeniser workers"
        parent.kill()  # SIGKILL: no atexit, no executor shutdown
        parent.wait()
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "tokeniser workers outlived their parent"
    finally:
        parent.kill()
        parent.wait()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_tokenizer_workers_outlive_the_thread_that_started_them(encoder: Encoder) -> None:
    # On Linux the kernel's parent-death signal also fires when the spawning *thread* exits.
    pool = TokenizerPool(encoder.tokenizer, 32, workers=1)
    try:
        first: list[TokenBatch] = []
        starter = threading.Thread(target=lambda: first.append(pool.submit(["a cat"]).result()))
        starter.start()
        starter.join()
        time.sleep(0.5)
        assert pool.submit(["a cat"]).result().lengths.tolist() == first[0].lengths.tolist()
    finally:
        pool.close()


def test_broken_tokenizer_pool_is_replaced_on_the_next_call(tiny_model: Path, encoder: Encoder) -> None:
    texts = sample_texts(300, seed=12)
    config = EncoderConfig(device="cpu", backend="torch", tokenizer_workers=1)
    with Encoder(resolve_model(str(tiny_model)), config) as pooled:
        list(pooled.encode_chunks([texts]))
        broken = pooled._pool
        assert broken is not None
        for process in list(broken._executor._processes.values()):  # type: ignore[attr-defined]
            process.kill()
            process.join()
        with pytest.raises(EncoderError, match="worker process died") as raised:
            list(pooled.encode_chunks([texts]))
        assert isinstance(raised.value.__cause__, BrokenProcessPool)
        again = list(pooled.encode_chunks([texts]))
        assert pooled._pool is not None and pooled._pool is not broken
    assert np.allclose(again[0], encoder.encode(texts), atol=1e-6)


def test_worker_exits_when_its_parent_pid_changes() -> None:
    # The watching thread alone (what is left where prctl is not available): a parent pid that is not ours.
    code = "import time; from pipeline.tokenize_pool import _watch_parent; _watch_parent(-1, 0.05); time.sleep(30)"
    started = time.monotonic()
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, timeout=30, capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (1, "")
    assert time.monotonic() - started < 15


def test_long_input_pipelines_through_chunks(monkeypatch: pytest.MonkeyPatch, encoder: Encoder) -> None:
    texts = sample_texts(130, seed=5)
    whole = encoder.embed_tokens(encoder.tokenize(texts))
    calls: list[int] = []
    original = encoder._launch

    def spy(tokens: TokenBatch) -> Running:
        calls.append(len(tokens))
        return original(tokens)

    monkeypatch.setattr(encode_mod, "_ENCODE_PIPELINE_ROWS", 40)
    monkeypatch.setattr(encoder, "_launch", spy)
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


def test_cut_before_tokenising_keeps_ids(encoder: Encoder) -> None:
    from pipeline.tokenize_pool import cut_length, encode_texts, fast_tokenizer_json, make_tokenizer

    spec = fast_tokenizer_json(encoder.tokenizer)
    assert spec is not None
    tok = make_tokenizer(spec, 16)
    assert cut_length(tok) == 16 * 6
    long = " ".join(sample_texts(40, seed=13))
    texts = [
        long,
        "short text",
        "river " * 3 + "\x00" * 400 + " cat dog",  # the normalizer drops the control characters: cut too short
        "x" * 500,  # no space to cut at
        long[:95],
    ]
    plain = encode_texts(tok, texts)
    cut = encode_texts(tok, texts, cut=60)
    assert cut.lengths.tolist() == plain.lengths.tolist() and cut.ids.tolist() == plain.ids.tolist()
    assert plain.lengths[0] == 16 and plain.lengths[2] == 7


def test_4d_mask_probe_on_cpu(tiny_model: Path) -> None:
    from pipeline.encode import _accepts_4d_mask

    model = Encoder(resolve_model(str(tiny_model)), TORCH_CPU).transformer
    assert isinstance(_accepts_4d_mask(model, "cpu"), bool)
    assert _accepts_4d_mask(object(), "cpu") is False


def test_take_gathers_rows_in_order() -> None:
    batch = TokenBatch(np.array([1, 2, 3, 4, 5, 6], np.int32), np.array([3, 1, 2], np.int32))
    taken = batch.take(np.array([2, 0]))
    assert taken.ids.tolist() == [5, 6, 1, 2, 3] and taken.lengths.tolist() == [2, 3]
    assert len(batch.take(np.array([], dtype=np.int64))) == 0


def test_padded_layout() -> None:
    batch = TokenBatch(np.array([1, 2, 3, 4, 5, 6], np.int32), np.array([3, 1, 2], np.int32))
    ids, mask = batch.padded(np.array([2, 0]))
    assert ids.tolist() == [[5, 6, 0], [1, 2, 3]]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    ids, mask = batch.padded(np.array([1, 2]), multiple=4)
    assert ids.tolist() == [[4, 0, 0, 0], [5, 6, 0, 0]] and mask.sum(axis=1).tolist() == [1, 2]
    ids, _ = batch.padded(np.array([0]), multiple=8, cap=5)
    assert ids.tolist() == [[1, 2, 3, 0, 0]]


def test_grouped_chunks_come_back_per_chunk(tiny_model: Path, encoder: Encoder) -> None:
    texts = sample_texts(300, seed=11)
    chunks = [texts[:7], [], texts[7:150], texts[150:151], texts[151:]]
    config = EncoderConfig(device="cpu", backend="torch", group_tokens=10**9, prefetch_chunks=1, token_budget=256)
    grouped = Encoder(resolve_model(str(tiny_model)), config)
    launches: list[int] = []
    original = grouped._runner.launch

    def spy(tokens: TokenBatch, batches: list[np.ndarray], dim: int) -> Running:
        launches.append(len(tokens))
        return original(tokens, batches, dim)

    grouped._runner.launch = spy  # type: ignore[method-assign]
    parts = list(grouped.encode_chunks(iter(chunks)))
    # Batched by width across chunks (group_tokens is never reached): one launch at the end of the stream,
    # split back into its chunks.
    assert launches == [300]
    assert [len(p) for p in parts] == [len(c) for c in chunks]
    assert _cos(np.concatenate(parts), encoder.encode(texts)).min() >= 0.99999
    assert grouped.stats.rows == 300 and grouped.stats.tokens == int(grouped.tokenize(texts).lengths.sum())
    assert grouped.stats.tokens <= grouped.stats.padded_tokens <= grouped.stats.tokens + 7 * 300


def test_launch_ahead_path_keeps_order_with_launches_still_running(tiny_model: Path, encoder: Encoder) -> None:
    # The GPU path on CPU: launches report "not done" for a while, so the host queues more, collects
    # finished ones without blocking and blocks only past two in flight; chunks still come back whole.
    texts = sample_texts(900, seed=14)
    chunks = [texts[i : i + 150] for i in range(0, 900, 150)] + [[]]
    config = EncoderConfig(device="cpu", backend="torch", token_budget=256, group_tokens=1024, prefetch_chunks=1)
    ahead = Encoder(resolve_model(str(tiny_model)), config)
    ahead._launch_ahead = True
    original = ahead._runner.launch
    polls: list[int] = []

    def slow(tokens: TokenBatch, batches: list[np.ndarray], dim: int) -> Running:
        running = original(tokens, batches, dim)
        left = [2]  # "still running" for the first two polls

        def done() -> bool:
            polls.append(left[0])
            left[0] -= 1
            return left[0] < 0

        return Running(running.wait, done)

    ahead._runner.launch = slow  # type: ignore[method-assign]
    parts = list(ahead.encode_chunks(iter(chunks)))
    assert [len(p) for p in parts] == [len(c) for c in chunks]
    assert _cos(np.concatenate(parts), encoder.encode(texts)).min() >= 0.99999
    assert 2 in polls and ahead.stats.rows == 900


def test_data_parallel_replicas_keep_order(tiny_model: Path, encoder: Encoder) -> None:
    texts = sample_texts(200, seed=12)
    config = EncoderConfig(device="cpu", backend="torch", devices=("cpu", "cpu"), token_budget=256)
    parallel = Encoder(resolve_model(str(tiny_model)), config)
    assert parallel.devices == ["cpu", "cpu"]
    assert _cos(parallel.encode(texts), encoder.encode(texts)).min() >= 0.99999


def test_replica_on_another_kind_of_device_is_refused(tiny_model: Path) -> None:
    with pytest.raises(UsageError, match="does not match"):
        Encoder(resolve_model(str(tiny_model)), EncoderConfig(device="cpu", backend="torch", devices=("cuda:0",)))


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
    _require_cuda()
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
    _require_cuda()
    ref = resolve_model(str(tiny_model))
    texts = sample_texts(100, seed=8)
    cpu = Encoder(ref, TORCH_CPU).encode(texts)
    gpu = Encoder(ref, EncoderConfig(device="cuda", precision="fp16", multi_gpu=False)).encode(texts)
    assert _cos(gpu, cpu).min() >= 0.99
    compiled = Encoder(ref, EncoderConfig(device="cuda", torch_compile=True))
    chunks = [texts[:30], texts[30:31], texts[31:]]
    assert _cos(np.concatenate(list(compiled.encode_chunks(chunks))), cpu).min() >= 0.99


@pytest.mark.gpu
def test_gpu_pipelined_groups_and_replicas_keep_order(tiny_model: Path) -> None:
    _require_cuda()
    ref = resolve_model(str(tiny_model))
    texts = sample_texts(3000, seed=9)
    cpu = Encoder(ref, TORCH_CPU).encode(texts)
    chunks = [texts[i : i + 250] for i in range(0, len(texts), 250)]
    # Small groups and budgets: many launches in flight, each waited for one group later.
    config = EncoderConfig(device="cuda", token_budget=512, group_tokens=2048, tokenizer_workers=2)
    pipelined = Encoder(ref, config)
    parts = list(pipelined.encode_chunks(iter(chunks)))
    assert [len(p) for p in parts] == [len(c) for c in chunks]
    assert _cos(np.concatenate(parts), cpu).min() >= 0.99
    # Two replicas on one GPU exercise the data-parallel path that several GPUs take.
    replicas = Encoder(ref, EncoderConfig(device="cuda", devices=("cuda:0", "cuda:0"), token_budget=512))
    assert replicas.devices == ["cuda:0", "cuda:0"]
    assert _cos(replicas.encode(texts), cpu).min() >= 0.99
