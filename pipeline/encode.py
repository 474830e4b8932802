"""Text to L2-normalised mean-pooled embeddings: length-sorted, token-budget batches on CPU or GPU."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import ModelError, UsageError
from pipeline.model import ModelRef, load_sentence_transformer, pooling_mode

if TYPE_CHECKING:
    import torch

DEFAULT_TOKEN_BUDGET_CPU = 16_384
DEFAULT_TOKEN_BUDGET_GPU = 131_072


@dataclass(frozen=True)
class EncoderConfig:
    """How to run the encoder; None means an automatic choice for the device."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_seq_length: int | None = None  # None: the model's own
    batch_size: int | None = None  # most rows in one forward pass
    token_budget: int | None = None  # most padded tokens in one forward pass
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    backend: str = "torch"  # torch (others arrive with the CPU fast path)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


def resolve_precision(precision: str, device: str) -> str:
    import torch

    if precision == "auto":
        if not device.startswith("cuda"):
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    return precision


def plan_batches(lengths: np.ndarray, token_budget: int, max_rows: int | None) -> list[np.ndarray]:
    """Group row positions, longest first, into batches whose padded size fits the token budget."""
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        rows = max(token_budget // longest, 1)
        if max_rows:
            rows = min(rows, max_rows)
        batches.append(order[start : start + rows])
        start += rows
    return batches


class Encoder:
    """Encodes texts with a sentence-transformers model's weights, mean pooling and L2 normalisation.

    Tokenises without padding, sorts by length, pads each token-budget batch only to its own longest
    row and pools on the device; results come back in input order.
    """

    def __init__(self, ref: ModelRef, config: EncoderConfig | None = None) -> None:
        import torch

        self.ref = ref
        self.config = config or EncoderConfig()
        self.device = resolve_device(self.config.device)
        self.precision = resolve_precision(self.config.precision, self.device)
        self.st = load_sentence_transformer(ref, self.device, self.config.max_seq_length)
        self.pooling = pooling_mode(self.st)
        if self.pooling != "mean":
            raise ModelError(f"model {ref.name} pools with {self.pooling!r}; bmsearch computes mean pooling only")
        self.max_seq_length = int(self.st.max_seq_length)
        self.tokenizer = self.st.tokenizer
        self.dim = int(self.st.get_sentence_embedding_dimension() or 0)
        self.transformer = self.st[0].auto_model
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.transformer.to(device=self.device, dtype=dtype).eval()
        on_gpu = self.device.startswith("cuda")
        self.token_budget = self.config.token_budget or (DEFAULT_TOKEN_BUDGET_GPU if on_gpu else DEFAULT_TOKEN_BUDGET_CPU)
        self.batch_size = self.config.batch_size

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
            "backend": self.config.backend,
        }

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        out = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_seq_length, padding=False,
            return_attention_mask=False, return_token_type_ids=False,
        )
        return list(out["input_ids"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of texts, float32 (n, dim), unit length, in input order."""
        import torch

        result = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return result
        ids = self.tokenize(texts)
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
        with torch.inference_mode():
            for batch in plan_batches(lengths, self.token_budget, self.batch_size):
                result[batch] = self._forward([ids[i] for i in batch])
        return result

    def encode_chunks(self, chunks: Iterable[Sequence[str]]) -> Iterator[np.ndarray]:
        """One embedding array per chunk of texts, in order."""
        for chunk in chunks:
            yield self.encode(chunk)

    def _forward(self, rows: list[list[int]]) -> np.ndarray:
        import torch

        longest = max(len(r) for r in rows)
        input_ids = np.zeros((len(rows), longest), dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        ids_t = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
        mask_t = torch.from_numpy(mask).to(self.device, non_blocking=True)
        hidden = self.transformer(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        return mean_pool_normalize(hidden, mask_t).float().cpu().numpy()


def mean_pool_normalize(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over unmasked tokens, then L2 normalisation; computed in float32."""
    import torch

    weights = mask.unsqueeze(-1).to(torch.float32)
    summed = (hidden.to(torch.float32) * weights).sum(dim=1)
    pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)
