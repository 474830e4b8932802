"""STS evaluation: Spearman and Pearson of embedding cosine similarity against gold pair scores."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError
from pipeline.metrics import pearson, spearman
from pipeline.progress import NoProgress, Progress
from pipeline.training_data import Columns, PairData, detect_format, load_pairs

STS_SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class StsResult:
    """Correlations x100 between cosine similarity and gold scores over a set of sentence pairs."""

    model: str
    data: str
    format: str
    split: str | None
    pairs: int
    spearman: float
    pearson: float
    seconds: float
    backend: str = ""  # the Encoder's resolved backend: torch, onnx, onnx-int8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sts_data_path(data: str | Path, split: str | None) -> Path:
    """A folder of STS files plus a split names sts-SPLIT.csv inside it; anything else is taken as is."""
    path = Path(data)
    if path.is_dir() and split and (path / f"sts-{split}.csv").exists():
        return path / f"sts-{split}.csv"
    return path


def load_sts_pairs(
    data: str | Path, split: str | None = None, format: str = "auto", columns: Columns | None = None
) -> PairData:
    """Scored pairs for STS evaluation; SICK defaults to its test split."""
    path = sts_data_path(data, split)
    fmt = detect_format(path) if format == "auto" and path.exists() else format
    if fmt == "sick" and split is None:
        split = "test"
    pairs = load_pairs(path, format, split, columns)
    if pairs.split is None and pairs.format == "sts":
        pairs.split = next((s for s in STS_SPLITS if path.name == f"sts-{s}.csv"), split)
    if pairs.scores is None:
        raise DataError(f"{path} has no similarity scores to evaluate against ({pairs.format} layout)")
    if len(pairs) < 3:
        raise DataError(f"{path} has {len(pairs)} scored pairs; a correlation needs at least 3")
    return pairs


def cosine_scores(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped embedding matrices."""
    a = emb1 / np.maximum(np.linalg.norm(emb1, axis=1, keepdims=True), 1e-12)
    b = emb2 / np.maximum(np.linalg.norm(emb2, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", a, b)


def score_pairs(pairs: PairData, encode: Any) -> np.ndarray:
    """Cosine similarity per pair; each distinct sentence is encoded once with encode(texts) -> matrix."""
    unique = list(dict.fromkeys([*pairs.sentence1, *pairs.sentence2]))
    position = {text: i for i, text in enumerate(unique)}
    emb = np.asarray(encode(unique), dtype=np.float32)
    i1 = np.fromiter((position[t] for t in pairs.sentence1), dtype=np.int64, count=len(pairs))
    i2 = np.fromiter((position[t] for t in pairs.sentence2), dtype=np.int64, count=len(pairs))
    return cosine_scores(emb[i1], emb[i2])


def evaluate_sts(
    model: str,
    data: str | Path,
    split: str | None = None,
    format: str = "auto",
    columns: Columns | None = None,
    encoder_config: Any = None,
    progress: Progress | None = None,
) -> StsResult:
    """Encode each pair with the product's Encoder and correlate cosine similarity with the gold scores."""
    from pipeline.encode import Encoder, EncoderConfig
    from pipeline.model import resolve_model

    progress = progress or NoProgress()
    pairs = load_sts_pairs(data, split, format, columns)
    started = time.monotonic()
    encoder = Encoder(resolve_model(model), encoder_config or EncoderConfig())
    n_texts = len(set(pairs.sentence1) | set(pairs.sentence2))
    progress.stage("encode", total=n_texts, unit="texts")

    def encode(texts: list[str]) -> np.ndarray:
        out = encoder.encode(texts)
        progress.advance(len(texts))
        return out

    try:
        sims = score_pairs(pairs, encode)
    finally:
        progress.close()
    gold = np.asarray(pairs.scores, dtype=np.float64)
    return StsResult(
        model=model,
        data=pairs.source,
        format=pairs.format,
        split=pairs.split or split,
        pairs=len(pairs),
        spearman=100 * spearman(sims, gold),
        pearson=100 * pearson(sims, gold),
        seconds=round(time.monotonic() - started, 2),
        backend=str(getattr(encoder, "backend", "torch")),
    )
