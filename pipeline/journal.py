"""The work area of a run in progress: an append-only, fsynced journal that makes runs resumable."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.fsutil import fsync_dir, remove_tree


class Journal:
    """JSON lines, one event each, appended and fsynced; a torn last line (crash mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.events: list[dict[str, Any]] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    break

    def append(self, event: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with self.path.open("a") as fh:
            fh.write(json.dumps(event, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fsync_dir(self.path.parent)
        self.events.append(event)

    def find(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("event") == kind), None)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]


def open_work(work_root: Path, fingerprint: str) -> tuple[Path, Journal]:
    """The work folder for this run's fingerprint; folders of other (abandoned) runs are removed."""
    work_root.mkdir(parents=True, exist_ok=True)
    for other in work_root.iterdir():
        if other.name != fingerprint:
            remove_tree(other)
    work = work_root / fingerprint
    work.mkdir(exist_ok=True)
    return work, Journal(work / "journal.jsonl")
