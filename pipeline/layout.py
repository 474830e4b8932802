"""Where an index lives on disk: generations, the CURRENT pointer, shards, the work area and clean-up."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import IndexCorruptError, IndexNotFoundError, UsageError
from pipeline.fsutil import atomic_write_bytes, fsync_dir, fsync_tree, remove_tree

DEFAULT_INDEX_DIR = Path(os.environ.get("BMSEARCH_INDEX_DIR", "indexes"))
GEN_RE = re.compile(r"^gen-(\d{6})$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class IndexPaths:
    """The paths of one named index below an index directory."""

    root: Path

    @classmethod
    def of(cls, index_dir: Path | str, name: str) -> IndexPaths:
        if not NAME_RE.match(name):
            raise UsageError(f"invalid index name {name!r}: use letters, digits, '.', '_' and '-'")
        return cls(Path(index_dir) / name)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def current_file(self) -> Path:
        return self.root / "CURRENT"

    @property
    def lock_file(self) -> Path:
        return self.root / "LOCK"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def generation(self, number: int) -> Path:
        return self.root / f"gen-{number:06d}"

    def generations(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (GEN_RE.match(p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def current(self) -> int | None:
        """The live generation's number, or None for an index never committed."""
        try:
            text = self.current_file.read_text().strip()
        except FileNotFoundError:
            return None
        match = GEN_RE.match(text)
        if not match or not (self.root / text).is_dir():
            raise IndexCorruptError(f"{self.current_file} points to {text!r}, which is not a complete generation")
        return int(match.group(1))

    def require_current(self) -> Path:
        if not self.root.is_dir():
            raise IndexNotFoundError(f"no index named {self.name!r} in {self.root.parent}")
        number = self.current()
        if number is None:
            raise IndexNotFoundError(
                f"index {self.name!r} has no complete generation yet (was its first build interrupted?)"
            )
        return self.generation(number)

    def staging(self, number: int) -> Path:
        return self.root / f".gen-{number:06d}.tmp"

    def next_number(self) -> int:
        staged = [int(m.group(1)) for p in self.root.glob(".gen-*.tmp") if (m := re.search(r"(\d{6})", p.name))]
        return max([0, *self.generations(), *staged]) + 1

    def commit(self, staged: Path, number: int) -> Path:
        """Make a fully written staging folder the live generation: fsync, rename, then switch CURRENT."""
        final = self.generation(number)
        fsync_tree(staged)
        staged.rename(final)
        fsync_dir(self.root)
        atomic_write_bytes(self.current_file, f"{final.name}\n".encode())
        return final

    def prune(self, previous: int | None) -> list[Path]:
        """Remove every generation but the live one and `previous`, and staging folders left by crashed runs.

        `previous` is the generation that was live before the last commit: a reader may still hold it. A
        generation that was renamed into place but never made live (a crash before the CURRENT switch) is
        removed even when its number is higher than `previous`.
        """
        removed: list[Path] = []
        keep = {self.current(), previous}
        for number in self.generations():
            if number not in keep:
                remove_tree(self.generation(number))
                removed.append(self.generation(number))
        for staged in self.root.glob(".gen-*.tmp"):
            remove_tree(staged)
            removed.append(staged)
        return removed


def list_indexes(index_dir: Path | str) -> list[IndexPaths]:
    """The committed indexes (those with CURRENT)."""
    return _folders_with(index_dir, ("CURRENT",))


def index_folders(index_dir: Path | str) -> list[IndexPaths]:
    """Every index folder, committed or not: those with CURRENT, and those a first build has started (LOCK,
    work/) but not committed yet, being built now or interrupted."""
    return _folders_with(index_dir, ("CURRENT", "LOCK", "work"))


def _folders_with(index_dir: Path | str, marks: Sequence[str]) -> list[IndexPaths]:
    base = Path(index_dir)
    if not base.is_dir():
        return []
    return [IndexPaths(p) for p in sorted(base.iterdir()) if p.is_dir() and any((p / m).exists() for m in marks)]


def serving_paths(index_dir: Path | str, names: Sequence[str] | None) -> list[IndexPaths]:
    """The named indexes, or every committed one in index_dir when none is named (at least one)."""
    if names:
        return [IndexPaths.of(index_dir, name) for name in names]
    found = list_indexes(index_dir)
    if not found:
        raise IndexNotFoundError(f"no index in {index_dir}; build one with `bmsearch index`")
    return found


def resolve_name(index_dir: Path | str, name: str | None) -> IndexPaths:
    """The named index, or the only one present when no name is given."""
    if name:
        return IndexPaths.of(index_dir, name)
    found = list_indexes(index_dir)
    if len(found) == 1:
        return found[0]
    if not found:
        raise IndexNotFoundError(f"no index in {index_dir}; build one with `bmsearch index`")
    names = ", ".join(p.name for p in found)
    raise UsageError(f"several indexes in {index_dir} ({names}); choose one with --index")
