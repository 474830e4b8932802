"""Text to L2-normalised mean-pooled embeddings: background tokenising, token-budget batches, torch/ONNX."""

from __future__ import annotations

import contextlib
import copy
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.batching import BucketStream, ChunkResults, Launch, padded_tokens, plan_batches
from pipeline.errors import EncoderError, UsageError
from pipeline.model import ModelRef, check_encoder_modules, load_sentence_transformer, pooling_mode
from pipeline.onnx_backend import available_cores
from pipeline.tokenize_pool import PendingTokens, TokenBatch, TokenizerPool

if TYPE_CHECKING:
    import torch

DEFAULT_TOKEN_BUDGET_CPU = 2_048  # torch on CPU; measured in docs/benchmarks.md ("torch on CPU: token budget")
DEFAULT_TOKEN_BUDGET_ONNX = 4_096
DEFAULT_TOKEN_BUDGET_GPU = 131_072
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
# What backend="auto" picks on CPU; chosen from the measurements in docs/benchmarks.md.
CPU_DEFAULT_BACKEND = "onnx-int8"
# encode() pipelines inputs longer than this through encode_chunks so tokenising overlaps the forward pass.
_ENCODE_PIPELINE_ROWS = 4_096
# Launches queued on a GPU at once: the device works through one while the host prepares the next.
_MAX_INFLIGHT = 2
# Batching across chunks takes tokenised rows in pieces of at most this many, so a launch need not wait
# for a whole chunk.
_STREAM_PIECE_ROWS = 1_024


@dataclass(frozen=True)
class EncoderConfig:
    """How to run the encoder; None and "auto" mean an automatic choice for the device."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_seq_length: int | None = None  # None: the model's own
    batch_size: int | None = None  # most rows in one forward pass
    token_budget: int | None = None  # most padded tokens in one forward pass
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on GPU, fp16 without bf16, fp32 on CPU)
    backend: str = "auto"  # auto | torch | onnx | onnx-int8 (auto: torch on GPU, CPU_DEFAULT_BACKEND on CPU)
    tokenizer_workers: int | None = None  # processes that tokenise; 0: one background thread; None: auto
    torch_compile: bool | None = None  # torch.compile the model (torch backend); None: off
    multi_gpu: bool | None = None  # one replica per visible GPU; None: on when device is auto/cuda
    devices: tuple[str, ...] | None = None  # explicit data-parallel replicas, e.g. ("cuda:0", "cuda:1")
    prefetch_chunks: int = 2  # chunks tokenised ahead of the forward pass in encode_chunks
    group_tokens: int | None = None  # >1: encode_chunks batches across chunks, launching this many tokens; None: auto
    threads: int | None = None  # CPU threads for the forward pass; None: cores not used by tokeniser workers
    spin: bool = True  # ONNX Runtime's idle threads spin between calls: fastest for batch jobs, not for a server


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


def resolve_precision(precision: str, device: str, backend: str = "torch") -> str:
    import torch

    if precision == "auto":
        if not device.startswith("cuda"):
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    if backend.startswith("onnx") and precision != "fp32":
        raise UsageError(f"the {backend} backend computes in fp32 (int8 weights for onnx-int8)")
    return precision


def resolve_backend(backend: str, device: str) -> str:
    """The concrete backend; onnx-int8 from "auto" may still fall back to onnx (see Encoder)."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    on_gpu = device.startswith("cuda")
    if backend == "auto":
        return "torch" if on_gpu or not _onnxruntime_installed() else CPU_DEFAULT_BACKEND
    if backend.startswith("onnx"):
        if on_gpu:
            raise UsageError(f"the {backend} backend runs on CPU only; use --device cpu or --backend torch")
        if not _onnxruntime_installed():
            raise UsageError(f"the {backend} backend needs onnxruntime and onnx: pip install 'bmsearch[cpu]'")
    return backend


def default_tokenizer_workers(device: str, cores: int) -> int:
    """Tokeniser processes: on GPU enough to keep it fed; on CPU the forward pass wants the cores."""
    if device.startswith("cuda"):
        return max(1, cores - 2)  # measured on 16 cores: tokenising, not the GPU, sets the pace
    return 0 if cores < 8 else cores // 8


@dataclass(frozen=True)
class Running:
    """A launched set of forward passes: wait() returns their embeddings, done() says if that would not block."""

    wait: Callable[[], np.ndarray]
    done: Callable[[], bool] = lambda: True


