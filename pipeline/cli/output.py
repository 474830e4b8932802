"""What the CLI shows: error-to-exit-code mapping, progress bars on stderr, results as table/json/csv."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import click

from pipeline.errors import BmsearchError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("bmsearch")


def setup_logging(debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not debug:
        import warnings

        warnings.filterwarnings("ignore")
        for noisy in ("sentence_transformers", "transformers", "huggingface_hub", "faiss", "httpx"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        # set through the environment so that transformers is not imported just to silence it
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        transformers = sys.modules.get("transformers")
        if transformers is not None:  # already imported (library use, tests): the variables came too late
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()


def handle_errors(func: F) -> F:
    """Turn library errors into one-line messages and exit codes; tracebacks only with --debug."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool((click.get_current_context().find_root().obj or {}).get("debug"))
        try:
            result = func(*args, **kwargs)
            sys.stdout.flush()  # a reader that went away shows here, not in Python's flush at exit
            return result
        except BrokenPipeError:
            _stdout_to_devnull()
            sys.exit(EXIT_BROKEN_PIPE)
        except BmsearchError as exc:
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if debug:
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(f"Error: unexpected {type(exc).__name__}: {first} (rerun with --debug for details)", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


# The reader of stdout closed it (`bmsearch query ... | head -1`): stop quietly with the code a process killed
# by SIGPIPE gets in the shell (128 + 13), as `grep`, `cat` and other Unix tools do, so `set -o pipefail`
# scripts see the same status as with them; no message, since the reader asked for no more.
EXIT_BROKEN_PIPE = 141


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail again on the closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture stdout in memory)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class CliProgress:
    """tqdm bars on a terminal; plain periodic lines when stderr is not a terminal; nothing when quiet."""

    def __init__(self, enabled: bool = True, interval_s: float = 10.0) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.interval_s = interval_s
        self._bar: Any = None
        self._name = ""
        self._done = 0
        self._total: int | None = None
        self._started = 0.0
        self._last = 0.0

    def stage(self, name: str, total: int | None = None, unit: str = "rows") -> None:
        self.close()
        self._name, self._total, self._done = name, total, 0
        self._started = self._last = time.monotonic()
        if not self.enabled:
            return
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True)
        else:
            click.echo(f"{name}: started" + (f" ({total} {unit})" if total else ""), err=True)

    def advance(self, n: int) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and not self.tty and time.monotonic() - self._last >= self.interval_s:
            self._last = time.monotonic()
            rate = self._done / max(self._last - self._started, 1e-9)
            of = f"/{self._total}" if self._total else ""
            shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"
            click.echo(f"{self._name}: {self._done}{of} ({shown}/s)", err=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, default=str, ensure_ascii=False))


def format_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], max_width: int = 60, uncut: Collection[str] = ()
) -> str:
    """A plain aligned text table; long cells are cut with an ellipsis, except in the `uncut` columns."""

    def cell(value: Any, column: str) -> str:
        text = "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        text = " ".join(text.split())
        return text if len(text) <= max_width or column in uncut else text[: max_width - 1] + "…"

    cells = [[cell(r.get(c), c) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)
