"""Readers for sentence-pair data: STS benchmark, SNLI folders, SICK, and Parquet/CSV/TSV tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import DataError, UsageError

FORMATS = ("auto", "sts", "snli", "sick", "table")
NLI_LABELS = ("entailment", "neutral", "contradiction")
_LABEL_IDS = {name: i for i, name in enumerate(NLI_LABELS)} | {str(i): i for i in range(3)}
_SICK_SPLITS = {"train": "TRAIN", "dev": "TRIAL", "trial": "TRIAL", "test": "TEST"}
_TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv", ".txt")


@dataclass(frozen=True)
class Columns:
    """Column names in a table input; None picks the first common name present (premise, sentence1, ...)."""

    premise: str | None = None
    hypothesis: str | None = None
    label: str | None = None
    score: str | None = None


@dataclass
class PairData:
    """Sentence pairs with NLI labels (0 entailment, 1 neutral, 2 contradiction) and/or gold scores."""

    sentence1: list[str]
    sentence2: list[str]
    labels: list[int] | None = None
    scores: list[float] | None = None  # as given in the source (STS 0-5, SICK 1-5, tables as is)
    score_range: tuple[float, float] | None = None  # the scale scores live on, to map them to 0-1
    source: str = ""
    format: str = ""
    split: str | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sentence1)

    def unit_scores(self) -> list[float]:
        """Scores mapped linearly to 0-1 from the source's scale."""
        if self.scores is None:
            raise DataError(f"{self.source} has no similarity scores")
        low, high = self.score_range or (min(self.scores), max(self.scores))
        span = (high - low) or 1.0
        return [min(max((s - low) / span, 0.0), 1.0) for s in self.scores]


