"""Retrieval quality of an index against graded qrels: nDCG@10, recall@10/100, MRR@10 and queries/s per mode."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.beir import QrelsCheck, check_qrels
from pipeline.errors import DataError, UsageError
from pipeline.fusion import FusionConfig, fuse_modes, padded
from pipeline.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from pipeline.search import MODES

EVAL_DEPTH = 100  # recall@100 needs 100 results per query


@dataclass
class ModeResult:
    """One row of the report: mean metrics over the evaluated queries and the mode's throughput."""

    mode: str
    ndcg_at_10: float
    recall_at_10: float
    recall_at_100: float
    mrr_at_10: float
    queries: int
    seconds: float
    queries_per_s: float


@dataclass
class RetrievalReport:
    """Every mode's metrics, with what was left out and why."""

    index: str
    modes: list[ModeResult]
    queries_evaluated: int
    queries_without_relevant: int
    queries_without_text: int
    qrels: QrelsCheck
    fusion: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "mode": r.mode,
                "nDCG@10": 100 * r.ndcg_at_10,
                "R@10": 100 * r.recall_at_10,
                "R@100": 100 * r.recall_at_100,
                "MRR@10": 100 * r.mrr_at_10,
                "queries": r.queries,
                "q/s": r.queries_per_s,
            }
            for r in self.modes
        ]


def score_run(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Mean nDCG@10, recall@10, recall@100 and MRR@10 of ranked doc ids per query, over the queries in `run`."""
    if not run:
        raise DataError("no query to evaluate")
    totals = {"ndcg_at_10": 0.0, "recall_at_10": 0.0, "recall_at_100": 0.0, "mrr_at_10": 0.0}
    for qid, ranked in run.items():
        judged = qrels.get(qid, {})
        totals["ndcg_at_10"] += ndcg_at_k(ranked, judged, 10)
        totals["recall_at_10"] += recall_at_k(ranked, judged, 10)
        totals["recall_at_100"] += recall_at_k(ranked, judged, 100)
        totals["mrr_at_10"] += mrr_at_k(ranked, judged, 10)
    return {name: value / len(run) for name, value in totals.items()}


# --- searching ------------------------------------------------------------------------------------------
def search_modes(
    searcher: Any,
    queries: Sequence[str],
    k: int,
    modes: Sequence[str],
    fusion: FusionConfig | None = None,
    lexical: Any = None,
    timings: dict[str, float] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(scores, keys) top-k per mode for each query; hybrid fuses dense and lexical candidates of `fusion.depth`.

    `lexical` is an open LexicalIndex (default: the generation's `lexical/` folder); `timings`, when given,
    receives each mode's seconds, hybrid counting both searches and the fusion.
    """
    from pipeline import ann

    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UsageError(f"unknown mode(s) {', '.join(unknown)}: use {', '.join(MODES)}")
    fusion = fusion or FusionConfig()
    depth = max(k, fusion.depth) if "hybrid" in modes else k
    need_dense = "dense" in modes or "hybrid" in modes
    need_lexical = "lexical" in modes or "hybrid" in modes
    times = timings if timings is not None else {}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if need_dense:
        t0 = time.perf_counter()
        vectors = searcher.encoder.encode(list(queries))
        found["dense"] = padded(*ann.search(searcher.generation.index, vectors, depth), depth)
        times["dense"] = time.perf_counter() - t0
    if need_lexical:
        if lexical is None:
            # through the generation, which refuses (UsageError) an index built without a lexical side
            lexical = searcher.generation.lexical
        t0 = time.perf_counter()
        found["lexical"] = lexical.search(list(queries), depth)
        times["lexical"] = time.perf_counter() - t0
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "hybrid" in modes:
        t0 = time.perf_counter()
        # the sole-match lookup serves only the hybrid rule, so it counts in hybrid's time, not in lexical's
        sole = lexical.sole_matches(list(queries)) if fusion.lead_sole_match else None
        out["hybrid"] = fuse_modes({"dense": found["dense"], "lexical": found["lexical"]}, k, fusion, sole)
        times["hybrid"] = times["dense"] + times["lexical"] + time.perf_counter() - t0
    for mode in ("dense", "lexical"):
        if mode in modes:
            scores, keys = found[mode]
            out[mode] = (scores[:, :k], keys[:, :k])
    return {m: out[m] for m in modes}


def _id_map(searcher: Any, keys: np.ndarray) -> dict[int, str]:
    """Row key -> user id (as text) for the keys present in `keys`."""
    gen = searcher.generation
    id_column = gen.manifest["corpus"]["id_column"]
    unique = [int(x) for x in np.unique(keys[keys >= 0])]
    if not id_column:
        return {key: str(key) for key in unique}
    from pipeline.corpus import KEY

    rows = gen.store.fetch(unique, [KEY, id_column])
    return {int(r[KEY]): str(r[id_column]) for r in rows if r}


def _corpus_ids(searcher: Any) -> set[str]:
    from pipeline.corpus import KEY
    from pipeline.store import quote

    id_column = searcher.generation.manifest["corpus"]["id_column"]
    column = quote(id_column) if id_column else KEY
    return {str(r[0]) for r in searcher.generation.store.rows(f"SELECT {column} FROM docs")}


def evaluate_retrieval(
    searcher: Any,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    modes: Sequence[str] = MODES,
    fusion: FusionConfig | None = None,
    lexical: Any = None,
) -> RetrievalReport:
    """Search every judged query (one with a relevant doc and a text) in each mode and score the rankings."""
    fusion = fusion or FusionConfig()
    check = check_qrels({q: dict(j) for q, j in qrels.items()}, _corpus_ids(searcher), set(queries))
    with_relevant = [q for q, judged in qrels.items() if any(g > 0 for g in judged.values())]
    qids = [q for q in with_relevant if q in queries and queries[q].strip()]
    if not qids:
        raise DataError("no query has both a text and a relevant judgement; check that the qrels match the queries")
    texts = [queries[q] for q in qids]
    if lexical is None and ("lexical" in modes or "hybrid" in modes):
        lexical = searcher.generation.lexical  # refuse an index without a lexical side before any search
    if "dense" in modes or "hybrid" in modes:
        searcher.encoder  # noqa: B018 - load the model before the clock starts
    timings: dict[str, float] = {}
    ranked = search_modes(searcher, texts, EVAL_DEPTH, modes, fusion, lexical, timings)
    results = []
    for mode in modes:
        _, keys = ranked[mode]
        ids = _id_map(searcher, keys)
        run = {qid: [ids[int(x)] for x in row if x >= 0] for qid, row in zip(qids, keys, strict=True)}
        metrics = score_run(run, qrels)
        seconds = timings[mode]
        results.append(
            ModeResult(mode, **metrics, queries=len(qids), seconds=seconds, queries_per_s=len(qids) / seconds)
        )
    return RetrievalReport(
        index=searcher.paths.name,
        modes=results,
        queries_evaluated=len(qids),
        queries_without_relevant=len(qrels) - len(with_relevant),
        queries_without_text=len(with_relevant) - len(qids),
        qrels=check,
        fusion={
            "method": fusion.method,
            "weights": dict(fusion.weights),
            "rrf_k": fusion.rrf_k,
            "depth": fusion.depth,
            "lead_margin": fusion.lead_margin,
            "lead_sole_match": fusion.lead_sole_match and fusion.lead_margin is not None,
        },
    )
