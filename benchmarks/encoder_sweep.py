"""GPU encoder sweep: bmsearch's encoder alone, Parquet to embedding shards, under several settings, two passes each.

Usage: python benchmarks/encoder_sweep.py DATA_DIR OUT_DIR   (DEV=cpu SCALE=0.01 for a quick CPU check)
Prints one JSON line per setting and a table; writes OUT_DIR/explore.json. See docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from pipeline.bench_encode import _parquet_to_shards, _write_parquet, build_arch, load_corpus
from pipeline.encode import Encoder, EncoderConfig
from pipeline.model import resolve_model
from pipeline.progress import NoProgress

VARIANTS = [("eager", {}), ("eager-w8", {"tokenizer_workers": 8}), ("compile", {"torch_compile": True})]


def main() -> None:
    import torch

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    device = os.environ.get("DEV", "cuda")
    scale = float(os.environ.get("SCALE", "1"))
    work = Path(tempfile.mkdtemp())
    ref = resolve_model(str(build_arch("bert-medium", work / "bm")))
    corpora = {
        "imdb-sentences": (load_corpus("imdb-sentences", data, int(150_000 * scale)), 128),
        "imdb": (load_corpus("imdb", data, int(24_000 * scale)), 256),
    }
    variants = VARIANTS if device == "cuda" else VARIANTS[:2]
    results = []
    for cname, (texts, max_len) in corpora.items():
        parquet = work / f"{cname}.parquet"
        _write_parquet(parquet, texts)
        for vname, options in variants:
            config = EncoderConfig(device=device, backend="torch", max_seq_length=max_len, **options)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            enc = Encoder(ref, config)
            setup = time.perf_counter() - t0
            tokens = enc.tokenize(texts)
            t0 = time.perf_counter()
            list(enc.encode_chunks([texts[:64], texts[:4096], texts[4096:12288]]))
            warm = time.perf_counter() - t0
            runs = []
            for rep in range(2):
                shards = work / f"shards-{cname}-{vname}-{rep}"
                shards.mkdir()
                t0 = time.perf_counter()
                _parquet_to_shards(enc, parquet, shards, 8192, NoProgress())
                runs.append(time.perf_counter() - t0)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            enc.embed_tokens(tokens)
            gpu_only = time.perf_counter() - t0
            pool = enc._tokenizer_pool()
            t0 = time.perf_counter()
            pending = [pool.submit(texts[i : i + 8192]) for i in range(0, len(texts), 8192)]
            for p in pending:
                p.result()
            tokenize_only = time.perf_counter() - t0
            n_tokens = int(tokens.lengths.sum())
            best = min(runs)
            row = {
                "corpus": cname,
                "variant": vname,
                "rows": len(texts),
                "tokens": n_tokens,
                "setup_s": setup,
                "warm_s": warm,
                "runs": runs,
                "rows_per_s": len(texts) / best,
                "tokens_per_s": n_tokens / best,
                "gpu_only_tokens_per_s": n_tokens / gpu_only,
                "tokenize_only_rows_per_s": len(texts) / tokenize_only,
                "workers": enc.tokenizer_workers,
                "budget": enc.token_budget,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            enc.close()
            del enc
            if device == "cuda":
                torch.cuda.empty_cache()
    (out / "explore.json").write_text(json.dumps(results, indent=1))
    print(f"{'corpus':16} {'variant':10} {'rows/s':>9} {'tok/s':>11} {'GPU-only tok/s':>14} {'tokenise rows/s':>15}")
    for r in results:
        print(
            f"{r['corpus']:16} {r['variant']:10} {r['rows_per_s']:9,.0f} {r['tokens_per_s']:11,.0f} "
            f"{r['gpu_only_tokens_per_s']:14,.0f} {r['tokenize_only_rows_per_s']:15,.0f}"
        )


if __name__ == "__main__":  # spawned tokeniser workers re-import this file
    main()
