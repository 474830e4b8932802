"""Offline study of hybrid fusion rules: dense and BM25 top-100 per query fetched once, rules replayed on them.

Usage: python benchmarks/fusion_study.py INDEX_DIR OUT_DIR LABEL=BEIR_DIR@INDEX [...]
A label starting with '*' marks a held-out set (not used to choose). The lists come from the product's search
path (pipeline.retrieval_eval.search_modes) and are cached in OUT_DIR; nDCG@10 is the evaluation's own
(score_run). Prints one row per rule: nDCG@10 per set, then the worst (hybrid - better single mode) over the
tuning sets and over the held-out ones; writes OUT_DIR/study.json. See docs/quality.md, "Retrieval".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.beir import load_qrels, load_queries
from pipeline.fusion import FusionConfig, fuse, fuse_modes, put_first
from pipeline.layout import IndexPaths
from pipeline.retrieval_eval import _id_map, score_run, search_modes
from pipeline.search import Searcher

Lists = dict[str, tuple[np.ndarray, np.ndarray]]
Rule = Callable[[Lists, np.ndarray], np.ndarray]  # (lists, sole full matches) -> fused keys (n, 10)


def fetch(index_dir: Path, out: Path, label: str, beir: Path, index: str) -> tuple[Lists, list[str], dict]:
    """Dense and lexical top-100 of the set's judged queries, cached as .npz, with each key's doc id, and each
    query's sole full match (`LexicalIndex.sole_matches`), cached beside them."""
    queries, qrels = load_queries(beir / "queries.jsonl"), load_qrels(beir / "qrels" / "test.tsv")
    qids = [q for q, j in qrels.items() if any(g > 0 for g in j.values()) and queries.get(q, "").strip()]
    cache = out / f"{label.lstrip('*')}.npz"
    if not cache.exists():
        searcher = Searcher(IndexPaths.of(index_dir, index))
        try:
            found = search_modes(searcher, [queries[q] for q in qids], 100, ["dense", "lexical"])
            ids = _id_map(searcher, np.concatenate([found["dense"][1], found["lexical"][1]]))
        finally:
            searcher.close()
        (ds, dk), (ls, lk) = found["dense"], found["lexical"]
        keys = np.array(sorted(ids), np.int64)
        np.savez(cache, ds=ds, dk=dk, ls=ls, lk=lk, keys=keys, ids=np.array([ids[int(k)] for k in keys]))
    sole_cache = out / f"{label.lstrip('*')}.sole.npy"
    if not sole_cache.exists():
        searcher = Searcher(IndexPaths.of(index_dir, index))
        try:
            np.save(sole_cache, searcher.generation.lexical.sole_matches([queries[q] for q in qids]))
        finally:
            searcher.close()
    z = np.load(cache)
    ids = dict(zip(z["keys"].tolist(), z["ids"].tolist(), strict=True))
    lists = {"dense": (z["ds"], z["dk"]), "lexical": (z["ls"], z["lk"])}
    texts = [queries[q] for q in qids]
    return lists, qids, {"ids": ids, "qrels": qrels, "sole": np.load(sole_cache), "texts": texts}


def ndcg(keys: np.ndarray, qids: list[str], ctx: dict) -> float:
    run = {q: [ctx["ids"][int(x)] for x in row[:10] if x >= 0] for q, row in zip(qids, keys, strict=True)}
    return 100 * score_run(run, ctx["qrels"])["ndcg_at_10"]


