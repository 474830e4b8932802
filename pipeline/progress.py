"""The progress protocol the library reports through; the CLI renders it, library code never prints."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives stage starts and advances from long-running library calls."""

    def stage(self, name: str, total: int | None = None, unit: str = "rows") -> None: ...

    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    """A Progress that ignores everything."""

    def stage(self, name: str, total: int | None = None, unit: str = "rows") -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass
