"""Read BEIR-layout data sets: corpus.jsonl to Parquet (doc_id, title, text), queries.jsonl and graded qrels."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import DataError

ID_COLUMN = "doc_id"
TEXT_COLUMN = "text"


@dataclass(frozen=True)
class BeirFolder:
    """The files of one BEIR data set."""

    root: Path
    corpus: Path
    queries: Path
    qrels: Path

    @classmethod
    def of(cls, root: Path | str, split: str = "test") -> BeirFolder:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"BEIR folder {root} does not exist")
        folder = cls(root, root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv")
        for path in (folder.corpus, folder.queries, folder.qrels):
            if not path.is_file():
                raise DataError(f"BEIR folder {root} has no {path.relative_to(root)}")
        return folder


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or "_id" not in obj:
                    raise DataError(f"{path}:{number}: expected an object with an _id")
                yield number, obj
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def iter_corpus(path: Path | str) -> Iterator[tuple[str, str, str]]:
    """(doc_id, title, text) per document, text being title and body joined by a space, stripped."""
    for _, obj in _json_lines(Path(path)):
        title = str(obj.get("title") or "")
        body = str(obj.get("text") or "")
        yield str(obj["_id"]), title, (title + " " + body).strip()


def write_corpus_parquet(corpus: Path | str, out: Path | str, batch_rows: int = 50_000) -> int:
    """Convert corpus.jsonl to a Parquet file (doc_id, title, text) in batches; returns the row count.

    Written to a temp sibling and renamed, so an interrupted run never leaves a half file behind.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    schema = pa.schema([(ID_COLUMN, pa.string()), ("title", pa.string()), (TEXT_COLUMN, pa.string())])
    rows = 0
    seen: set[str] = set()
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            batch: list[tuple[str, str, str]] = []
            for row in iter_corpus(corpus):
                if row[0] in seen:
                    raise DataError(f"{corpus}: duplicate _id {row[0]!r}")
                seen.add(row[0])
                batch.append(row)
                if len(batch) >= batch_rows:
                    writer.write_table(
                        pa.Table.from_arrays([pa.array(c) for c in zip(*batch, strict=True)], schema=schema)
                    )
                    rows += len(batch)
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_arrays([pa.array(c) for c in zip(*batch, strict=True)], schema=schema))
                rows += len(batch)
        if rows == 0:
            raise DataError(f"{corpus} holds no documents")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def load_queries(path: Path | str) -> dict[str, str]:
    """Query id -> text, in file order."""
    queries: dict[str, str] = {}
    for number, obj in _json_lines(Path(path)):
        qid = str(obj["_id"])
        if qid in queries:
            raise DataError(f"{path}:{number}: duplicate query id {qid!r}")
        queries[qid] = str(obj.get("text") or "")
    return queries


def load_qrels(path: Path | str) -> dict[str, dict[str, int]]:
    """Query id -> {doc id: graded relevance} from a BEIR qrels TSV (header optional) or a TREC qrels file."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) == 4:  # TREC: qid iteration docid relevance
            fields = [fields[0], fields[2], fields[3]]
        if len(fields) != 3:
            raise DataError(f"{path}:{number}: expected query-id, corpus-id and score, got {len(fields)} fields")
        qid, did, grade = (f.strip() for f in fields)
        try:
            value = int(float(grade))
        except ValueError:
            if number == 1:
                continue  # the header
            raise DataError(f"{path}:{number}: relevance {grade!r} is not a number") from None
        judged = qrels.setdefault(qid, {})
        if judged.get(did, value) != value:
            raise DataError(
                f"{path}:{number}: query {qid!r} and document {did!r} are judged twice, {judged[did]} and {value}"
            )
        judged[did] = value
    if not qrels:
        raise DataError(f"{path} holds no judgements")
    return qrels


@dataclass
class QrelsCheck:
    """Judgements that name ids absent from the corpus or the query set: counted, never dropped silently."""

    judgements: int = 0
    unknown_docs: int = 0
    unknown_queries: int = 0
    examples: tuple[str, ...] = ()

    def message(self) -> str | None:
        if not (self.unknown_docs or self.unknown_queries):
            return None
        return (
            f"{self.unknown_docs} of {self.judgements} judgements name documents not in the corpus and "
            f"{self.unknown_queries} name queries not in the query file (e.g. {', '.join(self.examples)})"
        )


def check_qrels(qrels: dict[str, dict[str, int]], doc_ids: set[str], query_ids: set[str]) -> QrelsCheck:
    check = QrelsCheck()
    examples: list[str] = []
    for qid, judged in qrels.items():
        check.judgements += len(judged)
        if qid not in query_ids:
            check.unknown_queries += len(judged)
            if len(examples) < 3:
                examples.append(f"query {qid}")
        for did in judged:
            if did not in doc_ids:
                check.unknown_docs += 1
                if len(examples) < 3:
                    examples.append(f"doc {did}")
    check.examples = tuple(examples)
    return check
