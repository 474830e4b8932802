"""Pair evaluation of embedding cosine similarity: STS correlations with gold scores, NLI pair classification."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import DataError, UsageError
from pipeline.metrics import average_precision, best_accuracy, pearson, spearman
from pipeline.progress import NoProgress, Progress
from pipeline.training_data import Columns, PairData, load_pairs

STS_SPLITS = ("train", "dev", "test")
ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2  # PairData's label ids


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


@dataclass(frozen=True)
class NliResult:
    """How well cosine similarity tells entailed from contradicted pairs (x100; neutral pairs only in the
    Spearman and the mean cosines)."""

    model: str
    data: str
    format: str
    split: str | None
    pairs: int
    label_counts: dict[str, int]
    ap: float  # average precision of entailment over contradiction pairs, ranked by cosine
    accuracy: float  # entailment vs contradiction at the best cosine threshold
    threshold: float
    spearman: float  # cosine against the order entailment > neutral > contradiction, all pairs
    mean_cosine: dict[str, float]
    seconds: float
    backend: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sts_data_path(data: str | Path, split: str | None) -> Path:
    """A folder of STS files plus a split (test by default) names sts-SPLIT.csv inside it; anything else is
    taken as is."""
    path = Path(data)
    if path.is_dir() and (path / f"sts-{split or 'test'}.csv").exists():
        return path / f"sts-{split or 'test'}.csv"
    if path.is_dir() and (found := sorted(p.name for p in path.glob("sts-*.csv"))):
        raise DataError(f"no sts-{split or 'test'}.csv in {path}; files there: {', '.join(found)}")
    return path


def load_sts_pairs(
    data: str | Path, split: str | None = None, format: str = "auto", columns: Columns | None = None
) -> PairData:
    """Scored pairs for STS evaluation; SICK defaults to its test split."""
    path = sts_data_path(data, split)
    pairs = load_pairs(path, format, split, columns, default_splits={"sick": "test"})
    if pairs.split is None and pairs.format == "sts":
        named = next((s for s in STS_SPLITS if path.name == f"sts-{s}.csv"), None)
        if named and split and split != named:
            raise UsageError(f"{path} is the {named} split, not {split}: give its folder with --split {split}")
        pairs.split = named or split
    if pairs.scores is None:
        hint = "; it has entailment labels: evaluate it with eval nli" if pairs.labels is not None else ""
        raise DataError(f"{path} has no similarity scores to evaluate against ({pairs.format} layout){hint}")
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


def load_nli_pairs(
    data: str | Path, split: str | None = None, format: str = "auto", columns: Columns | None = None
) -> PairData:
    """Labelled pairs for NLI evaluation: an SNLI folder or SICK (test split unless named), or a table."""
    path = Path(data)
    pairs = load_pairs(path, format, split, columns, default_splits={"snli": "test", "sick": "test"})
    if pairs.labels is None:
        hint = "; it has similarity scores: evaluate it with eval sts" if pairs.scores is not None else ""
        raise DataError(f"{path} has no entailment labels to evaluate against ({pairs.format} layout){hint}")
    found = set(pairs.labels)
    if ENTAILMENT not in found or CONTRADICTION not in found:
        raise DataError(f"{path} needs both entailment and contradiction pairs; it has {_label_counts(pairs.labels)}")
    return pairs


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
    pairs = load_sts_pairs(data, split, format, columns)
    sims, backend, seconds = _pair_cosines(model, pairs, encoder_config, progress)
    gold = np.asarray(pairs.scores, dtype=np.float64)
    return StsResult(
        model=model,
        data=pairs.source,
        format=pairs.format,
        split=pairs.split or split,
        pairs=len(pairs),
        spearman=100 * spearman(sims, gold),
        pearson=100 * pearson(sims, gold),
        seconds=seconds,
        backend=backend,
    )


def evaluate_nli(
    model: str,
    data: str | Path,
    split: str | None = None,
    format: str = "auto",
    columns: Columns | None = None,
    encoder_config: Any = None,
    progress: Progress | None = None,
) -> NliResult:
    """Encode each labelled pair and measure how well cosine similarity ranks entailment above
    contradiction (average precision, best-threshold accuracy) and follows the three labels' order."""
    pairs = load_nli_pairs(data, split, format, columns)
    sims, backend, seconds = _pair_cosines(model, pairs, encoder_config, progress)
    labels = np.asarray(pairs.labels, dtype=np.int64)
    binary = labels != NEUTRAL
    entailed = labels[binary] == ENTAILMENT
    accuracy, threshold = best_accuracy(sims[binary], entailed)
    return NliResult(
        model=model,
        data=pairs.source,
        format=pairs.format,
        split=pairs.split or split,
        pairs=len(pairs),
        label_counts=_label_counts(pairs.labels or []),
        ap=100 * average_precision(sims[binary], entailed),
        accuracy=100 * accuracy,
        threshold=round(threshold, 4),
        spearman=100 * spearman(sims, CONTRADICTION - labels),
        mean_cosine={
            name: round(float(sims[labels == i].mean()), 4) for name, i in _LABELS.items() if (labels == i).any()
        },
        seconds=seconds,
        backend=backend,
    )


_LABELS = {"entailment": ENTAILMENT, "neutral": NEUTRAL, "contradiction": CONTRADICTION}


def _label_counts(labels: list[int]) -> dict[str, int]:
    return {name: n for name, i in _LABELS.items() if (n := labels.count(i))}


def _pair_cosines(
    model: str, pairs: PairData, encoder_config: Any, progress: Progress | None
) -> tuple[np.ndarray, str, float]:
    """Cosine per pair through the product's Encoder, its resolved backend and the seconds taken."""
    from pipeline.encode import Encoder, EncoderConfig
    from pipeline.model import resolve_model

    progress = progress or NoProgress()
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
        encoder.close()
        progress.close()
    return sims, str(getattr(encoder, "backend", "torch")), round(time.monotonic() - started, 2)