def load_pairs(
    path: str | Path,
    format: str = "auto",
    split: str | None = None,
    columns: Columns | None = None,
    default_splits: Mapping[str, str] | None = None,
) -> PairData:
    """Read sentence pairs from an STS csv, an SNLI folder, SICK.txt or a Parquet/CSV/TSV table.

    Without `split`, a layout named in `default_splits` reads that split; otherwise SNLI its dev split and
    SICK its train split.
    """
    path = Path(path)
    if format not in FORMATS:
        raise UsageError(f"unknown data format {format!r}: use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    fmt = detect_format(path) if format == "auto" else format
    split = split or (default_splits or {}).get(fmt)
    if fmt == "sts":
        return read_sts(path)
    if fmt == "snli":
        return read_snli(path, split or "dev")
    if fmt == "sick":
        return read_sick(path, split or "train")
    return read_table(path, columns or Columns())


def detect_format(path: Path) -> str:
    """Guess the layout from the path and its first line."""
    if path.is_dir():
        if any(path.glob("s1.*")):
            return "snli"
        if (path / "SICK.txt").exists():
            return "sick"
        raise DataError(f"{path} is a directory but holds no SNLI files (s1.*, s2.*, labels.*) or SICK.txt")
    if path.suffix.lower() in (".parquet", ".pq"):
        return "table"
    first = _first_line(path)
    fields = first.split("\t")
    if "sentence_A" in fields and "relatedness_score" in fields:
        return "sick"
    if len(fields) >= 7 and _is_float(fields[4]):
        return "sts"
    if path.suffix.lower() in _TABLE_SUFFIXES:
        return "table"
    raise DataError(f"cannot tell the layout of {path}; pass --format sts|snli|sick|table")


def read_sts(path: Path) -> PairData:
    """STS benchmark: tab-separated, no header, no quoting: genre, file, year, id, score, s1, s2[, ...]."""
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass one STS file such as sts-test.csv")
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 7:
                raise DataError(f"{path}:{lineno}: STS rows need 7 tab-separated fields, found {len(fields)}")
            if not _is_float(fields[4]) or not math.isfinite(float(fields[4])):
                raise DataError(f"{path}:{lineno}: score {fields[4]!r} is not a number")
            scores.append(float(fields[4]))
            s1.append(fields[5])
            s2.append(fields[6])
    if not s1:
        raise DataError(f"{path} holds no sentence pairs")
    return PairData(s1, s2, scores=scores, score_range=(0.0, 5.0), source=str(path), format="sts")


def read_snli(path: Path, split: str = "dev") -> PairData:
    """SNLI folder layout: s1.SPLIT premises, s2.SPLIT hypotheses, labels.SPLIT, line-aligned."""
    folder = path if path.is_dir() else path.parent
    files = [folder / f"{stem}.{split}" for stem in ("s1", "s2", "labels")]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        have = sorted({p.suffix.lstrip(".") for p in folder.glob("s1.*")})
        raise DataError(f"SNLI split {split!r}: no {', '.join(missing)} in {folder}; splits there: {have}")
    s1, s2, raw = ([ln.strip() for ln in f.read_text(encoding="utf-8").splitlines()] for f in files)
    if not len(s1) == len(s2) == len(raw):
        sizes = f"{len(s1)}, {len(s2)}, {len(raw)}"
        raise DataError(f"SNLI files in {folder} are not line-aligned: {sizes} lines")
    labels = parse_labels(raw, str(folder))
    return PairData(s1, s2, labels=labels, source=str(folder), format="snli", split=split)


def read_sick(path: Path, split: str = "train") -> PairData:
    """SICK.txt: tab-separated with header; entailment_label, relatedness_score (1-5), SemEval_set."""
    file = path / "SICK.txt" if path.is_dir() else path
    wanted = _SICK_SPLITS.get(split.lower())
    if wanted is None and split.lower() != "all":
        raise UsageError(f"unknown SICK split {split!r}: use train, trial (dev), test or all")
    with file.open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        need = ["sentence_A", "sentence_B", "entailment_label", "relatedness_score", "SemEval_set"]
        absent = [c for c in need if c not in header]
        if absent:
            raise DataError(f"{file} lacks column(s) {', '.join(absent)}; columns: {', '.join(header)}")
        idx = {c: header.index(c) for c in need}
        rows = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    short = next((n for n, r in enumerate(rows, start=2) if len(r) < len(header)), None)
    if short is not None:
        raise DataError(f"{file} line {short} has fewer than the header's {len(header)} tab-separated fields")
    rows = [r for r in rows if wanted is None or r[idx["SemEval_set"]].upper() == wanted]
    if not rows:
        raise DataError(f"{file} has no rows in split {split!r}")
    labels = parse_labels([r[idx["entailment_label"]] for r in rows], str(file))
    try:
        scores = [float(r[idx["relatedness_score"]]) for r in rows]
    except ValueError as exc:
        raise DataError(f"{file} has a relatedness_score that is not a number ({exc})") from None
    _check_finite(scores, f"{file}: relatedness_score")
    return PairData(
        [r[idx["sentence_A"]] for r in rows],
        [r[idx["sentence_B"]] for r in rows],
        labels=labels,
        scores=scores,
        score_range=(1.0, 5.0),
        source=str(file),
        format="sick",
        split=split,
    )


def read_table(path: Path, columns: Columns) -> PairData:
    """Parquet, CSV or TSV with a header; pairs from premise/hypothesis (or sentence1/sentence2) columns."""
    table = _read_arrow(path)
    names = list(table.column_names)
    first = _column(names, columns.premise, ["premise", "sentence1", "anchor"])
    second = _column(names, columns.hypothesis, ["hypothesis", "sentence2", "positive"])
    label_col = _column(names, columns.label, ["label"])
    score_col = _column(names, columns.score, ["score", "similarity"])
    missing = [
        f"{role} column {want!r}" if want else f"a {role} column ({' or '.join(alts)})"
        for role, want, got, alts in (
            ("premise", columns.premise, first, ["premise", "sentence1"]),
            ("hypothesis", columns.hypothesis, second, ["hypothesis", "sentence2"]),
            ("label", columns.label, label_col if columns.label else "", []),
            ("score", columns.score, score_col if columns.score else "", []),
        )
        if got is None
    ]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; columns there: {', '.join(names)}")
    s1 = [_text(v) for v in table.column(first).to_pylist()]
    s2 = [_text(v) for v in table.column(second).to_pylist()]
    if not s1:
        raise DataError(f"{path} holds no rows")
    if label_col is None and score_col is None:
        raise DataError(
            f"{path} has neither a label column (label) nor a score column (score); columns there: {', '.join(names)}"
        )
    labels = parse_labels(table.column(label_col).to_pylist(), str(path)) if label_col else None
    scores = None
    if score_col:
        try:
            scores = [float(v) for v in table.column(score_col).to_pylist()]
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: column {score_col!r} holds non-numeric scores ({exc})") from exc
        _check_finite(scores, f"{path}: column {score_col!r}")
    # Scores already on 0-1 are used as they are; any other scale is mapped min-max over the data.
    unit = scores is not None and all(0.0 <= s <= 1.0 for s in scores)
    return PairData(
        s1, s2, labels=labels, scores=scores, score_range=(0.0, 1.0) if unit else None, source=str(path), format="table"
    )


def parse_labels(values: Sequence[Any], where: str) -> list[int]:
    """Map entailment/neutral/contradiction (any case) or 0/1/2 to ids; name unknown values."""
    out: list[int] = []
    unknown: dict[str, int] = {}
    for v in values:
        key = str(v).strip().lower() if v is not None else "<null>"
        if key.endswith(".0") and key[:-2].isdigit():
            key = key[:-2]
        label = _LABEL_IDS.get(key)
        if label is None:
            unknown[key] = unknown.get(key, 0) + 1
        else:
            out.append(label)
    if unknown:
        shown = ", ".join(f"{k!r} ({n}x)" for k, n in sorted(unknown.items(), key=lambda kv: -kv[1])[:5])
        raise DataError(f"{where}: unknown label value(s) {shown}; expected entailment/neutral/contradiction or 0/1/2")
    return out


def _read_arrow(path: Path) -> Any:
    import pyarrow as pa

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow.csv as pacsv

        delimiter = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc


def _check_finite(scores: list[float], where: str) -> None:
    # NaN would pass every range check and turn a correlation or a training loss into NaN
    bad = sum(1 for s in scores if not math.isfinite(s))
    if bad:
        raise DataError(f"{where} holds {bad} score(s) that are NaN or infinite")


def _column(names: list[str], wanted: str | None, defaults: list[str]) -> str | None:
    """The named column if asked for (None when absent), else the first default present."""
    if wanted:
        return wanted if wanted in names else None
    return next((c for c in defaults if c in names), None)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _first_line(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace") as fh:
        return fh.readline().rstrip("\n")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