@dataclass
class EncoderStats:
    """What the encoder has embedded: rows, their tokens, and the tokens its padded batches computed."""

    rows: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    # a server's batch workers launch from several threads at once
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, rows: int, tokens: int, padded_tokens: int, batches: int) -> None:
        with self._lock:
            self.rows += rows
            self.tokens += tokens
            self.padded_tokens += padded_tokens
            self.batches += batches

    @property
    def padding(self) -> float:
        """Computed tokens per real token (1.0: no padding)."""
        return self.padded_tokens / self.tokens if self.tokens else 1.0


class Encoder:
    """Encodes texts with a sentence-transformers model's weights, mean pooling and L2 normalisation.

    Tokenises without padding (in the background for encode_chunks), batches rows of similar length
    (length-sorted per chunk on CPU, width buckets across chunks on a GPU), pads each token-budget batch
    only to its own longest row and pools inside the model's runtime; results come back in input order.
    """

    def __init__(self, ref: ModelRef, config: EncoderConfig | None = None) -> None:
        self.ref = ref
        self.config = config or EncoderConfig()
        self.device = resolve_device(self.config.device)
        self.backend = resolve_backend(self.config.backend, self.device)
        self.precision = resolve_precision(self.config.precision, self.device, self.backend)
        self.st = load_sentence_transformer(ref, self.device, self.config.max_seq_length)
        check_encoder_modules(self.st, ref.name)
        self.pooling = pooling_mode(self.st)
        positions = getattr(getattr(self.st[0].auto_model, "config", None), "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0 and (self.st.max_seq_length or positions + 1) > positions:
            # A plain model directory gets a 512 default that may exceed what its position table holds.
            self.st.max_seq_length = positions
        self.max_seq_length = int(self.st.max_seq_length or positions or 512)
        self.tokenizer = self.st.tokenizer
        # sentence-transformers 6 renamed the method; the old name warns.
        st = self.st
        get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 0)
        self.transformer = self.st[0].auto_model
        cores = available_cores()
        workers = self.config.tokenizer_workers
        self.tokenizer_workers = default_tokenizer_workers(self.device, cores) if workers is None else workers
        self.threads = self.config.threads or max(1, cores - self.tokenizer_workers)
        self.batch_size = self.config.batch_size
        self._pool: TokenizerPool | None = None
        self._pool_lock = threading.Lock()
        self._local = TokenizerPool(self.tokenizer, self.max_seq_length, workers=0)
        self.int8_check: dict[str, float] | None = None
        self.stats = EncoderStats()
        self._runner: _TorchRunner | _OnnxModel
        on_gpu = self.device.startswith("cuda")
        if self.backend == "torch":
            self._runner = _TorchRunner(self.transformer, self.device, self.precision, self.config)
            self.devices = [dev for dev, _ in self._runner.replicas]
            default_budget = DEFAULT_TOKEN_BUDGET_GPU if on_gpu else DEFAULT_TOKEN_BUDGET_CPU
        else:
            self._runner = self._onnx_runner()
            self.devices = ["cpu"]
            default_budget = DEFAULT_TOKEN_BUDGET_ONNX
        self.token_budget = self.config.token_budget or default_budget
        # A GPU wants several full batches per launch; on CPU a chunk is plenty to keep the cores busy.
        self.group_tokens = self.config.group_tokens or (4 * self.token_budget if on_gpu else 1)
        self._launch_ahead = on_gpu and self.backend == "torch"

    @property
    def identity(self) -> dict[str, Any]:
        """What must match between an index and the encoder that queries it."""
        return {
            "name": self.ref.name,
            "source": self.ref.source,
            "path": self.ref.path,
            "revision": self.ref.revision,
            "content_hash": self.ref.content_hash,
            "pooling": self.pooling,
            "dimension": self.dim,
            "normalized": True,
            "max_seq_length": self.max_seq_length,
            "backend": self.backend,
            "precision": self.precision,
        }

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids of texts (truncated to max_seq_length, special tokens included), unpadded."""
        return self._local.tokenize(texts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of texts, float32 (n, dim), unit length, in input order."""
        if len(texts) > 2 * _ENCODE_PIPELINE_ROWS:
            step = _ENCODE_PIPELINE_ROWS
            parts = self.encode_chunks(texts[i : i + step] for i in range(0, len(texts), step))
            return np.concatenate(list(parts))
        return self.embed_tokens(self.tokenize(texts))

    def encode_chunks(self, chunks: Iterable[Sequence[str]]) -> Iterator[np.ndarray]:
        """One embedding array per chunk of texts, in order.

        Tokenises up to prefetch_chunks ahead. On CPU each chunk is one launch of length-sorted batches.
        Where launches are grouped (group_tokens > 1, the GPU default), rows are batched by width across
        chunks (`BucketStream`), a launch goes out once about group_tokens of full batches are ready, and
        on a GPU the next launch is queued before the previous one is waited for, so the device is not
        idle while the host collects results.
        """
        return self._encode_with_pool(chunks, self._encode_streamed if self.group_tokens > 1 else self._encode_each)

    def _encode_with_pool(
        self,
        chunks: Iterable[Sequence[str]],
        encode: Callable[[TokenizerPool, Iterable[Sequence[str]]], Iterator[np.ndarray]],
    ) -> Iterator[np.ndarray]:
        pool = self._tokenizer_pool()
        try:
            yield from encode(pool, chunks)
        except BrokenProcessPool as exc:
            # A worker died (killed, out of memory): that pool refuses all further work, so the next
            # call must start a fresh one.
            self._drop_pool(pool)
            raise EncoderError(
                "a tokenizer worker process died (killed, or out of memory?); run the command again to resume"
            ) from exc

    def _encode_each(self, pool: TokenizerPool, chunks: Iterable[Sequence[str]]) -> Iterator[np.ndarray]:
        submitted: deque[PendingTokens] = deque()
        lookahead = max(1, self.config.prefetch_chunks)
        for chunk in chunks:
            submitted.append(pool.submit(chunk))
            while len(submitted) > lookahead:
                yield self._launch(submitted.popleft().result()).wait()
        while submitted:
            yield self._launch(submitted.popleft().result()).wait()

    def _encode_streamed(self, pool: TokenizerPool, chunks: Iterable[Sequence[str]]) -> Iterator[np.ndarray]:
        submitted: deque[tuple[int, PendingTokens]] = deque()
        stream = BucketStream(self.token_budget, self.batch_size)
        results = ChunkResults(self.dim)
        inflight: deque[tuple[Launch, Running]] = deque()
        chunks_seen = tokens_seen = 0  # taken from the tokenisers so far

        def lookahead() -> int:
            """Chunks to keep tokenising: the configured count, or about two launches' worth of tokens
            when more, so the tokenisers have work while this thread waits for the device."""
            if not chunks_seen:
                return max(1, self.config.prefetch_chunks)
            per_chunk = max(1, tokens_seen // chunks_seen)
            return max(1, self.config.prefetch_chunks, -(-2 * self.group_tokens // per_chunk))

        def harvest(block: bool) -> Iterator[np.ndarray]:
            """Fill in the launches that have finished (with block, at least the oldest), in order."""
            while inflight and (block or inflight[0][1].done()):
                unit, running = inflight.popleft()
                results.fill(unit.parts, running.wait())
                block = False
            yield from results.completed()

        def launch(flush: bool, fill: int = 0) -> Iterator[np.ndarray]:
            unit = stream.take(flush, fill)
            if unit is not None:
                self._count(unit.tokens.lengths, unit.batches)
                inflight.append((unit, self._runner.launch(unit.tokens, unit.batches, self.dim)))
            while len(inflight) > (_MAX_INFLIGHT if self._launch_ahead else 0):
                yield from harvest(block=True)

        def collect(keep: Callable[[], int]) -> Iterator[np.ndarray]:
            nonlocal chunks_seen, tokens_seen
            while len(submitted) > keep():
                rows, pending = submitted.popleft()
                chunk, offset = results.open(rows), 0
                chunks_seen += 1
                for tokens in pending.pieces():
                    stream.add(tokens, chunk, offset)
                    offset += len(tokens)
                    tokens_seen += len(tokens.ids)
                    yield from harvest(block=False)
                    if stream.ready_tokens >= self.group_tokens or stream.aged():
                        yield from launch(flush=False)
                    elif self._launch_ahead and len(inflight) < _MAX_INFLIGHT:
                        # Keep the device's queue from running dry: a group's worth, partial buckets included.
                        yield from launch(flush=False, fill=self.group_tokens)

        for chunk in chunks:
            submitted.append((len(chunk), pool.submit(chunk, _STREAM_PIECE_ROWS)))
            yield from collect(lookahead)
        yield from collect(lambda: 0)
        yield from launch(flush=True)
        while inflight:
            yield from harvest(block=True)
        yield from results.completed()

    def embed_tokens(self, tokens: TokenBatch) -> np.ndarray:
        """Embeddings of already tokenised rows, in their order."""
        return self._launch(tokens).wait()

    def _launch(self, tokens: TokenBatch) -> Running:
        """Start embedding tokens; the result's wait() returns the embeddings (rows in tokens' order)."""
        if not len(tokens):
            empty = np.empty((0, self.dim), dtype=np.float32)
            return Running(lambda: empty)
        batches = plan_batches(tokens.lengths, self.token_budget, self.batch_size)
        self._count(tokens.lengths, batches)
        return self._runner.launch(tokens, batches, self.dim)

    def _count(self, lengths: np.ndarray, batches: list[np.ndarray]) -> None:
        padded = padded_tokens(lengths, batches, self._runner.pad_multiple)
        self.stats.add(len(lengths), int(lengths.sum()), padded, len(batches))

    def close(self) -> None:
        """Stop the tokeniser workers (they restart on the next encode_chunks)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tokenizer_pool(self) -> TokenizerPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = TokenizerPool(self.tokenizer, self.max_seq_length, self.tokenizer_workers)
            return self._pool

    def _drop_pool(self, pool: TokenizerPool) -> None:
        """Forget a pool that cannot work any more (unless another thread replaced it already) and stop it."""
        with self._pool_lock:
            if self._pool is pool:
                self._pool = None
        pool.close()

    def _onnx_runner(self) -> _OnnxModel:
        from pipeline.onnx_backend import (
            INT8_MIN_MEAN_COSINE,
            INT8_NAME,
            OnnxRunner,
            cached_int8_check,
            export_fp32,
            int8_agreement,
            load_cached,
            quantize_int8,
        )

        threads, spin = self.threads, self.config.spin
        fp32_path = export_fp32(self.ref, self.transformer)
        fp32: OnnxRunner | None = None

        def fp32_runner() -> OnnxRunner:
            nonlocal fp32
            if fp32 is None:
                fp32 = load_cached(
                    fp32_path, lambda: export_fp32(self.ref, self.transformer, reuse=False), threads, spin
                )
            return fp32

        if self.backend == "onnx":
            return _OnnxModel(fp32_runner())

        def make_int8(reuse: bool) -> Path:
            cached = fp32_path.with_name(INT8_NAME)
            if reuse and cached.exists():
                return cached
            # quantise from an export that loads: the cached one may be damaged too
            return quantize_int8(self.ref, fp32_runner().path, reuse=False)

        int8 = load_cached(make_int8(reuse=True), lambda: make_int8(reuse=False), threads, spin)

        def check() -> dict[str, float]:
            from pipeline.onnx_backend import CALIBRATION_TEXTS

            feeds = self.tokenize(CALIBRATION_TEXTS).padded(np.arange(len(CALIBRATION_TEXTS)))
            return int8_agreement(fp32_runner(), int8, feeds)

        self.int8_check = cached_int8_check(fp32_path, check)
        if self.config.backend == "auto" and self.int8_check["mean_cosine"] < INT8_MIN_MEAN_COSINE:
            # This model quantises badly; the automatic choice must not cost accuracy.
            self.backend = "onnx"
            return _OnnxModel(fp32_runner())
        return _OnnxModel(int8)


class _OnnxModel:
    pad_multiple = 1

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def launch(self, tokens: TokenBatch, batches: list[np.ndarray], dim: int) -> Running:
        out = np.empty((len(tokens), dim), dtype=np.float32)
        offsets = tokens.offsets
        for batch in batches:
            out[batch] = self.runner.run(*tokens.padded(batch, offsets))
        return Running(lambda: out)


class _TorchRunner:
    """Forward passes on one device, or data-parallel over several (one launching thread per replica).

    On a GPU, inputs go through pinned memory with non-blocking copies, pooling runs on the device and
    one non-blocking device-to-host copy per launch is waited for only when the result is asked for.
    """

    def __init__(self, transformer: Any, device: str, precision: str, config: EncoderConfig) -> None:
        import torch

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        on_gpu = device.startswith("cuda")
        if on_gpu and hasattr(transformer, "set_attn_implementation"):
            # An architecture without an SDPA kernel keeps eager attention, which still works.
            with contextlib.suppress(ValueError, ImportError):
                transformer.set_attn_implementation("sdpa")
        if config.threads and not on_gpu:
            torch.set_num_threads(config.threads)
        devices = list(config.devices or [device])
        multi = config.multi_gpu if config.multi_gpu is not None else config.device in ("auto", "cuda")
        if not config.devices and on_gpu and multi and torch.cuda.device_count() > 1:
            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        for dev in devices:
            if dev.startswith("cuda") != on_gpu:
                raise UsageError(f"replica device {dev!r} does not match --device {device!r}")
        transformer.to(device=devices[0], dtype=dtype).eval()
        positions = getattr(getattr(transformer, "config", None), "max_position_embeddings", None)
        self.max_width = positions if isinstance(positions, int) and positions > 0 else None
        self.pad_multiple = 8 if on_gpu else 1
        # transformers turns a 2D mask into SDPA's form with a data-dependent `if mask.all()`, a device sync
        # per forward pass that stalls the host (and the tokeniser results it should be collecting).
        # A ready-made 4D mask skips it; used only where this model gives the same vectors with it.
        self.mask_4d = on_gpu and _accepts_4d_mask(transformer, devices[0])
        self.replicas: list[tuple[str, Any]] = []
        for i, dev in enumerate(devices):
            model = transformer if i == 0 else copy.deepcopy(transformer).to(dev)
            if config.torch_compile:
                model = torch.compile(model, dynamic=True)
            self.replicas.append((dev, model))

    def launch(self, tokens: TokenBatch, batches: list[np.ndarray], dim: int) -> Running:
        if len(self.replicas) == 1:
            parts = [self._launch_on(self.replicas[0], tokens, batches)]
        else:
            parts = self._launch_parallel(tokens, batches)

        def wait() -> np.ndarray:
            out = np.empty((len(tokens), dim), dtype=np.float32)
            for rows, running in parts:
                if len(rows):
                    out[rows] = running.wait()
            return out

        return Running(wait, lambda: all(running.done() for _, running in parts))

    def _launch_parallel(self, tokens: TokenBatch, batches: list[np.ndarray]) -> list[tuple[np.ndarray, Running]]:
        n = len(self.replicas)
        parts: list[Any] = [None] * n
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                parts[k] = self._launch_on(self.replicas[k], tokens, batches[k::n])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return parts

    def _launch_on(
        self, replica: tuple[str, Any], tokens: TokenBatch, batches: list[np.ndarray]
    ) -> tuple[np.ndarray, Running]:
        """Queue the forward passes of batches on one replica: (rows, their vectors when ready)."""
        import torch

        device, model = replica
        rows = np.concatenate(batches) if batches else np.empty(0, dtype=np.int64)
        if not batches:
            return rows, Running(lambda: np.empty((0, 0), dtype=np.float32))
        on_gpu = device.startswith("cuda")
        offsets = tokens.offsets
        pooled: list[torch.Tensor] = []
        with torch.inference_mode():
            for batch in batches:
                padded = tokens.padded(batch, offsets, self.pad_multiple, self.max_width)
                ids, mask = (torch.from_numpy(a) for a in padded)
                if on_gpu:
                    ids = ids.pin_memory().to(device, non_blocking=True)
                    mask = mask.pin_memory().to(device, non_blocking=True)
                hidden = model(input_ids=ids, attention_mask=_mask_4d(mask) if self.mask_4d else mask).last_hidden_state
                pooled.append(mean_pool_normalize(hidden, mask))
            result = torch.cat(pooled) if len(pooled) > 1 else pooled[0]
            if not on_gpu:
                host = result.numpy()
                return rows, Running(lambda: host)
            pinned = torch.empty(result.shape, dtype=result.dtype, pin_memory=True)
            pinned.copy_(result, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(device))

        def wait() -> np.ndarray:
            done.synchronize()
            return pinned.numpy()

        return rows, Running(wait, done.query)


def _mask_4d(mask: torch.Tensor) -> torch.Tensor:
    """(batch, 1, 1, keys) boolean attention mask; every row may attend at least its first position."""
    keys = mask.bool()
    keys[:, 0] = True  # an all-masked row would make SDPA return NaN
    return keys[:, None, None, :]


def _accepts_4d_mask(model: Any, device: str) -> bool:
    """Whether the model gives the same vectors from a 4D boolean mask as from the 2D padding mask."""
    import torch

    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 10:
        return False
    lengths = torch.tensor([12, 7, 3])
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long().to(device)
    # Ids inside the vocabulary: an out-of-range id is a device-side assert on a GPU, fatal to the process.
    ids = (torch.arange(36).reshape(3, 12) % (min(vocab, 100) - 2) + 1).to(device) * mask
    try:
        with torch.inference_mode():
            plain = mean_pool_normalize(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
            four = mean_pool_normalize(model(input_ids=ids, attention_mask=_mask_4d(mask)).last_hidden_state, mask)
    except Exception:
        return False
    return bool(torch.nn.functional.cosine_similarity(plain, four).min() > 0.999)


def mean_pool_normalize(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over unmasked tokens, then L2 normalisation; computed in float32."""
    import torch

    weights = mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * weights).sum(dim=1)
    pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def _onnxruntime_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))
