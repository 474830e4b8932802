"""Synthetic lexical-heavy query sets in BEIR layout: a word unique to one document, with its common words or a real query."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.beir import BeirFolder, iter_corpus, load_qrels, load_queries
from pipeline.errors import DataError, OutputExistsError, UsageError
from pipeline.fsutil import remove_tree
from pipeline.lexical import TOKEN_RE, term_function

SPEC_FILE = "lexical_set.json"


@dataclass(frozen=True)
class LexicalSetSpec:
    """How queries are drawn: `fillers` words with document frequency in `filler_df` join one unique word.

    With `with_queries`, the unique word of one relevant document is added to each of the source's judged
    queries instead, and the source's judgements are kept (no fillers).
    """

    queries: int = 100
    seed: int = 0
    fillers: int = 2
    min_length: int = 6
    filler_df: tuple[int, int] = (5, 200)
    with_queries: bool = False

    def __post_init__(self) -> None:
        if self.queries < 1:
            raise UsageError("a lexical set needs at least one query")
        if self.fillers < 0 or self.min_length < 1:
            raise UsageError("filler count must be >= 0 and the unique word's minimum length >= 1")
        if not 1 <= self.filler_df[0] <= self.filler_df[1]:
            raise UsageError(f"bad filler document-frequency range {self.filler_df}")


@dataclass(frozen=True)
class Candidate:
    """A document that can answer a query: its id, its unique words and its filler words, both sorted."""

    doc_id: str
    unique: tuple[str, ...]
    fillers: tuple[str, ...]


@dataclass
class LexicalSet:
    """What was written: the folder, the query count and how many documents could have been drawn."""

    out: Path
    queries: int
    candidates: int
    docs: int


def words(text: str) -> set[str]:
    """The distinct words of a text as BM25 splits it (lowercase runs of 2+ word characters), minus underscored ones."""
    return {w for w in TOKEN_RE.findall(text.lower()) if w.isalnum()}


def _is_code(word: str) -> bool:
    """A name or code, not a number; ASCII, which keeps out mis-decoded text such as 'informalâ'."""
    return word.isascii() and not word.isdigit()


def candidates(docs: Iterable[tuple[str, str]], spec: LexicalSetSpec) -> tuple[list[Candidate], int]:
    """Documents (sorted by id) with a word whose BM25 term no other document has, and enough filler words.

    Document frequencies count BM25 terms (stopwords dropped, stemmed as a default lexical index does), so a
    unique word is unique to BM25 too; fillers have distinct terms. Also returns the number of documents.
    """
    term = term_function()
    doc_terms = []
    for doc_id, text in sorted(docs):
        pairs = ((w, term(w)) for w in sorted(words(text)))
        doc_terms.append((doc_id, {w: t for w, t in pairs if t is not None}))
    df = Counter(t for _, terms in doc_terms for t in set(terms.values()))
    low, high = spec.filler_df
    found = []
    for doc_id, terms in doc_terms:
        unique = tuple(w for w, t in terms.items() if df[t] == 1 and len(w) >= spec.min_length and _is_code(w))
        by_term: dict[str, str] = {}
        for w, t in terms.items():
            if low <= df[t] <= high and w.isalpha():
                by_term.setdefault(t, w)  # words are sorted: the first spelling of each term
        if unique and len(by_term) >= spec.fillers:
            found.append(Candidate(doc_id, unique, tuple(sorted(by_term.values()))))
    return found, len(doc_terms)


Drawn = list[tuple[str, str, dict[str, int]]]  # (query id, text, judgements)


def draw_queries(found: list[Candidate], spec: LexicalSetSpec) -> Drawn:
    """`spec.queries` documents drawn with the seed, each its query's only relevant one; words shuffled."""
    if len(found) < spec.queries:
        raise DataError(f"only {len(found)} documents have a unique word and {spec.fillers} filler words")
    rng = random.Random(spec.seed)
    out = []
    for i, cand in enumerate(rng.sample(found, spec.queries)):
        chosen = [rng.choice(cand.unique), *rng.sample(cand.fillers, spec.fillers)]
        rng.shuffle(chosen)
        out.append((f"lex{spec.seed}-{i:04d}", " ".join(chosen), {cand.doc_id: 1}))
    return out


def extend_queries(found: list[Candidate], folder: BeirFolder, spec: LexicalSetSpec) -> Drawn:
    """The source's judged queries (in id order, at most `spec.queries` drawn) each followed by the unique word
    of one of its relevant documents; judgements as in the source."""
    by_doc = {cand.doc_id: cand for cand in found}
    queries, qrels = load_queries(folder.queries), load_qrels(folder.qrels)
    rng = random.Random(spec.seed)
    out = []
    for qid in sorted(q for q in qrels if queries.get(q, "").strip()):
        relevant = sorted(d for d, grade in qrels[qid].items() if grade > 0 and d in by_doc)
        if relevant:
            word = rng.choice(by_doc[rng.choice(relevant)].unique)
            out.append((qid, f"{queries[qid].strip()} {word}", qrels[qid]))
    if not out:
        raise DataError(f"no judged query of {folder.root} has a relevant document with a unique word")
    return sorted(rng.sample(out, spec.queries)) if len(out) > spec.queries else out


def make_lexical_set(
    beir_dir: Path | str, out: Path | str, spec: LexicalSetSpec | None = None, overwrite: bool = False
) -> LexicalSet:
    """Write a BEIR folder at `out`: queries.jsonl, qrels/test.tsv, corpus.jsonl linked to the source's, the spec.

    Deterministic for a corpus and a spec, whatever the corpus file's order.
    """
    spec = spec or LexicalSetSpec()
    folder = BeirFolder.of(beir_dir)
    out = Path(out)
    _check_out(folder, out, overwrite)
    found, n_docs = candidates(((doc_id, text) for doc_id, _, text in iter_corpus(folder.corpus)), spec)
    drawn = extend_queries(found, folder, spec) if spec.with_queries else draw_queries(found, spec)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    remove_tree(tmp)
    try:
        _write_folder(tmp, folder, drawn, spec)
        remove_tree(out)
        tmp.rename(out)
    finally:
        remove_tree(tmp)
    return LexicalSet(out, len(drawn), len(found), n_docs)


def _check_out(folder: BeirFolder, out: Path, overwrite: bool) -> None:
    out_path, source = out.resolve(), folder.root.resolve()
    if out_path == source or out_path in source.parents or source in out_path.parents:
        # --overwrite replaces the folder: it must neither hold nor sit inside the source
        raise UsageError("the lexical set's folder must not be, hold or sit inside the source BEIR folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} is not empty; give --overwrite to replace it")


def _write_folder(root: Path, folder: BeirFolder, drawn: Drawn, spec: LexicalSetSpec) -> None:
    (root / "qrels").mkdir(parents=True)
    with (root / "queries.jsonl").open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n" for qid, text, _ in drawn)
    with (root / "qrels" / "test.tsv").open("w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        fh.writelines(
            f"{qid}\t{doc_id}\t{grade}\n" for qid, _, judged in drawn for doc_id, grade in sorted(judged.items())
        )
    try:
        (root / "corpus.jsonl").symlink_to(folder.corpus.resolve())
    except OSError:  # no symlinks on this file system
        shutil.copyfile(folder.corpus, root / "corpus.jsonl")
    meta = {"source": str(folder.root.resolve()), **asdict(spec)}
    (root / SPEC_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
