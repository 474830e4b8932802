"""The server's query encoder alone: CPU ms per query by threads per forward pass, token budget and batch size.

Usage: python benchmarks/serving_encoder.py [DATA_DIR]   (default: the shared data folder)
Encodes IMDB query sentences (those of `bmsearch bench serve`) with the packaged MiniLM on the CPU default
backend, 512 queries per setting in batches of 1, 4, 8 and 16, and prints wall and CPU ms per query.
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


if __name__ == "__main__":
    main()
