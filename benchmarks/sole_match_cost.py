"""What `LexicalIndex.sole_matches` (the --lead-sole-match rule) costs beside the BM25 search it goes with.

Usage: python benchmarks/sole_match_cost.py DATA_DIR [ROWS]   (default 100,000 IMDB sentences)
Indexes ROWS IMDB sentences in memory, then times 1,000 queries two ways: whole indexed sentences and their
first three words; prints ms per query for the BM25 top-100 search and for the sole-match lookup.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from pipeline.bench_index import imdb_sentences
from pipeline.lexical import LexicalIndex


def main() -> None:
    data, rows = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    texts = imdb_sentences(data / "imdb" / "aclImdb_reviews.jsonl.gz", rows)
    keys = np.arange(len(texts), dtype=np.int64)
    index, _ = LexicalIndex.build([(keys[i : i + 10_000], texts[i : i + 10_000]) for i in range(0, len(texts), 10_000)])
    picked = np.random.default_rng(0).choice(len(texts), 1000, replace=False)
    sets = {"sentences": [texts[i] for i in picked], "three words": [" ".join(texts[i].split()[:3]) for i in picked]}
    print(f"{len(texts):,} IMDB sentences indexed")
    for label, queries in sets.items():
        start = time.perf_counter()
        index.search(queries, 100)
        search_ms = (time.perf_counter() - start) / len(queries) * 1000
        start = time.perf_counter()
        sole = index.sole_matches(queries)
        sole_ms = (time.perf_counter() - start) / len(queries) * 1000
        print(
            f"{label}: BM25 top-100 {search_ms:.3f} ms/query, sole_matches {sole_ms:.3f} ms/query "
            f"({sole_ms / search_ms:.0%}); {int((sole >= 0).sum())} of {len(queries)} have a sole full match"
        )


if __name__ == "__main__":
    main()
