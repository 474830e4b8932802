"""The server's query encoder alone: CPU ms per query by threads per forward pass, token budget and batch size.

Usage: python benchmarks/serving_encoder.py [DATA_DIR]   (default: the shared data folder)
Encodes IMDB query sentences (those of `bmsearch bench serve`) with the packaged MiniLM on the CPU default
backend, 512 queries per setting in batches of 1, 4, 8 and 16, and prints wall and CPU ms per query. Then,
per backend, how far a query's embedding moves with the queries batched with it (cosine of each query
encoded alone against the same query in batches of 4, 16 and 256) and its cosine to fp32.
See docs/benchmarks.md, "Server: one thread per batch".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline.bench_common import default_model, machine_info, shared_data_dir
from pipeline.bench_serve import imdb_sentences
from pipeline.encode import Encoder, EncoderConfig
from pipeline.model import resolve_model

QUERIES = 512
SETTINGS = [(2, 4096), (1, 4096), (1, 256), (1, 128), (1, 64)]  # (threads, token budget); (2, 4096): the old server
BATCHES = (1, 4, 8, 16)


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else shared_data_dir()
    _, queries = imdb_sentences(data, 2 * QUERIES)
    queries = queries[:QUERIES]
    ref = resolve_model(default_model())
    info = machine_info()
    print(f"{info['cpu']}, {info.get('cores_usable', info['cpu_count'])} usable cores; {len(queries)} queries")
    print("threads  budget  " + "  ".join(f"b={b:<2} wall/cpu ms" for b in BATCHES))
    for threads, budget in SETTINGS:
        config = EncoderConfig(device="cpu", tokenizer_workers=0, threads=threads, spin=False, token_budget=budget)
        cells = []
        with Encoder(ref, config) as encoder:
            for b in BATCHES:
                batches = [queries[i : i + b] for i in range(0, len(queries), b)]
                encoder.encode(batches[0])  # warm-up
                wall, cpu = time.perf_counter(), time.process_time()
                for batch in batches:
                    encoder.encode(batch)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                cells.append(f"{1e3 * wall / len(queries):5.2f} / {1e3 * cpu / len(queries):5.2f}   ")
        print(f"{threads:7d}  {budget:6d}  " + "  ".join(cells), flush=True)
    batch_invariance(ref, queries[:256])


def batch_invariance(ref: object, queries: list[str]) -> None:
    """Dynamic int8 quantisation scales activations per batch: measure what that does to one query."""
    import numpy as np

    def encode_in(encoder: Encoder, size: int) -> np.ndarray:
        return np.concatenate([encoder.encode(queries[i : i + size]) for i in range(0, len(queries), size)])

    print("backend    alone vs batch of 4 / 16 / 256 (mean, min cosine)       vs fp32 alone / in 16 (mean, min)")
    fp32 = None
    for backend in ("onnx", "torch", "onnx-int8"):
        config = EncoderConfig(device="cpu", backend=backend, tokenizer_workers=0, threads=1, spin=False)
        with Encoder(ref, config) as encoder:  # type: ignore[arg-type]
            alone = encode_in(encoder, 1)
            fp32 = alone if fp32 is None else fp32
            cells = []
            for size in (4, 16, 256):
                cos = (alone * encode_in(encoder, size)).sum(1)
                cells.append(f"{cos.mean():.4f}, {cos.min():.4f}")
            to_fp32 = [(v * fp32).sum(1) for v in (alone, encode_in(encoder, 16))]
            ref_cells = " / ".join(f"{c.mean():.4f}, {c.min():.4f}" for c in to_fp32)
        print(f"{backend:9s}  " + " / ".join(cells) + f"   {ref_cells}", flush=True)


if __name__ == "__main__":
    main()