def margins(lexical: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per query, BM25's (s1 - s2) / s1 and (s1 - s2) / std of its list (inf for a one-hit list)."""
    scores, keys = lexical
    rel, gap = np.zeros(len(keys)), np.zeros(len(keys))
    for i in range(len(keys)):
        s = scores[i][keys[i] >= 0].astype(np.float64)
        if len(s):
            second = s[1] if len(s) > 1 else 0.0
            rel[i] = (s[0] - second) / s[0]
            gap[i] = (s[0] - second) / s.std() if s.std() > 0 else np.inf
    return rel, gap


def per_query_weights(lists: Lists, weights: np.ndarray) -> np.ndarray:
    """z-score fusion, dense 1.0 and each query's own lexical weight."""
    rows = [
        fuse([(s[i : i + 1], k[i : i + 1]) for s, k in lists.values()], 10, "zscore", [1.0, float(w)])[1][0]
        for i, w in enumerate(weights)
    ]
    return np.array(rows).reshape(len(weights), 10)


def group_lead(margin: float, most: int, slot: int | None = None) -> Rule:
    """BM25's top m <= `most` hits lead (in fused order) when the m-th scores `margin` x s1 above the next; with
    `slot`, BM25's top hit is then moved up to rank `slot` when it sits lower or outside the list."""

    def rule(lists: Lists, sole: np.ndarray) -> np.ndarray:
        _, fused = fuse_modes(lists, 100, FusionConfig(lead_margin=None))
        scores, keys = lists["lexical"]
        out = []
        for i in range(len(keys)):
            s, k = scores[i][keys[i] >= 0].astype(np.float64), keys[i][keys[i] >= 0]
            row = [int(x) for x in fused[i] if x >= 0]
            lead: list[int] = []
            for m in range(1, most + 1):
                if len(s) and s[0] > 0 and (s[m - 1] - (s[m] if len(s) > m else 0.0)) / s[0] >= margin:
                    lead = sorted((int(x) for x in k[:m]), key=lambda x: row.index(x) if x in row else len(row))
                    break
            row = lead + [x for x in row if x not in lead]
            if slot is not None and len(k) and int(k[0]) not in row[:slot]:
                row = [x for x in row if x != int(k[0])]
                row.insert(slot - 1, int(k[0]))
            out.append((row + [-1] * 10)[:10])
        return np.array(out, dtype=np.int64)

    return rule


def rules() -> dict[str, Rule]:
    def config(**kw: object) -> Rule:
        return lambda lists, sole: fuse_modes(lists, 10, FusionConfig(**kw), sole)[1]  # type: ignore[arg-type]

    def gap_lead(tau: float) -> Rule:
        def rule(lists: Lists, sole: np.ndarray) -> np.ndarray:
            leads = np.where(margins(lists["lexical"])[1] >= tau, lists["lexical"][1][:, 0], -1)
            return put_first(*fuse_modes(lists, 10, FusionConfig(lead_margin=None)), leads)[1]

        return rule

    def weight(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Rule:
        return lambda lists, sole: per_query_weights(lists, fn(*margins(lists["lexical"])))

    def sole_only(lists: Lists, sole: np.ndarray) -> np.ndarray:
        leads = np.where(sole == lists["lexical"][1][:, 0], sole, -1)
        return put_first(*fuse_modes(lists, 10, FusionConfig(lead_margin=None)), leads)[1]

    out: dict[str, Rule] = {
        "dense": lambda lists, sole: lists["dense"][1][:, :10],
        "BM25": lambda lists, sole: lists["lexical"][1][:, :10],
    }
    for method, w in (("rrf", 0.2), ("minmax", 0.2), ("zscore", 0.2), ("zscore", 0.5), ("zscore", 1.0)):
        out[f"{method} lexical {w}"] = config(method=method, weights={"dense": 1.0, "lexical": w}, lead_margin=None)
    out["weight 0.2 -> 10, margin ramp 0.1-0.3"] = weight(lambda r, g: 0.2 + 9.8 * np.clip((r - 0.1) / 0.2, 0, 1))
    out["weight 10 if margin >= 0.2, else 0.2"] = weight(lambda r, g: np.where(r >= 0.2, 10.0, 0.2))
    out["weight 10 if gap >= 1 sd, else 0.2"] = weight(lambda r, g: np.where(g >= 1.0, 10.0, 0.2))
    out["lead if gap >= 1 sd"] = gap_lead(1.0)
    for tau in (0.05, 0.1, 0.12, 0.15, 0.18, 0.2, 0.25):
        out[f"lead if margin >= {tau}"] = config(lead_margin=tau)
    out["rrf lexical 0.2 + lead 0.15"] = config(method="rrf", lead_margin=0.15)
    for most in (2, 3):
        out[f"top m <= {most} lead if they stand out by 0.15"] = group_lead(0.15, most)
    for slot in (2, 3, 5, 10):
        out[f"lead 0.15, BM25 top hit kept in the first {slot}"] = group_lead(0.15, 1, slot)
    out["top m <= 2 lead at 0.15, BM25 top hit in the first 10"] = group_lead(0.15, 2, 10)
    out["lead if BM25's top hit is the sole full match"] = sole_only
    out["lead if margin >= 0.15 or sole full match (--lead-sole-match)"] = config(lead_sole_match=True)
    return out


def main() -> None:
    index_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    sets = {}
    for arg in sys.argv[3:]:
        label, _, rest = arg.partition("=")
        beir, _, index = rest.rpartition("@")
        sets[label] = fetch(index_dir, out, label, Path(beir), index)
    table = {name: {label: ndcg(rule(lists, ctx["sole"]), qids, ctx) for label, (lists, qids, ctx) in sets.items()}
             for name, rule in rules().items()}  # fmt: skip
    best = {label: max(table["dense"][label], table["BM25"][label]) for label in sets}
    print("rule".ljust(40), *[label.lstrip("*")[:12].rjust(12) for label in sets], "tune".rjust(7), "held".rjust(7))
    for name, row in table.items():
        short = {label: row[label] - best[label] for label in sets}
        tune = min((v for label, v in short.items() if not label.startswith("*")), default=0.0)
        held = min((v for label, v in short.items() if label.startswith("*")), default=0.0)
        print(name.ljust(40), *[f"{row[label]:12.2f}" for label in sets], f"{tune:7.2f}", f"{held:7.2f}")
    (out / "study.json").write_text(json.dumps(table, indent=1) + "\n")
    show_changes(
        sets, rules(), "lead if margin >= 0.15", "lead if margin >= 0.15 or sole full match (--lead-sole-match)"
    )


def show_changes(sets: dict, all_rules: dict[str, Rule], before: str, after: str) -> None:
    """The queries of the natural (non-synthetic) sets whose ranking `after` changes from `before`: the grade of
    its new first hit and the query's nDCG@10 either way."""
    print(f"\nqueries whose ranking changes from '{before}' to '{after}':")
    for label, (lists, qids, ctx) in sets.items():
        old, new = all_rules[before](lists, ctx["sole"]), all_rules[after](lists, ctx["sole"])
        sole, top = ctx["sole"], lists["lexical"][1][:, 0]
        print(f"  {label}: {len(qids)} queries, {int((sole >= 0).sum())} with a sole full match, "
              f"{int(((sole >= 0) & (sole == top)).sum())} of them BM25's top hit")  # fmt: skip
        for i in np.flatnonzero((old != new).any(axis=1)):
            one = {"ids": ctx["ids"], "qrels": {qids[i]: ctx["qrels"][qids[i]]}}
            grade = ctx["qrels"][qids[i]].get(ctx["ids"].get(int(new[i][0])), 0)
            a, b = ndcg(old[i : i + 1], [qids[i]], one), ndcg(new[i : i + 1], [qids[i]], one)
            print(f"  {label}: {ctx['texts'][i]!r}: first hit's grade {grade}, nDCG@10 {a:.1f} -> {b:.1f}")


if __name__ == "__main__":
    main()
