"""ONNX Runtime CPU backend: export a model with pooling built in, quantise it, cache both on disk."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ModelError, UsageError
from pipeline.model import ModelRef

# Bump when the exported graph changes, so stale cache entries are never reused.
EXPORT_VERSION = 1
OPSET = 17
# A quantised model replaces fp32 by default only if it agrees at least this well (mean cosine).
INT8_MIN_MEAN_COSINE = 0.99
FP32_NAME = "model-fp32.onnx"
INT8_NAME = "model-int8-perchannel.onnx"
SCRATCH_PREFIX = ".quantize-"
STALE_SCRATCH_S = 6 * 3600.0  # a quantisation takes minutes; a scratch folder this old was left by a killed run
CALIBRATION_TEXTS = (
    "A man is playing a guitar on the street.",
    "The stock market fell sharply after the announcement of new tariffs.",
    "How do I reset my password if I no longer have access to my email?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The film was far too long, but the acting was superb and the score unforgettable.",
    "Two dogs run through a field of tall grass.",
    "what is the capital of australia",
    "Preheat the oven to 180 degrees and grease a round cake tin.",
    "The court ruled that the contract was void because it had been signed under duress.",
    "Quantum computers use qubits, which can represent both zero and one at the same time.",
    "She missed the last train home and had to walk across the city in the rain.",
    "symptoms of vitamin d deficiency in adults",
    "The committee will meet on Thursday to discuss next year's budget.",
    "A child is eating a slice of watermelon.",
    "Rivers carry sediment from the mountains down to the sea, building deltas over centuries.",
    "I would not recommend this hotel: the rooms were dirty and the staff rude.",
)


def cache_root() -> Path:
    """Where exported models live: $BMSEARCH_CACHE/onnx, else ~/.cache/bmsearch/onnx."""
    base = os.environ.get("BMSEARCH_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "bmsearch"
    return root / "onnx"


def cache_dir(ref: ModelRef) -> Path:
    """The cache directory of one model's weights (keyed by their hash, not their path)."""
    key = ref.fingerprint or hashlib.sha256(ref.path.encode()).hexdigest()
    return cache_root() / f"{key}-v{EXPORT_VERSION}"


_private_root: Path | None = None


def _private_cache() -> Path:
    """This process's own cache, for when the shared one cannot be written; removed at exit."""
    global _private_root
    if _private_root is None:
        _private_root = Path(tempfile.mkdtemp(prefix="bmsearch-onnx-"))
        atexit.register(shutil.rmtree, _private_root, True)
    return _private_root


