"""The work area of a run in progress: an append-only, fsynced journal that makes runs resumable."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from pipeline.fsutil import fsync_dir, fsync_path, remove_tree


class Journal:
    """JSON lines, one event each, appended and fsynced; a torn last line (crash mid-write) is cut off on load."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.events: list[dict[str, Any]] = []
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                event = json.loads(line)
            except ValueError:
                break
            if not isinstance(event, dict):
                break
            self.events.append(event)
            end += len(line)
        if end < len(data):
            # Cut the torn tail, or the next append would be glued onto it and lost on the next load.
            with self.path.open("r+b") as fh:
                fh.truncate(end)
            fsync_path(self.path)

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

    @property
    def run_id(self) -> str:
        """The id of the run that owns this work folder (recorded by `open_work`, kept on resume)."""
        event = self.find("run")
        if event is None:
            raise RuntimeError(f"{self.path} records no run id")
        return str(event["id"])


def open_work(work_root: Path, fingerprint: str) -> tuple[Path, Journal]:
    """The work folder for this run's fingerprint; folders of other (abandoned) runs are removed.

    A new folder's journal starts with a fresh random run id; shard files are named after it, so no run
    ever rewrites a shard that another run (and a generation it committed) wrote.
    """
    work_root.mkdir(parents=True, exist_ok=True)
    for other in work_root.iterdir():
        if other.name != fingerprint:
            remove_tree(other)
    work = work_root / fingerprint
    work.mkdir(exist_ok=True)
    journal = Journal(work / "journal.jsonl")
    if journal.find("run") is None:
        journal.append({"event": "run", "id": secrets.token_hex(8)})
    return work, journal