def _writable(path: Path) -> Path:
    """path, or its place in this process's private cache when path's folder cannot be written (read-only)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.access(path.parent, os.W_OK):
            return path
    except OSError:
        pass
    return _private_cache() / path.parent.name / path.name


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """A temp path beside `path`; once the body has written it, fsync and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def _pooled_module(transformer: Any) -> Any:
    """Wrap a Hugging Face encoder so that its output is the mean-pooled, L2-normalised embedding."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return Pooled(transformer).eval()


def export_fp32(ref: ModelRef, transformer: Any, reuse: bool = True) -> Path:
    """The cached fp32 ONNX export of a model (exported now on a cache miss, or always without reuse)."""
    import torch

    target = cache_dir(ref) / FP32_NAME
    if reuse and target.exists():
        return target
    target = _writable(target)
    if reuse and target.exists():
        return target
    module = _pooled_module(transformer)
    # Trace with padding present so the exported graph keeps the attention-mask path.
    ids = torch.ones((2, 8), dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "embedding": {0: "batch"},
    }
    try:
        with _atomic_target(target) as tmp, torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                module,
                (ids, mask),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input_ids", "attention_mask"],
                output_names=["embedding"],
                dynamic_axes=axes,
            )
    except Exception as exc:
        raise ModelError(_failure(f"ONNX export of {ref.name}", exc)) from exc
    return target


def quantize_int8(ref: ModelRef, fp32_path: Path, reuse: bool = True) -> Path:
    """The cached dynamic int8 model (per-channel weights) made from an fp32 export (made now without reuse)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = fp32_path.with_name(INT8_NAME)
    if reuse and target.exists():
        return target
    target = _writable(target)
    if reuse and target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # quantize_dynamic writes scratch files beside its input: give it a private copy so that two processes
    # quantising the same model at once do not trip over each other's scratch files
    sweep_stale_scratch(target.parent)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=target.parent))
    try:
        source = scratch / fp32_path.name
        try:
            os.link(fp32_path, source)
        except OSError:  # another file system (a private cache beside a read-only one)
            shutil.copyfile(fp32_path, source)
        with _atomic_target(target) as tmp, _quiet_onnxruntime_root_logs():
            quantize_dynamic(str(source), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
    except Exception as exc:
        raise ModelError(_failure(f"int8 quantisation of {ref.name}", exc)) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


class _OnnxRuntimeAdvice(logging.Filter):
    """Drops onnxruntime's warnings and notes: it logs advice meant for its own users on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or f"{os.sep}onnxruntime{os.sep}" not in record.pathname


@contextmanager
def _quiet_onnxruntime_root_logs() -> Iterator[None]:
    """Keep the quantizer's root-logger advice ("Please consider to run pre-processing ...") off stderr.

    Only records logged on the root logger from onnxruntime's files below ERROR are dropped. A root logger
    without handlers gets a NullHandler for the duration: `logging.warning()` would otherwise install a
    stderr handler on it for good (basicConfig).
    """
    root = logging.getLogger()
    advice = _OnnxRuntimeAdvice()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
        if placeholder is not None:
            root.removeHandler(placeholder)


def sweep_stale_scratch(folder: Path, max_age_s: float = STALE_SCRATCH_S) -> None:
    """Remove the scratch folders of quantisations that were killed (older than any live one can be)."""
    cutoff = time.time() - max_age_s
    for scratch in folder.glob(f"{SCRATCH_PREFIX}*"):
        with contextlib.suppress(OSError):
            if scratch.is_dir() and scratch.stat().st_mtime < cutoff:
                shutil.rmtree(scratch, ignore_errors=True)


def load_cached(path: Path, remake: Callable[[], Path], threads: int | None = None, spin: bool = True) -> OnnxRunner:
    """A session over a cached model file; one that does not load (truncated, overwritten) is made again.

    Without this a damaged cache entry would fail every later run the same way.
    """
    try:
        return OnnxRunner(path, threads, spin)
    except UsageError:
        raise
    except Exception:
        with contextlib.suppress(OSError):
            path.unlink()
    fresh = remake()
    try:
        return OnnxRunner(fresh, threads, spin)
    except UsageError:
        raise
    except Exception as exc:
        raise ModelError(_failure(f"loading the ONNX model {fresh}", exc)) from exc


class OnnxRunner:
    """An ONNX Runtime CPU session over a pooled export: (input_ids, attention_mask) -> embeddings."""

    def __init__(self, path: Path, threads: int | None = None, spin: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise UsageError("the onnx backends need onnxruntime: pip install 'bmsearch[cpu]'") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads or available_cores())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            # idle pool threads sleep instead of spinning: a server's cores go to HTTP and search between calls
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]
        return np.asarray(out, dtype=np.float32)


def int8_agreement(fp32: OnnxRunner, int8: OnnxRunner, feeds: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Mean and min cosine between the int8 and fp32 embeddings of the calibration texts."""
    a, b = fp32.run(*feeds), int8.run(*feeds)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def cached_int8_check(fp32_path: Path, compute: Any) -> dict[str, float]:
    """The int8-vs-fp32 agreement recorded beside the models, computed (and recorded) on first use."""
    path = fp32_path.with_name("int8-check.json")
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "mean_cosine" in data:
            return {k: float(v) for k, v in data.items()}
    except (OSError, ValueError, TypeError):
        pass
    result: dict[str, float] = compute()
    with _atomic_target(_writable(path)) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _failure(what: str, exc: BaseException) -> str:
    return f"{what} failed: {type(exc).__name__}: {exc}".splitlines()[0]
